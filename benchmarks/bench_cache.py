"""The decoded-frame cache (``FlirDetection(cache="ram")``) against no cache: images/s and peak PSS.

    python benchmarks/bench_cache.py ROOT [--sizes 500,10000] [--repeats 3] [--workers 2] [--batch-size 32]
        [--no-write]

ROOT is a dataset folder (``flirdata synth DIR --size big`` makes a 10,000-image one); each of
``--sizes`` (default: the whole train split) is a prefix of its train split. Thermal preset,
OpenCV and torch at one thread. Two ways of loading, each with and without the cache:

* single thread: the tight loop of ``flirdata bench`` (``dataset[i]`` + collate, no framework);
  one full pass first (epoch 0, which fills the cache), then a shuffled second pass is timed
  after one warm-up batch;
* the "process" backend at ``--workers`` workers: epoch 0 run through (filling the cache, from
  the workers), then epoch 1 timed after ``workers`` warm-up batches.

Each repeat builds fresh datasets (so a fresh cache) and the cases take turns, so drift of a shared
machine spreads over all of them; the table gives the median rate over repeats, the spread, and
the peak PSS of the whole process tree (main process and workers; shared pages, the cache's
included, split between the processes that map them) read right after each timed window.
The table replaces the generated block of the "Cache" section of ``benchmarks/RESULTS.md``.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from collections import defaultdict
from pathlib import Path
from typing import Any

from flirdata import FlirdataError, FlirDetection, build_transform
from flirdata.cliargs import POSITIVE
from flirdata.loader import make_loader
from flirdata.synth import parse_size
from flirdata.tools.bench.machine import load_average, machine_info, machine_line
from flirdata.tools.bench.memory import MemorySampler
from flirdata.tools.bench.report import add_results_options, markdown_table, publish, text_columns
from flirdata.tools.bench.timing import single_threaded, tight_batches, timed_window

RESULTS = Path(__file__).with_name("RESULTS.md")
HEADING = "## Cache"
CACHES = (None, "ram")  # the baseline first
COLUMNS = text_columns("images", "loading", "cache", "images/s", "min-max", "vs no cache", "peak PSS MB", "PSS gap MB")
EVERYTHING = 10**9  # timed_window stops at the end of the epoch


def _dataset(root: Path, size: int, cache: str | None) -> FlirDetection:
    """The first ``size`` train images; the cache is made for the split, filled only by what is read."""
    return FlirDetection(root, "train", transform=build_transform("thermal"), seed=0, cache=cache).subset(range(size))


def _single(root: Path, size: int, cache: str | None, batch_size: int) -> tuple[float, float]:
    """Images/s of the warmed second pass in this thread, and peak PSS (MB) right after it."""
    dataset = _dataset(root, size, cache)
    with MemorySampler() as sampler:
        for _ in tight_batches(dataset, batch_size, seed=0):  # epoch 0: fills the cache
            pass
        dataset.set_epoch(1)
        with sampler.quiet():
            window = timed_window(tight_batches(dataset, batch_size, seed=1), skip=1, count=EVERYTHING)
        sampler.checkpoint()
    return window.images_per_s, sampler.peak_pss_mb


def _workers(root: Path, size: int, cache: str | None, batch_size: int, workers: int) -> tuple[float, float]:
    """Images/s of the process backend's warmed epoch 1, and peak PSS (MB) of its process tree."""
    dataset = _dataset(root, size, cache)
    with MemorySampler() as sampler:
        with make_loader(dataset, "process", workers, batch_size, shuffle=True, seed=0) as loader:
            for _ in loader:  # epoch 0: the workers fill the cache
                pass
            loader.set_epoch(1)
            with sampler.quiet():
                window = timed_window(loader, skip=workers, count=EVERYTHING)
            sampler.checkpoint()  # the workers are still up
    return window.images_per_s, sampler.peak_pss_mb


Case = tuple[int, str, str]  # (images, loading, cache)


