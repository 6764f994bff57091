"""``flirdata export``: K augmented copies of every image, written as a new COCO or YOLO dataset.

Flat item ``j`` of an export is copy ``k = j // N`` of image ``i = j % N`` (``N`` images), drawn
as ``ds.sample(i, epoch=k)``: the first ``N`` items are copy 0 of every image, so ``limit=n``
saves exactly what ``ds.sample(i, epoch=0)`` gives for the first ``n`` images.

Items are written in batches: ``BatchWriter`` (in ``batch.py``) is the task function of a
backend of ``BACKENDS``, mapped in order over the pending batch numbers; in the workers it draws
a batch's items, writes their files, then the batch's shard in the hidden work folder, and
returns only counts. A batch is done when its shard exists, so ``resume=True`` only redoes
batches without one. The final ``coco.json`` (or ``data.yaml``) is merged from the shards in
batch order, streamed (memory stays bounded), and renamed into place last; the work folder is
then removed. Nothing depends on which worker wrote what, so every file has the same bytes for
any backend, worker count and interruption history.

A YOLO export fills one split (``images/S``, ``labels/S``) of a dataset that may hold others:
each split has its own work folder and resumes on its own, and finishing a split rewrites
``data.yaml`` to list every split present. A COCO export holds one split per folder.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import albumentations as A
from tqdm import tqdm

from flirdata.backends import BACKENDS
from flirdata.cliargs import POSITIVE, SEED, WORKERS, IntRange, add_progress, add_root, choices_text
from flirdata.dataset import SPLITS, FlirDetection
from flirdata.errors import FlirdataError, WorkerError
from flirdata.files import write_atomic
from flirdata.loader import open_backend, warn_if_oversubscribed
from flirdata.tools.export.batch import (
    WORK_DIR,
    BatchResult,
    BatchWriter,
    ExportError,
    ExportItem,
    ExportPlan,
    export_item,
    output_stem,
    write_batch,
)
from flirdata.tools.export.output import VERSION, finish_output, pending_batches, prepare_output, yolo_record
from flirdata.tools.export.yolo import YOLO_SPLITS
from flirdata.transforms import MODALITY_PRESETS, build_transform, ensure_detection_compose

__all__ = [
    "EVAL_SPLITS",
    "FORMATS",
    "WORK_DIR",
    "BatchResult",
    "BatchWriter",
    "ExportError",
    "ExportItem",
    "ExportPlan",
    "ExportSummary",
    "configure_parser",
    "export_augmented",
    "export_item",
    "output_stem",
    "run_command",
    "write_atomic",
    "write_batch",
]

FORMATS = ("coco", "yolo")
EVAL_SPLITS = ("val", "test")  # the CLI writes these once, un-augmented, unless --augment-all
QUALITY = IntRange(0, 100)  # JPEG quality, as OpenCV takes it


@dataclass(frozen=True)
class ExportSummary:
    """What an export produced.

    ``written`` counts this call's images (the others were there from an interrupted run);
    ``images`` and the box counts cover the whole export (of ``split``, for YOLO).
    """

    out: str
    fmt: str
    images: int
    written: int
    boxes_kept: int
    boxes_dropped: int
    seconds: float
    split: str | None = None

    @property
    def images_per_second(self) -> float:
        return self.written / self.seconds if self.seconds > 0 else 0.0

    def __str__(self) -> str:
        reused = f" ({self.images - self.written} already there)" if self.written < self.images else ""
        where = f"{self.fmt}, split {self.split}" if self.split else self.fmt
        return (
            f"wrote {self.written} of {self.images} images{reused} to {self.out} ({where}) "
            f"in {self.seconds:.1f} s, {self.images_per_second:.1f} images/s; "
            f"boxes kept {self.boxes_kept}, dropped {self.boxes_dropped}"
        )


# -- arguments and settings -------------------------------------------------------------------
def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _transform_id(transform: Any) -> str:
    """Identifies the augmentation, so that a resume cannot silently mix two pipelines."""
    if transform is None:
        return "none"
    try:
        return _sha256(json.dumps(A.to_dict(transform), sort_keys=True).encode())
    except Exception:  # a user's transform albumentations cannot serialise: its type at least
        return f"{type(transform).__module__}.{type(transform).__qualname__}"


def _settings(dataset: Any, plan: ExportPlan, copies: int, total: int) -> dict[str, Any]:
    """Everything the output's bytes depend on (not backend, workers or batch size)."""
    index = dataset.index
    return {
        "version": VERSION,
        "format": plan.fmt,
        "split": plan.split,
        "images": total,
        "copies": copies,
        "quality": plan.quality,
        "seed": int(dataset.seed),
        "source_images": len(index),
        "source_coco_sha256": _sha256(Path(index.path).read_bytes()),
        "transform": _transform_id(dataset.transform),
        "classes": list(index.classes),
    }


