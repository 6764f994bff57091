"""The fast thermal preset against its reference: single-core images/s and what each transform costs.

    python benchmarks/bench_presets.py ROOT [--images 500] [--repeats 3] [--batch-size 32] [--no-write]

ROOT is a dataset folder (``flirdata synth DIR --size small`` makes a 500-image one). For each
repeat and each preset, taking turns so that drift of a shared machine spreads over both, the
first ``--images`` train images go through the tight single-thread loop of ``flirdata bench``
(decode + augment + collate, OpenCV and torch at one thread, one warm-up batch:
``flirdata.tools.bench.timing.calibrate``); the table gives the median rate over repeats and the
spread. Then ``flirdata bench --profile``'s per-step costs of each preset on the same images.
The tables replace the generated block of the "Presets" section of ``benchmarks/RESULTS.md``.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

from flirdata import FlirDetection, build_transform
from flirdata.cliargs import POSITIVE
from flirdata.tools.bench.machine import load_average, machine_info, machine_line
from flirdata.tools.bench.profile import PROFILE_COLUMNS, profile_pipeline
from flirdata.tools.bench.report import add_results_options, markdown_table, publish, text_columns
from flirdata.tools.bench.timing import calibrate

RESULTS = Path(__file__).with_name("RESULTS.md")
HEADING = "## Presets"
PRESETS = ("thermal_reference", "thermal")  # the baseline first
RATE_COLUMNS = text_columns("preset", "images/s", "min-max", "ms/image", "vs reference")


def measure(root: Path, images: int, repeats: int, batch_size: int) -> dict[str, list[float]]:
    """Tight-loop images/s of each preset, ``repeats`` times, presets taking turns."""
    datasets = {p: FlirDetection(root, "train", transform=build_transform(p), seed=0) for p in PRESETS}
    datasets = {p: ds.subset(range(min(images, len(ds)))) for p, ds in datasets.items()}
    batches = max(1, len(datasets[PRESETS[0]]) // batch_size - 1)  # the first batch is the warm-up
    rates: dict[str, list[float]] = {p: [] for p in PRESETS}
    for _ in range(repeats):
        for preset, ds in datasets.items():
            rates[preset].append(calibrate(ds, batch_size, batches, seed=0)["tight_images_per_s"])
    return rates


def _rate_rows(rates: dict[str, list[float]]) -> list[dict[str, str]]:
    base = statistics.median(rates[PRESETS[0]])
    rows = []
    for preset, values in rates.items():
        rate = statistics.median(values)
        spread = f"{min(values):.1f}-{max(values):.1f}"
        cells = [preset, f"{rate:.1f}", spread, f"{1e3 / rate:.2f}", f"{rate / base:.2f}x"]
        rows.append(dict(zip([name for name, _ in RATE_COLUMNS], cells, strict=True)))
    return rows


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
        f"{batch_size} after one warm-up batch; median of {repeats} repeats (min-max):",
        markdown_table(_rate_rows(rates), RATE_COLUMNS, align="lrrrr"),
    ]
    for preset, records in profiles.items():
        parts.append(f"Per step, `{preset}` (`flirdata bench ROOT --profile --preset {preset}`):")
        parts.append(markdown_table(records, PROFILE_COLUMNS, align="llrr"))
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
