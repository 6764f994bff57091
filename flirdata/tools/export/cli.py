"""``flirdata export ROOT``: the run of the exporter's command line, one or several splits per call.

Its arguments are in ``flirdata.commands.export``, which imports this module only to run.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

from flirdata.dataset import SPLITS, FlirDetection
from flirdata.errors import FlirdataError, ShmCapacityError, WorkerError
from flirdata.tools.export import EVAL_SPLITS, WORK_DIR, ExportError, export_augmented
from flirdata.tools.export.formats import layout_for, several_splits
from flirdata.transforms import MODALITY_PRESETS, build_transform, ensure_detection_compose

__all__ = ["run_command"]


def _base_split(split: str) -> str:
    """A FLIR split whatever its modality, the split it fills where a format holds several: ``rgb_val`` -> ``val``."""
    return split.removeprefix("rgb_")


def _parse_splits(args: argparse.Namespace) -> list[str]:
    """``--split`` as a list, checked against the format (several only where the format's folder holds several)."""
    layout = layout_for(args.fmt)
    splits = [s.strip() for s in str(args.split).split(",") if s.strip()]
    if not splits:
        raise ExportError(f"--split: expected one or more comma-separated splits, got {args.split!r}")
    if not layout.splits and len(splits) > 1:
        raise ExportError(
            f"--split {args.split}: a {layout.name} export holds one split per --out; run one export "
            f"per split, or use --format {' or '.join(several_splits())}"
        )
    if layout.splits:
        names = sorted(k for k in SPLITS if _base_split(k) in layout.splits)
        bad = next((s for s in splits if s not in names), None)
        if bad is not None:
            raise ExportError(f"--split {bad!r}: a {layout.name} export takes split names from {names}")
        if len({_base_split(s) for s in splits}) < len(splits):
            raise ExportError(f"--split {args.split}: two splits would fill the same {layout.name.upper()} split")
    if args.copies != 1 and not args.augment_all and all(_base_split(s) in EVAL_SPLITS for s in splits):
        raise ExportError(
            f"--copies {args.copies}: val and test are written once, un-augmented; "
            "pass --augment-all to augment them too"
        )
    return splits


def _plain(split: str, args: argparse.Namespace) -> bool:
    return _base_split(split) in EVAL_SPLITS and not args.augment_all


def _split_datasets(args: argparse.Namespace, splits: list[str]) -> list[FlirDetection]:
    """One dataset per split, all with the same classes (the ones of the splits already in OUT first)."""
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
    recorded = layout_for(args.fmt).recorded_classes(Path(args.out))
    classes = list(dict.fromkeys([*recorded, *(c for ds in datasets for c in ds.index.classes)]))
    if any(list(ds.index.classes) != classes for ds in datasets):  # splits use different extra classes
        datasets = [build(split, classes) for split in splits]
    if len({getattr(ds, "modality", None) for ds in datasets}) > 1:
        raise ExportError(f"--split {args.split}: mixes thermal and rgb splits in one dataset")
    return datasets


def run_command(args: argparse.Namespace) -> int:
    """Run ``flirdata export`` on the parsed arguments."""
    splits = _parse_splits(args)
    datasets = _split_datasets(args, splits)  # every split is checked before anything is written
    # What every split shares; each adds its own copies and, where the format holds several, split.
    shared = {"fmt": args.fmt, "quality": args.quality, "backend": args.backend, "workers": args.workers}
    shared.update(batch_size=args.batch_size, resume=args.resume, progress=args.progress, limit=args.limit)
    layout = layout_for(args.fmt)
    for split, dataset in zip(splits, datasets, strict=True):
        plain = _plain(split, args)
        target = _base_split(split) if layout.splits else None
        try:
            summary = export_augmented(dataset, args.out, copies=1 if plain else args.copies, split=target, **shared)
        except ShmCapacityError:  # raised before anything is written: --resume would meet it again
            raise
        except WorkerError as exc:
            raise WorkerError(f"{exc} What was written is kept: run the same command with --resume to finish.") from exc
        except KeyboardInterrupt as exc:  # Ctrl-C or SIGTERM (flirdata.errors.Terminated): the same class, a hint
            if not (Path(args.out) / WORK_DIR).is_dir():
                raise
            raise type(exc)("what was written is kept: run the same command with --resume to finish") from None
        print(f"{summary}{'; original frames, un-augmented' if plain else ''}")
    step = layout.next_step(Path(args.out))
    if step:
        print(step)
    return 0
