"""The floor benchmark: the preset's bare pixel work against the pipeline's CPU per image, one thread.

    python benchmarks/bench_floor.py ROOT [--preset thermal] [--images 256] [--repeats 5] [--no-write]

ROOT is a dataset folder (``flirdata synth DIR --size small``). For the first ``--images`` train
images, without and with ``cache="ram"``, ``flirdata.tools.bench.floor.measure_floor`` times the
floor (simplejpeg decode, one ``cv2.warpAffine``, one ``cv2.LUT``, blur and noise weighted by the
preset's probabilities; no decode with the cache) and the pipeline (``dataset[i]`` + collate) in
turns, in CPU time of this process, OpenCV and torch at one thread. Each ratio is taken within
one round; the table gives the median over rounds and the spread. The table replaces the generated
block of the "Floor" section of ``benchmarks/RESULTS.md``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from flirdata import FlirDetection, build_transform
from flirdata.cliargs import POSITIVE
from flirdata.tools.bench.floor import measure_floor
from flirdata.tools.bench.machine import load_average, machine_info, machine_line
from flirdata.tools.bench.report import add_results_options, markdown_table, publish, text_columns
from flirdata.tools.bench.timing import single_threaded

RESULTS = Path(__file__).with_name("RESULTS.md")
HEADING = "## Floor"
TARGET = 1.15  # the pipeline's CPU per image over the floor's
COLUMNS = text_columns(
    "cache", "decode", "warpAffine", "LUT", "blur", "noise", "floor", "pipeline", "ratio", "min-max", "met"
)


def _row(result: dict) -> dict[str, str]:
    best = min(result["rounds"], key=lambda r: abs(r["ratio"] - result["ratio"]))
    weights, steps = result["weights"], best["steps"]
    row = {
        name: f"{weights[name]:.2f} x {steps[name]:.3f}" if name in steps else "-"
        for name in ("decode", "warpAffine", "LUT", "blur", "noise")
    }
    ratios = [r["ratio"] for r in result["rounds"]]
    return {
        "cache": "ram" if result["cache"] else "none",
        **row,
        "floor": f"{best['floor']:.3f}",
        "pipeline": f"{best['pipeline']:.3f}",
        "ratio": f"{result['ratio']:.2f}",
        "min-max": f"{min(ratios):.2f}-{max(ratios):.2f}",
        "met": "yes" if result["ratio"] <= TARGET else "**no**",
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("root", type=Path)
    parser.add_argument("--preset", default="thermal")
    parser.add_argument("--images", type=POSITIVE, default=256)
    parser.add_argument("--repeats", type=POSITIVE, default=5)
    parser.add_argument("--batch-size", type=POSITIVE, default=32)
    add_results_options(parser, RESULTS)
    args = parser.parse_args(argv)
    before = load_average()
    rows = []
    with single_threaded():
        for cache in (None, "ram"):
            dataset = FlirDetection(args.root, "train", transform=build_transform(args.preset), seed=0, cache=cache)
            rows.append(_row(measure_floor(dataset, args.images, args.repeats, args.batch_size)))
    info = machine_info()
    text = "\n\n".join(
        [
            f"Measured {machine_line(info)}; load average {before:.2f} before, {load_average():.2f} after.",
            f"`{args.preset}` preset, {args.images} train images, one thread, CPU ms per image (`time.process_time`), "
            f"{args.repeats} rounds of floor then pipeline; ratio = pipeline / floor within a round, median over "
            f"rounds; target ratio <= {TARGET}. Floor steps are weight x ms per call.",
            markdown_table(rows, COLUMNS, "l" + "r" * (len(COLUMNS) - 1)),
        ]
    )
    return publish(text, None if args.no_write else args.results, "bench_floor.py", HEADING)


if __name__ == "__main__":
    sys.exit(main())
