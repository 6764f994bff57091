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

An export holds ``out``'s lock (``LOCK_FILE``, see ``flirdata.files.folder_lock``) from before it
looks at the folder until it returns, so a second export into the same folder is refused at
once; on ``ray`` the driver holds it while the actors write. Resuming checks every finished file
against its shard's record (size and digest) and writes again the batches of those that changed.

What a format writes (its folders, label files, final file) is its ``Layout``, one module per
format in ``formats/``, named in ``formats.LAYOUTS``. A YOLO export fills one split (``images/S``,
``labels/S``) of a dataset that may hold others: each split has its own work folder and resumes on
its own, and finishing a split rewrites ``data.yaml`` to list every split present. A COCO export
holds one split per folder. The command line runs in ``cli.py``;
its arguments are in ``flirdata.commands.export``.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import time
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import albumentations as A
from tqdm import tqdm

from flirdata._validate import check_int
from flirdata.backends.registry import check_backend_options, open_backend, warn_if_oversubscribed
from flirdata.cliargs import QUALITY
from flirdata.files import NAME_MAX, FolderBusyError, folder_lock, write_atomic
from flirdata.names import EXPORT_FORMATS
from flirdata.tools.export.batch import (
    BatchResult,
    BatchWriter,
    ExportItem,
    ExportPlan,
    export_item,
    output_stem,
    write_batch,
)
from flirdata.tools.export.formats import LAYOUTS, layout_for, several_splits
from flirdata.tools.export.layout import LOCK_FILE, VERSION, WORK_DIR, ExportError, Layout
from flirdata.tools.export.output import finish_output, pending_batches, prepare_output

# The exporter's API first, then the worker-side names it re-exports from ``batch``.
__all__ = [
    "export_augmented",
    "ExportSummary",
    "ExportError",
    "EVAL_SPLITS",
    "FORMATS",
    "QUALITY",
    "BatchWriter",
    "write_batch",
    "ExportPlan",
    "ExportItem",
    "BatchResult",
    "export_item",
    "output_stem",
    "WORK_DIR",
    "write_atomic",
]

FORMATS = EXPORT_FORMATS
EVAL_SPLITS = ("val", "test")  # the CLI writes these once, un-augmented, unless --augment-all


