"""Loading a large coco.json: time and peak memory of ``load_coco`` against ``json.loads`` alone.

    python benchmarks/bench_coco.py [--images 50000] [--annotations 1000000] [--repeats 3]
        [--baseline-tree DIR --baseline-label TEXT] [--no-write]

Writes a FLIR-like ``coco.json`` (records with FLIR's fields and FLIR's 16 categories, boxes
inside the frame; 50,000 images and 1,000,000 annotations make about 146 MB) to a temporary
folder, then measures each loader in a fresh child process per repeat, so that its peak RSS is
the load's own: ``json.loads`` of the file (the floor any Python parse of it pays) and
``flirdata.coco.load_coco`` (decode, check every record, pack). ``--baseline-tree`` measures
``load_coco`` of another flirdata source tree too (an older commit checked out elsewhere), in the
same run, so the two are compared on the same machine load. The table replaces the generated
block of the "coco.json" section of ``benchmarks/RESULTS.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

from flirdata.coco import FLIR_CLASSES, write_coco
from flirdata.tools.bench.machine import load_average, machine_info, machine_line
from flirdata.tools.bench.report import add_results_options, markdown_table, publish, text_columns

RESULTS = Path(__file__).with_name("RESULTS.md")
HEADING = "## coco.json"
COLUMNS = text_columns("loader", "seconds (median)", "min–max", "CPU seconds", "peak RSS MB", "above imports MB")

# Run in a child: import what the loader needs, load, report wall and CPU time and the peak RSS
# (VmHWM: ru_maxrss would carry the parent's peak over the exec that started the child).
_CHILD = """
import json, resource, sys, time
from pathlib import Path
from flirdata.coco import load_coco

def cpu():
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime

def high_water_mb():
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmHWM:")) / 1024

mode, path = sys.argv[1], Path(sys.argv[2])
base, start, cpu_start = high_water_mb(), time.perf_counter(), cpu()
result = json.loads(path.read_bytes()) if mode == "json" else load_coco(path)
seconds, cpu_seconds = time.perf_counter() - start, cpu() - cpu_start
print(json.dumps({"seconds": seconds, "cpu": cpu_seconds, "peak_mb": high_water_mb(), "base_mb": base}))
"""


def write_file(path: Path, images: int, annotations: int, seed: int = 0) -> None:
    """A FLIR-like coco.json: 640x512 frames, boxes 1..40 px inside them, every FLIR category."""
    rng = np.random.default_rng(seed)
    cats = [{"id": k + 1, "name": name, "supercategory": "unknown"} for k, name in enumerate(FLIR_CLASSES)]
    image_of, cat_of = rng.integers(0, images, annotations).tolist(), rng.integers(1, 17, annotations).tolist()
    xy = rng.uniform(0, 480, (annotations, 2)).round().tolist()
    wh = rng.uniform(1, 40, (annotations, 2)).round().tolist()
    records = (
        {
            "id": k,
            "file_name": f"data/video-4FRnNpmSmwktFJKjg-frame-{k:06d}-6SeSrMZvk6Ac9yDZa.jpg",
            "width": 640,
            "height": 512,
            "date_captured": "2018-11-16T00:00:00Z",
            "license": 1,
        }
        for k in range(images)
    )
    boxes = (
        {
            "id": k + 1,
            "image_id": image_of[k],
            "category_id": cat_of[k],
            "bbox": [*xy[k], *wh[k]],
            "area": wh[k][0] * wh[k][1],
            "iscrowd": 0,
            "segmentation": [],
        }
        for k in range(annotations)
    )
    write_coco(path, {"info": {}, "licenses": [], "categories": cats}, records, boxes)


def measure(mode: str, path: Path, tree: Path | None) -> dict[str, float]:
    env = dict(os.environ)
    if tree is not None:
        env["PYTHONPATH"] = os.pathsep.join([str(tree), env.get("PYTHONPATH", "")])
    done = subprocess.run(  # run in the file's folder: `-c` puts the working directory first on sys.path
        [sys.executable, "-c", _CHILD, mode, str(path)],
        env=env,
        cwd=path.parent,
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(done.stdout)


def row(label: str, runs: list[dict[str, float]]) -> dict[str, str]:
    seconds = [r["seconds"] for r in runs]
    peak = statistics.median(r["peak_mb"] for r in runs)
    base = statistics.median(r["base_mb"] for r in runs)
    return {
        "loader": label,
        "seconds (median)": f"{statistics.median(seconds):.2f}",
        "min–max": f"{min(seconds):.2f}–{max(seconds):.2f}",
        "CPU seconds": f"{statistics.median(r['cpu'] for r in runs):.2f}",
        "peak RSS MB": f"{peak:.0f}",
        "above imports MB": f"{peak - base:.0f}",
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=50_000, help="image entries")
    parser.add_argument("--annotations", type=int, default=1_000_000, help="annotation entries")
    parser.add_argument("--repeats", type=int, default=3, help="child processes per loader")
    parser.add_argument("--baseline-tree", type=Path, default=None, help="another flirdata source tree to measure")
    parser.add_argument("--baseline-label", default="load_coco, baseline tree", help="its row's name in the table")
    add_results_options(parser, RESULTS)
    args = parser.parse_args(argv)
    if min(args.images, args.annotations, args.repeats) < 1:
        parser.error("--images, --annotations and --repeats must be at least 1")
    if args.baseline_tree is not None and not (args.baseline_tree / "flirdata" / "coco.py").is_file():
        parser.error(f"--baseline-tree {args.baseline_tree}: holds no flirdata/coco.py")
    loaders = [("json.loads alone", "json", None), ("load_coco", "coco", None)]
    if args.baseline_tree is not None:
        loaders.append((args.baseline_label, "coco", args.baseline_tree.resolve()))
    load_before = load_average()
    with tempfile.TemporaryDirectory(prefix="bench-coco-") as folder:
        path = Path(folder) / "coco.json"
        write_file(path, args.images, args.annotations)
        megabytes = path.stat().st_size / 1e6
        runs: dict[str, list[dict[str, float]]] = {label: [] for label, _, _ in loaders}
        for _ in range(args.repeats):  # loaders take turns, so drift of a shared machine spreads over all
            for label, mode, tree in loaders:
                runs[label].append(measure(mode, path, tree))
    meta = {**machine_info(), "load_before": load_before, "load_after": load_average()}
    text = "\n\n".join(
        [
            f"Measured {machine_line(meta)}.",
            f"A {megabytes:.0f} MB coco.json of {args.images} images and {args.annotations} annotations; each "
            f"loader in a fresh process, {args.repeats} times (median, min–max; CPU: user + system, median); "
            "peak RSS of that process (VmHWM), and how much of it the load added to the imports:",
            markdown_table([row(label, runs[label]) for label, _, _ in loaders], COLUMNS, align="lrrrrr"),
        ]
    )
    return publish(text, None if args.no_write else args.results, "bench_coco.py", HEADING)


if __name__ == "__main__":
    sys.exit(main())
