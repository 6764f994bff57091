"""The fast thermal preset against its reference: single-core images/s, with and without the RAM cache,
and what each transform costs.

    python benchmarks/bench_presets.py ROOT [--images 500] [--repeats 3] [--batch-size 32] [--no-write]

ROOT is a dataset folder (``flirdata synth DIR --size small`` makes a 500-image one). For each
repeat and each (preset, cache) case, taking turns so that drift of a shared machine spreads
over all of them, the first ``--images`` train images go through the tight single-thread loop
of ``flirdata bench`` (decode + augment + collate, OpenCV and torch at one thread, one warm-up
batch: ``flirdata.tools.bench.timing.calibrate``); with ``cache="ram"`` one untimed pass fills
the cache first, so the timed pass decodes nothing. The table gives the median rate over
repeats and the spread. Then ``flirdata bench --profile``'s per-step costs of each preset on
the same images, and what they say about the 2x target: the steps both presets run (decode,
reseeding, albumentations' box handling, collate) against the steps that differ.
The tables replace the generated block of the "Presets" section of ``benchmarks/RESULTS.md``.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path
from typing import Any

from flirdata import FlirDetection, build_transform
from flirdata.cliargs import POSITIVE
from flirdata.tools.bench.machine import load_average, machine_info, machine_line
from flirdata.tools.bench.profile import PROFILE_COLUMNS, profile_pipeline
from flirdata.tools.bench.report import add_results_options, markdown_table, publish, text_columns
from flirdata.tools.bench.timing import calibrate

RESULTS = Path(__file__).with_name("RESULTS.md")
HEADING = "## Presets"
PRESETS = ("thermal_reference", "thermal")  # the baseline first
CACHES = (None, "ram")
TARGET = 2.0  # the fast preset's rate over the reference's
RATE_COLUMNS = text_columns("preset", "cache", "images/s", "min-max", "ms/image", "vs reference")
TARGET_COLUMNS = text_columns("target", "measured", "met")
BOUND_COLUMNS = text_columns("", "thermal_reference", "thermal", "ratio")
Case = tuple[str, "str | None"]  # (preset, cache)


def _case_dataset(root: Path, images: int, preset: str, cache: str | None) -> FlirDetection:
    ds = FlirDetection(root, "train", transform=build_transform(preset), seed=0, cache=cache)
    return ds.subset(range(min(images, len(ds))))


def measure(root: Path, images: int, repeats: int, batch_size: int) -> dict[Case, list[float]]:
    """Tight-loop images/s of each (preset, cache) case, ``repeats`` times, cases taking turns."""
    cases = [(preset, cache) for cache in CACHES for preset in PRESETS]
    datasets = {case: _case_dataset(root, images, *case) for case in cases}
    batches = max(1, len(datasets[cases[0]]) // batch_size - 1)  # the first batch is the warm-up
    for (_, cache), ds in datasets.items():
        if cache is not None:
            for i in range(len(ds)):  # fill the cache (decode only): the timed passes decode nothing
                ds.load_raw(i)
    rates: dict[Case, list[float]] = {case: [] for case in cases}
    for _ in range(repeats):
        for case, ds in datasets.items():
            rates[case].append(calibrate(ds, batch_size, batches, seed=0)["tight_images_per_s"])
    return rates


def _rate_rows(rates: dict[Case, list[float]]) -> list[dict[str, str]]:
    rows = []
    for (preset, cache), values in rates.items():
        base = statistics.median(rates[(PRESETS[0], cache)])
        rate = statistics.median(values)
        spread = f"{min(values):.1f}-{max(values):.1f}"
        cells = [preset, cache or "none", f"{rate:.1f}", spread, f"{1e3 / rate:.2f}", f"{rate / base:.2f}x"]
        rows.append(dict(zip([name for name, _ in RATE_COLUMNS], cells, strict=True)))
    return rows


def _target_rows(rates: dict[Case, list[float]]) -> list[dict[str, str]]:
    rows = []
    for cache in CACHES:
        ratio = statistics.median(rates[(PRESETS[1], cache)]) / statistics.median(rates[(PRESETS[0], cache)])
        target = f"thermal >= {TARGET:g}x thermal_reference, cache {cache or 'none'}"
        rows.append({"target": target, "measured": f"{ratio:.2f}x", "met": "yes" if ratio >= TARGET else "**no**"})
    return rows


def _split(records: list[dict[str, Any]]) -> tuple[float, float]:
    """(ms of the steps every preset runs, ms of the preset's own transforms) per image."""
    shared = sum(r["ms_per_image"] for r in records if r["kind"] != "transform")
    return shared, sum(r["ms_per_image"] for r in records if r["kind"] == "transform")


def _bound_rows(profiles: dict[str, list[dict[str, Any]]]) -> list[dict[str, str]]:
    """The profiles split: the ratio over all steps, and over the presets' own transforms alone (the
    ratio the presets would reach if the steps both run cost nothing)."""
    (ref_shared, ref_own), (fast_shared, fast_own) = (_split(profiles[p]) for p in PRESETS)
    ref_all, fast_all = ref_shared + ref_own, fast_shared + fast_own
    rows = [
        ("steps both run (decode, reseed, Compose, collate), ms", ref_shared, fast_shared, ""),
        ("the preset's own transforms, ms", ref_own, fast_own, f"{ref_own / fast_own:.2f}x"),
        ("all, ms", ref_all, fast_all, f"{ref_all / fast_all:.2f}x"),
    ]
    keys = [name for name, _ in BOUND_COLUMNS]
    return [dict(zip(keys, [name, f"{a:.3f}", f"{b:.3f}", ratio], strict=True)) for name, a, b, ratio in rows]


def render(root: Path, images: int, repeats: int, batch_size: int) -> str:
    """Measure both presets and profile each; the markdown block, headed by machine, date and load."""
    load_before = load_average()
    rates = measure(root, images, repeats, batch_size)
    profiles = {}
    for preset in PRESETS:
        ds = FlirDetection(root, "train", transform=build_transform(preset), seed=0)
        profiles[preset] = profile_pipeline(ds, min(images, len(ds) - 3), batch_size)
    meta = {**machine_info(), "load_before": load_before, "load_after": load_average()}
    parts = [
        f"Measured {machine_line(meta)}.",
        f"Decode + augment + collate of the first {images} train images of ROOT, one thread, batches of "
        f"{batch_size} after one warm-up batch; median of {repeats} repeats (min-max); `ram`: the frames "
        'come decoded from `FlirDetection(cache="ram")`, filled by an untimed pass:',
        markdown_table(_rate_rows(rates), RATE_COLUMNS, align="llrrrr"),
        "Target:",
        markdown_table(_target_rows(rates), TARGET_COLUMNS, align="lrc"),
    ]
    for preset, records in profiles.items():
        parts.append(f"Per step, `{preset}` (`flirdata bench ROOT --profile --preset {preset}`):")
        parts.append(markdown_table(records, PROFILE_COLUMNS, align="llrr"))
    parts.append("The same profiles, split into the steps both presets run and the steps that differ:")
    parts.append(markdown_table(_bound_rows(profiles), BOUND_COLUMNS, align="lrrr"))
    return "\n\n".join(parts)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("root", type=Path, help="dataset folder (flirdata synth DIR --size small)")
    parser.add_argument("--images", type=POSITIVE, default=500, help="train images timed per preset and repeat")
    parser.add_argument("--repeats", type=POSITIVE, default=3, help="passes per preset")
    parser.add_argument("--batch-size", type=POSITIVE, default=32, help="images per collated batch")
    add_results_options(parser, RESULTS)
    args = parser.parse_args(argv)
    if args.images < 2 * args.batch_size:
        parser.error(f"--images {args.images} gives no batch to time after the warm-up batch of {args.batch_size}")
    text = render(args.root, args.images, args.repeats, args.batch_size)
    return publish(text, None if args.no_write else args.results, "bench_presets.py", HEADING)


if __name__ == "__main__":
    sys.exit(main())
