"""``flirdata export ROOT``: the run of the exporter's command line, one or several splits per call.

Its arguments are in ``flirdata.commands.export``, which imports this module only to run.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

from flirdata.dataset import SPLITS, FlirDetection
from flirdata.errors import FlirdataError, WorkerError
from flirdata.tools.export import EVAL_SPLITS, WORK_DIR, ExportError, export_augmented
from flirdata.tools.export.output import yolo_record
from flirdata.tools.export.yolo import YOLO_SPLITS
from flirdata.transforms import MODALITY_PRESETS, build_transform, ensure_detection_compose

__all__ = ["run_command"]


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
    """Run ``flirdata export`` on the parsed arguments."""
    splits = _parse_splits(args)
    datasets = _split_datasets(args, splits)  # every split is checked before anything is written
    # What every split shares; each adds its own copies and YOLO split.
    shared = {"fmt": args.fmt, "quality": args.quality, "backend": args.backend, "workers": args.workers}
    shared.update(batch_size=args.batch_size, resume=args.resume, progress=args.progress, limit=args.limit)
    for split, dataset in zip(splits, datasets, strict=True):
        plain = _plain(split, args)
        yolo_split = _yolo_split(split) if args.fmt == "yolo" else None
        try:
            summary = export_augmented(
                dataset, args.out, copies=1 if plain else args.copies, split=yolo_split, **shared
            )
        except WorkerError as exc:
            raise WorkerError(f"{exc} What was written is kept: run the same command with --resume to finish.") from exc
        except KeyboardInterrupt as exc:  # Ctrl-C or SIGTERM (flirdata.errors.Terminated): the same class, a hint
            if not (Path(args.out) / WORK_DIR).is_dir():
                raise
            raise type(exc)("what was written is kept: run the same command with --resume to finish") from None
        print(f"{summary}{'; original frames, un-augmented' if plain else ''}")
    if args.fmt == "yolo":
        print(_yolo_next_step(Path(args.out)))
    return 0
