"""``flirdata bench ROOT --profile``: what each step of the pipeline in use costs, on the user's data.

One thread (OpenCV and torch at one thread), the first images untimed as a warm-up, then for each of
``images`` train images: decode, reseed the pipeline as the dataset does (``flirdata.seeding``),
run the pipeline's top-level transforms one at a time exactly as ``albumentations.Compose`` runs
them (its pre- and post-processing are a row of their own), then collate the samples in batches.
A fused preset runs as the dataset runs it, through its direct plan (``flirdata.direct``): one row
for the plan's own work (seeding, boxes in and out) and one per transform.
Each row is milliseconds per image and its share of the sum of all rows. A last line sets the
pipeline's CPU per image against the floor, the preset's bare pixel work (``floor``).
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Sequence
from typing import Any

import numpy as np

from flirdata.tools.bench import report
from flirdata.tools.bench.timing import single_threaded

__all__ = ["PROFILE_COLUMNS", "step_name", "profile_pipeline", "format_profile", "run_profile"]

WARMUP = 3  # images run untimed first: first calls allocate, load code, fill caches
FLOOR_ROUNDS = 3  # rounds of floor then pipeline; the line gives the median ratio
DECODE, RESEED, COMPOSE, COLLATE = "decode", "reseed", "Compose (boxes in/out)", "collate"
DIRECT = "direct plan (seeds, boxes in/out)"  # the fused presets' path (flirdata.direct) in place of the two above

PROFILE_COLUMNS: list[report.Column] = [
    ("step", lambda r: r["step"]),
    ("kind", lambda r: r["kind"]),
    ("ms/image", lambda r: f"{r['ms_per_image']:.3f}"),
    ("share", lambda r: f"{100 * r['share']:.1f}%"),
]


def step_name(transform: Any) -> str:
    """``GaussNoise``; a composition names its children: ``OneOf(GaussianBlur, MotionBlur)``."""
    children = getattr(transform, "transforms", None)
    name = type(transform).__name__
    return f"{name}({', '.join(step_name(t) for t in children)})" if children else name


def _augment_timed(pipeline: Any, image: np.ndarray, boxes: np.ndarray, clock: list[float]) -> None:
    """``pipeline(image=..., bboxes=..., labels=...)`` step by step, adding each step's seconds to ``clock``.

    ``clock`` is ``[compose, step 0, step 1, ...]``; the loop is ``Compose.__call__``'s own.
    """
    from flirdata.boxes import coco_to_xyxy

    voc = pipeline.processors["bboxes"].params.format == "pascal_voc"
    data = {"image": image, "bboxes": coco_to_xyxy(boxes) if voc else boxes, "labels": np.arange(len(boxes))}
    start = time.perf_counter()
    pipeline.preprocess(data)
    clock[0] += time.perf_counter() - start
    for k, transform in enumerate(pipeline.transforms, start=1):
        start = time.perf_counter()
        data = pipeline.check_data_post_transform(transform(**data))
        clock[k] += time.perf_counter() - start
    start = time.perf_counter()
    pipeline.postprocess(data)
    clock[0] += time.perf_counter() - start


def _direct_timed(plan: Any, image: np.ndarray, boxes: np.ndarray, seeds: Any, clock: list[float]) -> None:
    """``plan(image, boxes, seeds)``, adding each step's seconds to ``clock[1:]`` and the rest to ``clock[0]``."""
    steps = [0.0] * (len(clock) - 1)
    start = time.perf_counter()
    plan(image, boxes, seeds, steps)
    clock[0] += time.perf_counter() - start - sum(steps)
    for k, seconds in enumerate(steps, start=1):
        clock[k] += seconds


def _time_collate(dataset: Any, rows: Sequence[int], batch_size: int) -> float:
    from flirdata.collate import collate_detection

    seconds = 0.0
    for k in range(0, len(rows), batch_size):
        samples = [dataset[int(i)] for i in rows[k : k + batch_size]]
        start = time.perf_counter()
        collate_detection(samples)
        seconds += time.perf_counter() - start
    return seconds