@dataclass(frozen=True)
class ExportSummary:
    """What an export produced.

    ``written`` counts this call's images (the others were there from an interrupted run);
    ``images`` and the box counts cover the whole export (of ``split``, for YOLO); ``damaged``
    counts the finished files of an interrupted run found changed (truncated, rewritten, a
    symlink) and written again.
    """

    out: str
    fmt: str
    images: int
    written: int
    boxes_kept: int
    boxes_dropped: int
    seconds: float
    split: str | None = None
    damaged: int = 0

    @property
    def images_per_second(self) -> float:
        return self.written / self.seconds if self.seconds > 0 else 0.0

    def __str__(self) -> str:
        reused = f" ({self.images - self.written} already there)" if self.written < self.images else ""
        where = f"{self.fmt}, split {self.split}" if self.split else self.fmt
        damaged = (
            f"; {self.damaged} finished files had changed since they were written (truncated, rewritten "
            "or replaced) and were written again"
            if self.damaged
            else ""
        )
        return (
            f"wrote {self.written} of {self.images} images{reused} to {self.out} ({where}) "
            f"in {self.seconds:.1f} s, {self.images_per_second:.1f} images/s; "
            f"boxes kept {self.boxes_kept}, dropped {self.boxes_dropped}{damaged}"
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


def _check_split(layout: Layout, split: str | None) -> str | None:
    """The split an export fills where the format's folder holds several (default: the first); else None."""
    if not layout.splits:
        if split is not None:
            several = [
                f"the {f} format ({LAYOUTS[f].images.format(split='SPLIT')} of one dataset)" for f in several_splits()
            ]
            raise ExportError(
                f"split is for {' or '.join(several) or 'a format of several splits'}; a {layout.name} export "
                f"holds one split per folder, got split={split!r}"
            )
        return None
    split = layout.splits[0] if split is None else split
    if split not in layout.splits:
        raise ExportError(f"split must be one of {layout.splits} for the {layout.name} format, got {split!r}")
    return split


def _check_arguments(
    dataset: Any, copies: int, fmt: str, quality: int, batch_size: int, workers: int, limit: int | None
) -> int:
    """Validate ``export_augmented``'s arguments; return the number of items to export."""
    if not (hasattr(dataset, "sample") and hasattr(dataset, "index")):
        raise TypeError(f"dataset must be a FlirDetection, got {type(dataset).__name__}")
    layout_for(fmt)  # an unknown format is an ExportError naming the known ones
    numbers = (
        ("copies", copies, 1, None),
        ("quality", quality, 0, 100),
        ("batch_size", batch_size, 1, None),
        ("workers", workers, 0, None),
        ("limit", limit, 1, None),
    )
    for name, value, low, high in numbers:
        if not (name == "limit" and value is None):
            check_int(name, value, low, high, error=ExportError, expected=f"an integer in [{low}, {high or 'inf'}]")
    if len(dataset) == 0:
        raise ExportError(f"{dataset.index.path}: the dataset has no images to export")
    total = min(limit or len(dataset) * copies, len(dataset) * copies)
    _check_output_names(dataset, total)
    return total


def _check_output_names(dataset: Any, total: int) -> None:
    """Refuse, before anything is written, two sources with one output name or a name too long to write."""
    n = len(dataset)
    files = [dataset.index.file_name(i) for i in range(min(total, n))]
    clash, count = Counter(output_stem(f, 0) for f in files).most_common(1)[0]
    if count > 1:
        raise ExportError(f"{dataset.index.path}: two source files give the output name {clash!r}")
    # Image i's last copy is (total - 1 - i) // n: the one with the longest name.
    names = ((f, f"{output_stem(f, (total - 1 - i) // n)}.jpg") for i, f in enumerate(files))
    source, name = max(names, key=lambda pair: len(pair[1].encode()))
    if len(name.encode()) > NAME_MAX:
        raise ExportError(
            f"{dataset.index.path}: source file {source!r} gives the output name {name!r} of "
            f"{len(name.encode())} bytes, over the {NAME_MAX} a file name may have; shorten its name or folders"
        )


def _keeps_ids(dataset: Any, total: int) -> bool:
    """Whether the images keep their source ids: an export of the original frames, one copy of
    each (what ``flirdata export`` writes for val and test), is the same split re-encoded, so
    predictions tagged with the source's ``image_id`` match it. Augmented copies are other images:
    they are numbered 1..N in item order. A subset listing an image twice is numbered too."""
    if dataset.transform is not None or total > len(dataset):
        return False
    ids = dataset.index.image_ids[:total]
    return len(set(ids.tolist())) == len(ids)


def _run(
    writer: BatchWriter, pending: list[int], backend: str, workers: int, progress: bool, options: dict[str, Any]
) -> int:
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
        warn_if_oversubscribed(backend, workers, stacklevel=3, backend_options=options)  # blames the caller
        runner = open_backend(backend, writer, workers, backend_options=options)
        try:
            for result in runner.imap(pending):
                written += result.images
                bar.update(result.images)
        finally:
            runner.close()
    return written


def _lock(stack: contextlib.ExitStack, out: Path) -> None:
    """Take ``out``'s export lock for the life of ``stack``; another export holding it is an ``ExportError``."""
    if out.exists() and not out.is_dir():
        raise ExportError(f"{out}: exists and is not a folder")
    try:
        stack.enter_context(folder_lock(out, LOCK_FILE))
    except FolderBusyError:
        raise ExportError(
            f"{out}: another flirdata export is writing into this folder (it holds {LOCK_FILE}); "
            "wait for it to finish or stop it, or choose another folder"
        ) from None
    except OSError as exc:
        raise ExportError(f"{out}: cannot write the output folder ({exc.strerror or exc})") from None


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
    backend_options: Mapping[str, Any] | None = None,
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
            ``coco.json`` keeps the source's category ids; its images keep their source ids where
            the export is the original frames (``transform=None``, one copy), else are numbered
            1..N in item order; each image's ``extra_info`` names its source file, id and copy.
        split: yolo only: the split this dataset becomes, one of "train" (default), "val",
            "test"; ``data.yaml`` lists every split exported into ``out``. Export val from an
            un-augmented dataset (``transform=None``, ``copies=1``) so validation sees the
            real frames.
        quality: JPEG quality.
        backend, workers, batch_size: how the export runs: a key of ``BACKENDS`` (``workers <= 1``
            writes in the calling thread), and the images per task.
        resume: finish an interrupted export in ``out``: only the batches missing, or whose files
            changed since they were written (size and digest are checked), are written.
        progress: show a tqdm progress bar.
        limit: export only the first ``limit`` items (copy 0 of the first images first), e.g.
            to save a few augmented samples for a look.
        backend_options: options of ``backend`` (see ``make_loader``). On "ray", the actors
            write the files: ``out`` must be the same shared folder on every node.

    Raises:
        ExportError: bad argument, ``out`` not empty (without ``resume``), not writable, or
            holding an export made with other settings or classes.
            Also: another export is writing into ``out`` (it holds the folder's lock), or a
            source file name gives an output name over 255 bytes (both before anything is written).
        OSError: a file could not be written (disk full, ...); the message names it.
    """
    start = time.perf_counter()
    total = _check_arguments(dataset, copies, fmt, quality, batch_size, workers, limit)
    options = dict(backend_options or {})
    check_backend_options(backend, options)
    category_ids = tuple(int(c) for c in dataset.index.category_ids)
    split = _check_split(layout_for(fmt), split)
    plan = ExportPlan(str(Path(out)), fmt, quality, batch_size, category_ids, split, _keeps_ids(dataset, total))
    settings = _settings(dataset, plan, copies, total)
    written = damaged = 0
    with contextlib.ExitStack() as stack:
        _lock(stack, Path(plan.out))
        done = prepare_output(plan, settings, resume)
        if done is None:
            pending = pending_batches(plan, dataset, total)
            damaged = pending.damaged
            written = _run(BatchWriter(dataset, plan, total), pending.batches, backend, workers, progress, options)
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
        damaged=damaged,
    )