def _check_split(fmt: str, split: str | None) -> str | None:
    """The YOLO split an export fills (default train); coco takes none."""
    if fmt == "coco":
        if split is not None:
            raise ExportError(
                f"split is for the yolo format (images/SPLIT of one dataset); a coco export "
                f"holds one split per folder, got split={split!r}"
            )
        return None
    split = "train" if split is None else split
    if split not in YOLO_SPLITS:
        raise ExportError(f"split must be one of {YOLO_SPLITS} for the yolo format, got {split!r}")
    return split


def _check_arguments(
    dataset: Any, copies: int, fmt: str, quality: int, batch_size: int, workers: int, limit: int | None
) -> int:
    """Validate ``export_augmented``'s arguments; return the number of items to export."""
    if not (hasattr(dataset, "sample") and hasattr(dataset, "index")):
        raise TypeError(f"dataset must be a FlirDetection, got {type(dataset).__name__}")
    if fmt not in FORMATS:
        raise ExportError(f"format must be one of {FORMATS}, got {fmt!r}")
    numbers = (
        ("copies", copies, 1, None),
        ("quality", quality, 0, 100),
        ("batch_size", batch_size, 1, None),
        ("workers", workers, 0, None),
        ("limit", limit, 1, None),
    )
    for name, value, low, high in numbers:
        ok = isinstance(value, int) and not isinstance(value, bool) and low <= value <= (high or value)
        if not ok and not (name == "limit" and value is None):
            raise ExportError(f"{name} must be an integer in [{low}, {high or 'inf'}], got {value!r}")
    if len(dataset) == 0:
        raise ExportError(f"{dataset.index.path}: the dataset has no images to export")
    total = min(limit or len(dataset) * copies, len(dataset) * copies)
    stems = Counter(output_stem(dataset.index.file_name(i), 0) for i in range(min(total, len(dataset))))
    clash, count = stems.most_common(1)[0]
    if count > 1:
        raise ExportError(f"{dataset.index.path}: two source files give the output name {clash!r}")
    return total


def _run(writer: BatchWriter, pending: list[int], backend: str, workers: int, progress: bool) -> int:
    """Write the pending batches through ``backend``, in order; return the number of images written."""
    left = sum(len(writer.items(batch)) for batch in pending)
    written = 0
    with tqdm(
        total=writer.total,
        initial=writer.total - left,
        unit="img",
        desc=f"export {writer.plan.split or ''}",
        disable=not progress,
        dynamic_ncols=True,
    ) as bar:
        if not pending:
            return 0
        warn_if_oversubscribed(backend, workers, stacklevel=3)  # blames export_augmented's caller
        runner = open_backend(backend, writer, workers)
        try:
            for result in runner.imap(pending):
                written += result.images
                bar.update(result.images)
        finally:
            runner.close()
    return written