def profile_pipeline(dataset: Any, images: int, batch_size: int = 32) -> list[report.Record]:
    """Per-step cost of ``dataset.transform`` on the first ``images`` images of ``dataset``.

    Raises:
        ValueError: ``dataset`` has no transform, or fewer than ``WARMUP + 1`` images.
    """
    from flirdata.direct import direct_plan
    from flirdata.seeding import reseed_transform, sample_seed_sequence
    from flirdata.transforms import ensure_detection_compose

    if dataset.transform is None:
        raise ValueError("the dataset has no transform to profile")
    if len(dataset) <= WARMUP:
        raise ValueError(f"profiling needs more than {WARMUP} images (warm-up), the split has {len(dataset)}")
    pipeline = ensure_detection_compose(dataset.transform)
    plan = direct_plan(pipeline)  # the path the dataset takes
    rows = list(range(min(images + WARMUP, len(dataset))))
    clock = [0.0] * (len(pipeline.transforms) + 1)
    decode = reseed = 0.0
    with single_threaded():
        for n, i in enumerate(rows):
            if n == WARMUP:  # the warm-up ran; start counting
                clock, decode, reseed = [0.0] * len(clock), 0.0, 0.0
            start = time.perf_counter()
            image, boxes, _ = dataset.load_raw(i)
            decode += time.perf_counter() - start
            if plan is not None:
                _direct_timed(plan, image, boxes, sample_seed_sequence(dataset.seed, 0, i), clock)
                continue
            middle = time.perf_counter()
            reseed_transform(pipeline, sample_seed_sequence(dataset.seed, 0, i))
            reseed += time.perf_counter() - middle
            _augment_timed(pipeline, image, boxes, clock)
        collate = _time_collate(dataset, rows[WARMUP:], batch_size)
    timed = len(rows) - WARMUP
    steps = [(DECODE, "load", decode)]
    if plan is None:
        steps += [(RESEED, "seed", reseed), (COMPOSE, "albumentations", clock[0])]
    else:
        steps.append((DIRECT, "flirdata", clock[0]))
    steps += [(step_name(t), "transform", s) for t, s in zip(pipeline.transforms, clock[1:], strict=True)]
    steps.append((COLLATE, "batch", collate))
    total = sum(s for *_, s in steps) or float("nan")
    return [
        {"step": name, "kind": kind, "ms_per_image": 1e3 * s / timed, "share": s / total, "images": timed}
        for name, kind, s in steps
    ]


def format_profile(records: Sequence[report.Record]) -> str:
    """The profile table, and a total line."""
    total = sum(r["ms_per_image"] for r in records)
    table = report.format_table(records, PROFILE_COLUMNS)
    return (
        f"{table}\ntotal {total:.3f} ms/image ({1e3 / total:.0f} images/s on one thread), {records[0]['images']} images"
    )


def _command(args: argparse.Namespace) -> str:
    """The command that reproduces this profile, for the header line."""
    sizes = f"--batch-size {args.batch_size} --batches {args.batches}"
    return f"flirdata bench {args.root} --profile --preset {args.preset} {sizes}"


def run_profile(args: argparse.Namespace) -> int:
    """``flirdata bench ROOT --profile``: the train split with ``--preset``, ``--batches`` x ``--batch-size`` images."""
    from flirdata.dataset import FlirDetection
    from flirdata.tools.bench.floor import format_floor, measure_floor
    from flirdata.tools.bench.machine import machine_info, machine_line
    from flirdata.transforms import build_transform

    dataset = FlirDetection(args.root, "train", transform=build_transform(args.preset), seed=args.seed)
    images = args.batch_size * (args.batches or -(-len(dataset) // args.batch_size))
    records = profile_pipeline(dataset, images, args.batch_size)
    with single_threaded():
        floor = measure_floor(dataset, images, FLOOR_ROUNDS, args.batch_size)
    print(f"{_command(args)}\n{machine_line(machine_info())}")
    print(format_profile(records))
    print(format_floor(floor))
    return 0
