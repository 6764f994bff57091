"""``flirdata bench``: sweep backends x workers x dataset sizes and report what each one buys.

A size is a prefix of the train split of ROOT (``small`` = its first 500 images, and so
on); a size larger than the split is an error that says how to make a big enough dataset
with ``flirdata synth``, rather than a silent repeat of the same images.

One point (backend, workers, size) is measured ``--repeats`` times, the repeats interleaved
round robin over all points, so a slow drift of the machine (heat, a neighbour) spreads over
every point instead of biasing the ones measured last. One repeat:

1. builds a loader on the size's images (shuffled, fixed seed) and waits for the first batch:
   ``first_batch_s``; ``startup_s`` is what is left of it after one steady batch latency
   (``workers * batch_size / images_per_s``), i.e. starting the pool and shipping the dataset;
2. skips one more batch per extra worker (the first wave arrives all at once and would
   inflate the rate), then times ``--batches`` batches (fewer if the epoch ends first):
   ``images_per_s``. A point times a bounded number of batches, not a whole epoch, so that
   big sizes stay feasible; ``epoch_s`` estimates a whole epoch as startup + images / rate.

The sequential backend is always measured (once per size, it has no workers): it is the
baseline of ``speedup`` (rate / sequential rate) and ``efficiency`` (speedup / the cores the
point may use, ``min(workers, cores)``). Every point that runs in this thread (the baseline, and
a backend at 1 worker) runs with one thread per library, as the workers do, so the baseline is
one core's work and 1.0 is the most efficiency can be; a figure above 1 is printed with its
cause (``report.efficiency_cause``). ``fraction_of_ideal`` compares with ``min(workers, cores)``
times the single-core rate of a tight loop of decode + augment + collate in a warmed-up
worker-like process (the workers' thread limits and allocator settings;
``timing.calibrate_warmed``). ``cpu_ms_per_image`` is the CPU time of this process and its
workers over the timed window, per image; ``others_cores`` the most cores other processes of the
machine took during a repeat's window.
``peak_pss_mb`` is the peak proportional set size of this process and all its children (PSS
splits shared pages between the processes sharing them, so workers are not counted twice for
the libraries they share), read after the first batch and right after the timed window;
``peak_rss_mb`` is the peak sum of RSS, read by a thread every 0.1 s throughout. PSS is not
read inside the timed window because reading it costs ~20 ms of CPU per process (see
``flirdata.tools.bench.memory``).

The engine's parts, which the scripts in ``benchmarks/`` use too: ``machine`` (what a result
depends on, and how busy the rest of the machine was), ``memory`` (peak PSS/RSS of a process
tree), ``timing`` (the warmed single-thread calibration and one timed window of batches) and
``report`` (ratios, text and markdown tables, JSON, the markdown blocks of RESULTS.md, the
plot). A size is ``FlirDetection.subset`` of the split's first images.
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from flirdata.errors import FlirdataError
from flirdata.tools.bench import report
from flirdata.tools.bench.machine import load_average, machine_info
from flirdata.tools.bench.memory import MemorySampler
from flirdata.tools.bench.timing import calibrate_warmed, single_threaded, timed_window

__all__ = ["BenchConfig", "run_command", "run_bench"]

BASELINE = report.BASELINE


class BenchError(FlirdataError, ValueError):
    """A bench argument cannot be measured (bad list, size larger than the dataset...)."""


@dataclass(frozen=True)
class BenchConfig:
    """One sweep: the grid, and how long each point is measured."""

    data: str
    backends: tuple[str, ...]
    workers: tuple[int, ...]
    sizes: tuple[str, ...]  # labels as given: "small", "2000", ...
    batch_size: int = 32
    batches: int = 20  # timed batches per repeat; 0 = the rest of the epoch
    repeats: int = 3
    seed: int = 0
    preset: str = "thermal"  # a key of PRESETS or an albumentations .json/.yaml file


# -- arguments ---------------------------------------------------------------------------------
def _items(text: str, what: str) -> list[str]:
    items = [t.strip() for t in str(text).split(",") if t.strip()]
    if not items:
        raise BenchError(f"{what}: expected a comma-separated list, got {text!r}")
    return list(dict.fromkeys(items))


def parse_config(args: argparse.Namespace) -> BenchConfig:
    """Turn the parsed command line into a ``BenchConfig``; every bad list is one ``BenchError``."""
    from flirdata.backends.registry import BACKENDS, installed_backends
    from flirdata.synth import parse_size

    backends = _items(args.backends, "--backends") if args.backends else installed_backends()
    unknown = [b for b in backends if b not in BACKENDS]
    if unknown:
        raise BenchError(f"--backends: unknown backend {unknown[0]!r}; expected one of {sorted(BACKENDS)}")
    sizes = _items(args.sizes, "--sizes")
    for size in sizes:
        try:
            parse_size(size)
        except (ValueError, FlirdataError) as exc:
            raise BenchError(f"--sizes: {exc}") from None
    return BenchConfig(
        data=str(args.root),
        backends=tuple([BASELINE] + [b for b in backends if b != BASELINE]),
        workers=tuple(sorted(args.workers)),
        sizes=tuple(sizes),
        batch_size=args.batch_size,
        batches=args.batches,
        repeats=args.repeats,
        seed=args.seed,
        preset=str(args.preset),
    )


# -- datasets ----------------------------------------------------------------------------------
def _open_sizes(config: BenchConfig) -> dict[str, Any]:
    from flirdata.dataset import FlirDetection
    from flirdata.synth import parse_size
    from flirdata.transforms import build_transform

    full = FlirDetection(config.data, "train", transform=build_transform(config.preset), seed=config.seed)
    out = {}
    for label in config.sizes:
        n = parse_size(label)
        if n > len(full):
            raise BenchError(
                f"{config.data}: size {label} needs {n} train images but the split has {len(full)}; "
                f"make a bigger dataset with `flirdata synth DIR --size {label}` or choose smaller --sizes"
            )
        # Timing needs one batch after the warm-up: the first batch and the first wave.
        need = 1 + (max(config.workers) if len(config.backends) > 1 else 1)
        if -(-n // config.batch_size) < need:
            raise BenchError(
                f"size {label} ({n} images) gives fewer than {need} batches of {config.batch_size} "
                "(one to time after the first wave of workers): lower --batch-size"
            )
        out[label] = full.subset(range(n))  # keeps each image's augmentation, ships a small index
    return out


# -- measuring ---------------------------------------------------------------------------------
def measure_once(
    dataset: Any, backend: str, workers: int, config: BenchConfig, memory: MemorySampler
) -> dict[str, Any]:
    """One repeat of one point: time to first batch, then the steady rate (see module doc)."""
    from flirdata.loader import make_loader

    start = time.perf_counter()
    loader = make_loader(
        dataset,
        backend=backend,
        workers=workers,
        batch_size=config.batch_size,
        shuffle=True,
        seed=config.seed,
        rank=0,
        world_size=1,
    )
    with loader, contextlib.ExitStack() as stack:
        if loader.options.effective_backend == BASELINE:
            # In this thread: one thread per library, as in every worker and in the warmed ideal, so that
            # the baseline is one core's work (OpenCV's own pool made it up to 2 cores, or collapse on a busy
            # machine, and efficiency above 1).
            stack.enter_context(single_threaded())
        batches = iter(loader)
        next(batches)
        first = time.perf_counter() - start
        memory.checkpoint()  # pool up, first wave in flight
        for _ in range(workers - 1):  # the rest of the first wave
            next(batches, None)
        with memory.quiet():
            window = timed_window(batches, 0, config.batches or len(loader))
        memory.checkpoint()  # prefetch queue full: the steady state's memory
        closing = time.perf_counter()
    if window.images == 0:
        raise BenchError(
            f"size {len(dataset)} leaves no batch to time after warm-up with {workers} workers; "
            "use a bigger size or a smaller --batch-size"
        )
    return {
        "first_batch_s": first,
        "images_timed": window.images,
        "seconds": window.seconds,
        "shutdown_s": time.perf_counter() - closing,
        "runs_as": loader.options.effective_backend,
        "cpu_ms_per_image": window.cpu_ms_per_image,
        "others_cores": window.others_cores,
        "peak_pss_mb": memory.peak_pss_mb,
        "peak_rss_mb": memory.peak_rss_mb,
    }


# -- the sweep ---------------------------------------------------------------------------------
Point = tuple[str, str, int]  # (size, backend, workers)


def sweep_points(config: BenchConfig) -> list[Point]:
    """Every point of the grid; the sequential baseline once per size (it has no workers)."""
    points = []
    for size in config.sizes:
        points.append((size, BASELINE, 1))
        points.extend((size, backend, w) for backend in config.backends if backend != BASELINE for w in config.workers)
    return points


def _record(
    point: Point, runs: Sequence[dict[str, Any]], images: int, calib: Sequence[dict[str, float]], config: BenchConfig
) -> report.Record:
    size, backend, workers = point
    rates = [r["images_timed"] / r["seconds"] for r in runs]
    rate = statistics.median(rates)
    first = statistics.median(r["first_batch_s"] for r in runs)
    startup = max(0.0, first - workers * config.batch_size / rate)
    return {
        "backend": backend,
        "workers": workers,
        "runs_as": runs[0]["runs_as"],
        "size": size,
        "images": images,
        "batch_size": config.batch_size,
        "images_timed": int(statistics.median(r["images_timed"] for r in runs)),
        "repeats": len(runs),
        "images_per_s": rate,
        "images_per_s_min": min(rates),
        "images_per_s_max": max(rates),
        "first_batch_s": first,
        "startup_s": startup,
        "epoch_s": startup + images / rate,
        "shutdown_s": statistics.median(r["shutdown_s"] for r in runs),
        "peak_pss_mb": max(r["peak_pss_mb"] for r in runs),
        "peak_rss_mb": max(r["peak_rss_mb"] for r in runs),
        "cpu_ms_per_image": statistics.median(r["cpu_ms_per_image"] for r in runs),
        "others_cores": max(r["others_cores"] for r in runs),
        **{key: statistics.median(c[key] for c in calib) for key in calib[0]},
    }


def run_bench(config: BenchConfig, progress: bool = True) -> list[report.Record]:
    """Measure every point ``config.repeats`` times, round robin; records with ratios."""
    from tqdm import tqdm

    datasets = _open_sizes(config)
    load_before = load_average()
    largest = max(datasets.values(), key=len)
    points = sweep_points(config)
    runs: dict[Point, list[dict[str, Any]]] = {p: [] for p in points}
    calib: list[dict[str, float]] = []
    calib_batches = max(5, config.batches or len(largest) // config.batch_size)
    with tqdm(total=config.repeats * (len(points) + 1), desc="bench", unit="run", disable=not progress) as bar:
        for _ in range(config.repeats):
            bar.set_postfix_str("tight loop, 1 thread")
            calib.append(calibrate_warmed(largest, config.batch_size, calib_batches, config.seed))
            bar.update()
            for point in points:
                bar.set_postfix_str(f"{point[0]} {point[1]} x{point[2]}")
                with MemorySampler() as memory:
                    runs[point].append(measure_once(datasets[point[0]], point[1], point[2], config, memory))
                bar.update()
    meta = {**machine_info(), "load_before": load_before, "load_after": load_average()}
    records = [{**_record(p, runs[p], len(datasets[p[0]]), calib, config), **meta} for p in points]
    return report.add_ratios(records, meta["cores"])


def _command(config: BenchConfig) -> str:
    return (
        f"flirdata bench {config.data} --backends {','.join(config.backends)} "
        f"--workers {','.join(map(str, config.workers))} --sizes {','.join(config.sizes)} "
        f"--batch-size {config.batch_size} --batches {config.batches} --repeats {config.repeats}"
    )


def _outputs(args: argparse.Namespace) -> dict[str, Path]:
    """Output files, checked before a long sweep rather than after it."""
    outputs = {k: Path(getattr(args, k)) for k in ("json", "markdown", "plot") if getattr(args, k)}
    for key, path in outputs.items():
        if not path.parent.is_dir():
            raise BenchError(f"--{key} {path}: folder {path.parent} does not exist")
    return outputs


def _calibration_line(r: report.Record) -> str:
    return (
        f"tight loop (decode + augment + collate, 1 warmed worker process): {r['tight_images_per_s']:.1f} images/s; "
        f"a batch is {r['batch_mb']:.1f} MB, pickling it there and back {r['pickle_ms_per_batch']:.1f} ms"
    )


def run_command(args: argparse.Namespace) -> int:
    """Run ``flirdata bench`` (its arguments: ``flirdata.commands.bench``)."""
    if args.profile:
        from flirdata.tools.bench.profile import run_profile

        return run_profile(args)
    config = parse_config(args)
    outputs = _outputs(args)
    records = run_bench(config, progress=args.progress)
    print(_calibration_line(records[0]))
    print(report.format_table(records, report.POINT_COLUMNS))
    print()
    print(report.format_table(report.best_per_size(records), report.BEST_COLUMNS))
    print(f"({report.RATIOS_NOTE})")
    print("\n".join(report.efficiency_notes(records)))
    if "json" in outputs:
        report.write_json(outputs["json"], records)
    if "markdown" in outputs:
        report.write_markdown(
            outputs["markdown"], records, records[0], _command(config), notes=[_calibration_line(records[0])]
        )
    if "plot" in outputs:
        report.plot_speedup(outputs["plot"], records, records[0]["cores"])
    return 0