def measure(root: Path, sizes: list[int], repeats: int, batch_size: int, workers: int) -> dict[Case, list[Any]]:
    """``(images, loading, cache) -> [(images/s, peak PSS MB), ...]``, one per repeat, cases taking turns."""
    results: dict[Case, list[Any]] = defaultdict(list)
    with single_threaded():
        for _ in range(repeats):
            for size in sizes:
                for cache in CACHES:
                    results[(size, "single thread", cache or "none")].append(_single(root, size, cache, batch_size))
                for cache in CACHES:
                    run = _workers(root, size, cache, batch_size, workers)
                    results[(size, f"process x{workers}", cache or "none")].append(run)
    return results


def _rows(results: dict[Case, list[Any]]) -> list[dict[str, str]]:
    rows = []
    for (size, loading, cache), runs in results.items():
        rates = [rate for rate, _ in runs]
        base = statistics.median(rate for rate, _ in results[(size, loading, "none")])
        base_pss = max(pss for _, pss in results[(size, loading, "none")])
        rate, pss = statistics.median(rates), max(pss for _, pss in runs)
        cells = [
            f"{size:,}",
            loading,
            cache,
            f"{rate:.1f}",
            f"{min(rates):.1f}-{max(rates):.1f}",
            f"{rate / base:.2f}x",
            f"{pss:.0f}",
            f"{pss - base_pss:+.0f}",
        ]
        rows.append(dict(zip([name for name, _ in COLUMNS], cells, strict=True)))
    return rows


def render(root: Path, sizes: list[int], repeats: int, batch_size: int, workers: int) -> str:
    """Measure every case; the markdown block, headed by machine, date and load."""
    load_before = load_average()
    results = measure(root, sizes, repeats, batch_size, workers)
    meta = {**machine_info(), "load_before": load_before, "load_after": load_average()}
    frame = FlirDetection(root, "train")[0][0]
    return "\n\n".join(
        [
            f"Measured {machine_line(meta)}.",
            f"The first {' and '.join(f'{n:,}' for n in sizes)} train images of ROOT ({tuple(frame.shape)} uint8 "
            f"frames, {frame.numel() / 2**20:.2f} MiB each decoded), thermal preset, batches of {batch_size}, OpenCV "
            f"and torch at one thread; the warmed second epoch, median of {repeats} repeats (min-max); peak PSS of "
            "all processes, and its gap to the same loading without the cache:",
            markdown_table(_rows(results), COLUMNS, align="rllrrrrr"),
        ]
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("root", type=Path, help="dataset folder (flirdata synth DIR --size small)")
    parser.add_argument(
        "--sizes", default=None, help="comma-separated image counts, prefixes of the train split (default: all of it)"
    )
    parser.add_argument("--repeats", type=POSITIVE, default=3, help="passes per case")
    parser.add_argument("--workers", type=POSITIVE, default=2, help="process backend workers")
    parser.add_argument("--batch-size", type=POSITIVE, default=32, help="images per collated batch")
    add_results_options(parser, RESULTS)
    args = parser.parse_args(argv)
    available = len(FlirDetection(args.root, "train"))
    try:
        sizes = [available] if args.sizes is None else [parse_size(t) for t in args.sizes.split(",") if t.strip()]
    except (ValueError, FlirdataError) as exc:
        parser.error(f"--sizes: {exc}")
    if not sizes or max(sizes) > available:
        parser.error(f"--sizes {args.sizes}: expected image counts up to the {available} train images of ROOT")
    if min(sizes) <= (args.workers + 1) * args.batch_size:
        least = (args.workers + 1) * args.batch_size + 1
        parser.error(f"--sizes: {min(sizes)} images leave no batch to time after the warm-up; at least {least}")
    text = render(args.root, sizes, args.repeats, args.batch_size, args.workers)
    return publish(text, None if args.no_write else args.results, "bench_cache.py", HEADING)


if __name__ == "__main__":
    sys.exit(main())