def export_augmented(
    dataset: Any,
    out: str | Path,
    *,
    copies: int = 1,
    fmt: str = "coco",
    split: str | None = None,
    quality: int = 95,
    backend: str = "sequential",
    workers: int = 1,
    batch_size: int = 16,
    resume: bool = False,
    progress: bool = True,
    limit: int | None = None,
) -> ExportSummary:
    """Write ``copies`` augmented copies of every image of ``dataset`` as a new dataset.

    Copy ``k`` of image ``i`` is ``dataset.sample(i, epoch=k)``, so the output depends only on
    the dataset (its files, transform and seed) and these arguments, never on ``backend``,
    ``workers`` or ``batch_size``.

    Args:
        dataset: a ``FlirDetection`` (its transform and seed define the augmentation).
        out: output folder; must be new or empty unless ``resume`` (or, for yolo, a dataset
            this function wrote, which ``split`` joins).
        copies: augmented copies per image.
        fmt: "coco" (``data/*.jpg`` + ``coco.json``, readable by ``FlirDetection(out, split=out)``)
            or "yolo" (``images/SPLIT``, ``labels/SPLIT`` and ``data.yaml`` for Ultralytics).
        split: yolo only: the split this dataset becomes, one of "train" (default), "val",
            "test"; ``data.yaml`` lists every split exported into ``out``. Export val from an
            un-augmented dataset (``transform=None``, ``copies=1``) so validation sees the
            real frames.
        quality: JPEG quality.
        backend, workers, batch_size: how the export runs: a key of ``BACKENDS`` (``workers <= 1``
            writes in the calling thread), and the images per task.
        resume: finish an interrupted export in ``out`` (only missing batches are written).
        progress: show a tqdm progress bar.
        limit: export only the first ``limit`` items (copy 0 of the first images first), e.g.
            to save a few augmented samples for a look.

    Raises:
        ExportError: bad argument, ``out`` not empty (without ``resume``), not writable, or
            holding an export made with other settings or classes.
        OSError: a file could not be written (disk full, ...); the message names it.
    """
    start = time.perf_counter()
    total = _check_arguments(dataset, copies, fmt, quality, batch_size, workers, limit)
    category_ids = tuple(int(c) for c in dataset.index.category_ids)
    plan = ExportPlan(str(Path(out)), fmt, quality, batch_size, category_ids, _check_split(fmt, split))
    settings = _settings(dataset, plan, copies, total)
    done = prepare_output(plan, settings, resume)
    written = 0
    if done is None:
        pending = pending_batches(plan, dataset, total)
        written = _run(BatchWriter(dataset, plan, total), pending, backend, workers, progress)
        done = {"totals": finish_output(plan, settings, dataset.index, -(-total // batch_size))}
    totals = done["totals"]
    return ExportSummary(
        out=plan.out,
        fmt=fmt,
        images=totals["images"],
        written=written,
        boxes_kept=totals["boxes_kept"],
        boxes_dropped=totals["boxes_dropped"],
        seconds=time.perf_counter() - start,
        split=plan.split,
    )


# -- command line -------------------------------------------------------------------------------
def configure_parser(parser: argparse.ArgumentParser) -> None:
    from flirdata.transforms import PRESETS

    add = parser.add_argument
    add_root(parser, "dataset folder (holding images_thermal_train/ ...)", data_alias=True)
    add(
        "--split",
        default="train",
        metavar="SPLITS",
        help="train, val, test (rgb_train, ...), or a folder holding coco.json (default: train); yolo takes "
        "several, comma-separated, into one dataset (images/S, labels/S, data.yaml), and a later call "
        "with another split adds it to the same --out",
    )
    add(
        "--out",
        required=True,
        metavar="OUT",
        help="output folder: new or empty, an interrupted export, or (yolo) a dataset export wrote before",
    )
    add(
        "--copies",
        type=POSITIVE,
        default=1,
        metavar="N",
        help="augmented copies of every train image (default: 1); val and test are written once, "
        "un-augmented (the original frames and boxes), unless --augment-all",
    )
    add("--augment-all", action="store_true", help="augment val and test too, with --preset and --copies")
    add("--format", dest="fmt", choices=FORMATS, default="coco", help="output layout (default: coco)")
    add("--quality", type=QUALITY, default=95, metavar="Q", help="JPEG quality, 0 to 100 (default: 95)")
    add("--seed", type=SEED, default=0, help="augmentation seed (default: 0)")
    add(
        "--preset",
        default=None,
        help=f"augmentation preset ({choices_text(sorted(PRESETS))}) or an albumentations .json/.yaml file "
        "(default: the split's own, thermal or rgb)",
    )
    add("--resume", action="store_true", help="finish an interrupted export into OUT")
    add("--backend", choices=sorted(BACKENDS), default="sequential", help="loader backend (default: sequential)")
    add("--workers", type=WORKERS, default=1, metavar="N", help="loader workers, 1 = no pool (default: 1)")
    add("--batch-size", type=POSITIVE, default=16, metavar="N", help="images per batch (default: 16)")
    add("--limit", type=POSITIVE, default=None, metavar="N", help="export only the first N images (of each split)")
    add_progress(parser)


def _yolo_split(split: str) -> str:
    """The YOLO split a FLIR split fills: ``rgb_val`` -> ``val``."""
    return split.removeprefix("rgb_")


def _parse_splits(args: argparse.Namespace) -> list[str]:
    """``--split`` as a list, checked against the format (several only for yolo)."""
    splits = [s.strip() for s in str(args.split).split(",") if s.strip()]
    if not splits:
        raise ExportError(f"--split: expected one or more comma-separated splits, got {args.split!r}")
    if args.fmt == "coco" and len(splits) > 1:
        raise ExportError(
            f"--split {args.split}: a coco export holds one split per --out; run one export "
            "per split, or use --format yolo"
        )
    if args.fmt == "yolo":
        names = sorted(k for k in SPLITS if _yolo_split(k) in YOLO_SPLITS)
        bad = next((s for s in splits if s not in names), None)
        if bad is not None:
            raise ExportError(f"--split {bad!r}: a yolo export takes split names from {names}")
        if len({_yolo_split(s) for s in splits}) < len(splits):
            raise ExportError(f"--split {args.split}: two splits would fill the same YOLO split")
    if args.copies != 1 and not args.augment_all and all(_yolo_split(s) in EVAL_SPLITS for s in splits):
        raise ExportError(
            f"--copies {args.copies}: val and test are written once, un-augmented; "
            "pass --augment-all to augment them too"
        )
    return splits


def _plain(split: str, args: argparse.Namespace) -> bool:
    return _yolo_split(split) in EVAL_SPLITS and not args.augment_all


def _split_datasets(args: argparse.Namespace, splits: list[str]) -> list[FlirDetection]:
    """One dataset per split, all with the same classes (the ones already in OUT's data.yaml first)."""
    try:

        def build(split: str, classes: Sequence[str] | None = None) -> FlirDetection:
            ds = FlirDetection(args.root, split, seed=args.seed, classes=classes)
            if not _plain(split, args):
                ds.transform = ensure_detection_compose(build_transform(args.preset or MODALITY_PRESETS[ds.modality]))
            return ds

        datasets = [build(split) for split in splits]
    except FlirdataError:
        raise
    except ValueError as exc:  # unknown preset, negative seed: user input, not a bug
        raise ExportError(str(exc)) from None
    recorded = (yolo_record(Path(args.out)) or ([], {}))[0] if args.fmt == "yolo" else []
    classes = list(dict.fromkeys([*recorded, *(c for ds in datasets for c in ds.index.classes)]))
    if any(list(ds.index.classes) != classes for ds in datasets):  # splits use different extra classes
        datasets = [build(split, classes) for split in splits]
    if len({getattr(ds, "modality", None) for ds in datasets}) > 1:
        raise ExportError(f"--split {args.split}: mixes thermal and rgb splits in one dataset")
    return datasets


def _yolo_next_step(out: Path) -> str:
    splits = (yolo_record(out) or ([], {}))[1]
    if "val" not in splits:
        return f"note: {out / 'data.yaml'} has no val split yet; Ultralytics needs one: export --split val into it"
    return f"train with: yolo detect train data={(out / 'data.yaml').resolve()}"


def run_command(args: argparse.Namespace) -> int:
    splits = _parse_splits(args)
    datasets = _split_datasets(args, splits)  # every split is checked before anything is written
    for split, dataset in zip(splits, datasets, strict=True):
        plain = _plain(split, args)
        try:
            summary = export_augmented(
                dataset,
                args.out,
                copies=1 if plain else args.copies,
                fmt=args.fmt,
                split=_yolo_split(split) if args.fmt == "yolo" else None,
                quality=args.quality,
                backend=args.backend,
                workers=args.workers,
                batch_size=args.batch_size,
                resume=args.resume,
                progress=args.progress,
                limit=args.limit,
            )
        except WorkerError as exc:
            raise WorkerError(f"{exc} What was written is kept: run the same command with --resume to finish.") from exc
        print(f"{summary}{'; original frames, un-augmented' if plain else ''}")
    if args.fmt == "yolo":
        print(_yolo_next_step(Path(args.out)))
    return 0
