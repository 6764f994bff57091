"""``flirdata export``: K augmented copies of every image, written as a new COCO or YOLO dataset.

Flat item ``j`` of an export is copy ``k = j // N`` of image ``i = j % N`` (``N`` images), drawn
as ``ds.sample(i, epoch=k)``: the first ``N`` items are copy 0 of every image, so ``limit=n``
saves exactly what ``ds.sample(i, epoch=0)`` gives for the first ``n`` images.

Items go through ``make_loader`` in batches; the batch's collate function (``write_batch``)
runs in the workers, encodes each image to JPEG, writes it and its labels under a temporary
name and renames them, then writes the batch's annotations as a shard in the hidden work
folder. A batch is done when its shard exists, so ``resume=True`` only redoes batches
without one. The final ``coco.json`` (or ``data.yaml``) is merged from the shards in batch
order, streamed (memory stays bounded), and renamed into place last; the work folder is then
removed. Nothing depends on which worker wrote what, so every file has the same bytes for
any backend, worker count and interruption history.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import hashlib
import json
import os
import shutil
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import IO, Any

import albumentations as A
import cv2
import numpy as np
import yaml
from tqdm import tqdm

from flirdata.backends import BACKENDS
from flirdata.dataset import FlirDetection
from flirdata.errors import FlirdataError
from flirdata.loader import make_loader
from flirdata.transforms import build_transform
from flirdata.yolo import data_yaml_text, yolo_label_text

__all__ = ["FORMATS", "WORK_DIR", "BatchResult", "CopyView", "ExportError", "ExportItem", "ExportPlan",
           "ExportSummary", "configure_parser", "export_augmented", "output_stem", "run_command",
           "write_atomic", "write_batch"]  # fmt: skip

FORMATS = ("coco", "yolo")
WORK_DIR = ".flirdata-export"  # hidden: tools that glob OUT never see half-finished state
_FINAL = {"coco": "coco.json", "yolo": "data.yaml"}
_IMAGES = {"coco": "data", "yolo": "images"}
_DECIMALS = 2  # box coordinates in pixels: 0.01 px is far below annotation accuracy
_VERSION = 1


class ExportError(FlirdataError, ValueError):
    """An export cannot start or continue: bad argument, non-empty or foreign output folder."""


@dataclass(frozen=True)
class ExportSummary:
    """What an export produced.

    ``written`` counts this call's images (the others were there from an interrupted run);
    ``images`` and the box counts cover the whole export.
    """

    out: str
    fmt: str
    images: int
    written: int
    boxes_kept: int
    boxes_dropped: int
    seconds: float

    @property
    def images_per_second(self) -> float:
        return self.written / self.seconds if self.seconds > 0 else 0.0

    def __str__(self) -> str:
        reused = f" ({self.images - self.written} already there)" if self.written < self.images else ""
        return (
            f"wrote {self.written} of {self.images} images{reused} to {self.out} ({self.fmt}) "
            f"in {self.seconds:.1f} s, {self.images_per_second:.1f} images/s; "
            f"boxes kept {self.boxes_kept}, dropped {self.boxes_dropped}"
        )


@dataclass(frozen=True)
class ExportPlan:
    """Everything ``write_batch`` needs in a worker (small and picklable)."""

    out: str
    fmt: str
    quality: int
    batch_size: int
    category_ids: tuple[int, ...]  # label -> the coco.json category id


@dataclass(frozen=True)
class ExportItem:
    """One augmented copy on its way from ``CopyView`` to ``write_batch``."""

    index: int  # flat item j
    copy: int
    stem: str  # output file name without suffix
    image: np.ndarray  # uint8 [H, W]
    xyxy: np.ndarray  # float32 [N, 4]
    labels: np.ndarray  # int64 [N]
    source_id: int
    source_file: str
    source_boxes: int  # boxes before augmentation, to count the dropped ones


@dataclass(frozen=True)
class BatchResult:
    """The small result a worker sends back: counts only, never pixels."""

    batch: int
    images: int
    kept: int
    dropped: int


def output_stem(file_name: str, copy: int) -> str:
    """Output name of copy ``copy`` of a source file: ``data/a/b.jpg`` -> ``a__b_c{copy}``.

    Sub-folders stay in the name (joined by ``__``) so two sources never share an output.
    """
    parts = PurePosixPath(file_name.replace("\\", "/")).with_suffix("").parts
    if len(parts) > 1 and parts[0] == "data":
        parts = parts[1:]
    return f"{'__'.join(parts)}_c{copy}"


@dataclass(frozen=True)
class CopyView:
    """The dataset seen as the export's flat items ``j``, restricted to the pending batches.

    Position ``p`` is item ``batches[p // batch_size] * batch_size + p % batch_size``: the
    loader's own batches of ``batch_size`` consecutive positions are then exactly the export's
    pending batches (only the export's last batch can be short, and it stays last).
    """

    dataset: Any
    total: int
    batch_size: int
    batches: tuple[int, ...]

    def __len__(self) -> int:
        if not self.batches:
            return 0
        last_size = min(self.batch_size, self.total - self.batches[-1] * self.batch_size)
        return (len(self.batches) - 1) * self.batch_size + last_size

    def __getitem__(self, p: int) -> ExportItem:
        j = self.batches[p // self.batch_size] * self.batch_size + p % self.batch_size
        index = self.dataset.index
        i, k = j % len(index), j // len(index)
        image, target = self.dataset.sample(i, epoch=k)
        source_id = int(target["image_id"])
        # on_error="skip" may have replaced image i by another one: record the real source
        row = i if index.image_ids[i] == source_id else int(np.flatnonzero(index.image_ids == source_id)[0])
        return ExportItem(
            index=j, copy=k, stem=output_stem(index.file_name(i), k), image=image.numpy()[0],
            xyxy=target["boxes"].numpy(), labels=target["labels"].numpy(), source_id=source_id,
            source_file=index.file_name(row), source_boxes=int(np.diff(index.box_start[row : row + 2])[0]),
        )  # fmt: skip


# -- files: temporary name, then rename -------------------------------------------------------
@contextlib.contextmanager
def _atomic_file(path: Path, mode: str = "wb") -> Iterator[IO[Any]]:
    """A file that appears at ``path`` complete or not at all (kill -9 leaves a hidden ``.tmp``).

    No fsync: this protects against a killed process, not a power cut, and an fsync per
    image would cost more than the encoding. Write errors (disk full) name the final path.
    """
    tmp = path.with_name(f".{path.name}.{os.getpid()}-{threading.get_ident()}.tmp")
    try:
        with open(tmp, mode, encoding=None if "b" in mode else "utf-8") as f:
            yield f
        os.replace(tmp, path)
    except BaseException as exc:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        if isinstance(exc, OSError) and exc.errno is not None:
            raise OSError(exc.errno, exc.strerror or str(exc), str(path)) from exc
        raise


def write_atomic(path: str | Path, data: bytes) -> None:
    """Write ``data`` to ``path`` under a temporary name and rename it into place."""
    with _atomic_file(Path(path)) as f:
        f.write(data)


def _shard_path(out: str | Path, batch: int) -> Path:
    return Path(out) / WORK_DIR / "shards" / f"{batch:08d}.json"


# -- the worker side --------------------------------------------------------------------------
def _write_item(item: ExportItem, plan: ExportPlan) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Encode and write one copy (and its YOLO labels); return its COCO image and annotations."""
    ok, jpeg = cv2.imencode(".jpg", item.image, [cv2.IMWRITE_JPEG_QUALITY, plan.quality])
    if not ok:
        raise ExportError(f"item {item.index} ({item.source_file}): JPEG encoding failed")
    file_name = f"{_IMAGES[plan.fmt]}/{item.stem}.jpg"
    write_atomic(Path(plan.out) / file_name, jpeg.tobytes())
    # Rounded corners stay inside the image; boxes thinner than the rounding are dropped.
    corners = np.round(np.asarray(item.xyxy, dtype=np.float64).reshape(-1, 4), _DECIMALS)
    size = np.round(corners[:, 2:] - corners[:, :2], _DECIMALS)
    keep = (size > 0).all(axis=1)
    corners, size, labels = corners[keep], size[keep], item.labels[keep]
    height, width = item.image.shape
    if plan.fmt == "yolo":
        text = yolo_label_text(corners, labels - 1, width, height)
        write_atomic(Path(plan.out) / "labels" / f"{item.stem}.txt", text.encode())
    image_id = item.index + 1
    image = {"id": image_id, "file_name": file_name, "width": width, "height": height,
             "extra_info": {"source_file_name": item.source_file, "source_image_id": item.source_id,
                            "copy": item.copy}}  # fmt: skip
    boxes = zip(labels.tolist(), corners[:, :2].tolist(), size.tolist(), strict=True)
    anns = [{"image_id": image_id, "category_id": plan.category_ids[label], "bbox": [x, y, w, h],
             "area": round(w * h, _DECIMALS), "iscrowd": 0} for label, (x, y), (w, h) in boxes]  # fmt: skip
    return image, anns


def write_batch(items: list[ExportItem], plan: ExportPlan) -> BatchResult:
    """Collate function of an export: write a batch's images, labels and shard; return counts.

    Runs in a worker, as ``functools.partial(write_batch, plan=plan)``. The shard is written
    last, so its presence means the whole batch is on disk.
    """
    images, anns, dropped = [], [], 0
    for item in items:
        image, image_anns = _write_item(item, plan)
        images.append(image)
        anns.extend(image_anns)
        dropped += max(0, item.source_boxes - len(image_anns))
    batch = items[0].index // plan.batch_size
    shard = {"images": images, "annotations": anns, "kept": len(anns), "dropped": dropped}
    write_atomic(_shard_path(plan.out, batch), json.dumps(shard).encode())
    return BatchResult(batch=batch, images=len(items), kept=len(anns), dropped=dropped)


# -- the main-process side --------------------------------------------------------------------
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


def _settings(dataset: Any, fmt: str, copies: int, quality: int, total: int) -> dict[str, Any]:
    """Everything the output's bytes depend on (not backend, workers or batch size)."""
    index = dataset.index
    return {"version": _VERSION, "format": fmt, "images": total, "copies": copies, "quality": quality,
            "seed": int(dataset.seed), "source_images": len(index),
            "source_coco_sha256": _sha256(Path(index.path).read_bytes()),
            "transform": _transform_id(dataset.transform), "classes": list(index.classes)}  # fmt: skip


def _check_arguments(dataset: Any, copies: int, fmt: str, quality: int, batch_size: int, workers: int,
                     limit: int | None) -> int:  # fmt: skip
    """Validate ``export_augmented``'s arguments; return the number of items to export."""
    if not (hasattr(dataset, "sample") and hasattr(dataset, "index")):
        raise TypeError(f"dataset must be a FlirDetection, got {type(dataset).__name__}")
    if fmt not in FORMATS:
        raise ExportError(f"format must be one of {FORMATS}, got {fmt!r}")
    numbers = (("copies", copies, 1, None), ("quality", quality, 0, 100), ("batch_size", batch_size, 1, None),
               ("workers", workers, 0, None), ("limit", limit, 1, None))  # fmt: skip
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


def _check_same(out: Path, recorded: dict[str, Any], expected: dict[str, Any]) -> None:
    keys = sorted(expected.keys() | recorded.keys())
    diff = [f"{k} {recorded.get(k)!r}, now {expected.get(k)!r}"
            for k in keys if recorded.get(k) != expected.get(k)]  # fmt: skip
    if diff:
        raise ExportError(f"{out}: holds an export made with other settings ({'; '.join(diff)}); "
                          "rerun with the same settings or choose an empty folder")  # fmt: skip


def _read_final(out: Path, fmt: str) -> dict[str, Any] | None:
    """The metadata a finished export recorded in its ``coco.json``/``data.yaml``, if any."""
    try:
        text = (out / _FINAL[fmt]).read_text(encoding="utf-8")
        meta = (json.loads(text)["info"] if fmt == "coco" else yaml.safe_load(text))["flirdata_export"]
    except (OSError, ValueError, KeyError, TypeError, yaml.YAMLError):
        return None
    return meta if isinstance(meta, dict) and isinstance(meta.get("settings"), dict) else None


def _create(out: Path, fmt: str, work_settings: dict[str, Any]) -> None:
    """Create the folders and record the settings; a killed run's ``.tmp`` files are deleted."""
    try:
        folders = [out, out / WORK_DIR, out / WORK_DIR / "shards", out / _IMAGES[fmt]]
        for folder in folders + [out / "labels"] * (fmt == "yolo"):
            folder.mkdir(parents=True, exist_ok=True)
            for entry in os.scandir(folder):
                if entry.name.startswith(".") and entry.name.endswith(".tmp"):
                    os.unlink(entry.path)
        write_atomic(out / WORK_DIR / "params.json", json.dumps(work_settings, indent=1).encode())
    except OSError as exc:
        raise ExportError(f"{out}: cannot write the output folder ({exc.strerror or exc})") from None


def _prepare(out: Path, fmt: str, settings: dict[str, Any], batch_size: int, resume: bool) -> dict | None:
    """Make ``out`` ready to write; return the recorded metadata if it already holds this export."""
    if out.exists() and not out.is_dir():
        raise ExportError(f"{out}: exists and is not a folder")
    work_settings = {**settings, "batch_size": batch_size}
    params = out / WORK_DIR / "params.json"
    if out.exists() and any(out.iterdir()):
        if not resume:
            raise ExportError(f"{out}: output folder is not empty; pass --resume to finish an interrupted "
                              "export there, or choose an empty folder")  # fmt: skip
        if not params.is_file():
            recorded = _read_final(out, fmt)
            if recorded is None:
                raise ExportError(f"{out}: not empty and holds no interrupted flirdata export "
                                  f"({WORK_DIR}/params.json not found); choose an empty folder")  # fmt: skip
            _check_same(out, recorded["settings"], settings)
            shutil.rmtree(out / WORK_DIR, ignore_errors=True)  # a kill in _finish's clean-up left it
            return recorded
        _check_same(out, json.loads(params.read_text(encoding="utf-8")), work_settings)
    _create(out, fmt, work_settings)
    return None


def _pending_batches(out: Path, dataset: Any, fmt: str, total: int, batch_size: int) -> list[int]:
    """Batches without a shard, or whose shard exists but a file was deleted since."""
    n, pending = len(dataset), []
    for batch in range(-(-total // batch_size)):
        if not _shard_path(out, batch).is_file():
            pending.append(batch)
            continue
        stems = [output_stem(dataset.index.file_name(j % n), j // n)
                 for j in range(batch * batch_size, min(total, (batch + 1) * batch_size))]  # fmt: skip
        files = [out / _IMAGES[fmt] / f"{s}.jpg" for s in stems]
        files += [out / "labels" / f"{s}.txt" for s in stems] if fmt == "yolo" else []
        if not all(f.is_file() for f in files):
            pending.append(batch)
    return pending


def _run(view: CopyView, plan: ExportPlan, backend: str, workers: int, progress: bool) -> int:
    """Write the pending batches through ``make_loader``; return the number of images written."""
    written = 0
    with tqdm(total=view.total, initial=view.total - len(view), unit="img", desc="export",
              disable=not progress, dynamic_ncols=True) as bar:  # fmt: skip
        if len(view) == 0:
            return 0
        collate = functools.partial(write_batch, plan=plan)
        with make_loader(view, backend, workers, plan.batch_size, collate_fn=collate) as loader:
            for result in loader:
                written += result.images
                bar.update(result.images)
    return written


def _iter_shards(out: Path, batches: int) -> Iterator[dict[str, Any]]:
    for batch in range(batches):
        path = _shard_path(out, batch)
        try:
            yield json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise ExportError(f"{path}: shard of batch {batch} is missing; rerun with --resume") from None


def _write_records(f: IO[str], records: Iterator[dict[str, Any]]) -> None:
    sep = "\n"
    for record in records:
        f.write(sep + json.dumps(record))
        sep = ",\n"
    f.write("\n")


def _write_coco(out: Path, meta: dict[str, Any], index: Any, batches: int) -> None:
    """Stream ``coco.json`` from the shards (two passes), numbering annotations in order."""
    labels = [label for label in range(1, len(index.classes) + 1) if index.category_ids[label] > 0]
    categories = sorted(({"id": int(index.category_ids[label]), "name": index.classes[label - 1]}
                         for label in labels), key=lambda c: c["id"])  # fmt: skip
    info = {"description": "augmented copies written by flirdata export", "flirdata_export": meta}
    with _atomic_file(out / "coco.json", "w") as f:
        f.write(f'{{"info": {json.dumps(info)},\n"licenses": [],\n"categories": {json.dumps(categories)},\n')
        f.write('"images": [')
        _write_records(f, (image for shard in _iter_shards(out, batches) for image in shard["images"]))
        f.write('],\n"annotations": [')
        anns = (ann for shard in _iter_shards(out, batches) for ann in shard["annotations"])
        _write_records(f, ({"id": n, **ann} for n, ann in enumerate(anns, start=1)))
        f.write("]}\n")


def _finish(out: Path, fmt: str, settings: dict[str, Any], index: Any, batches: int) -> dict[str, int]:
    """Write the final file from the shards (last, atomically), then drop the work folder."""
    totals = {"images": 0, "boxes_kept": 0, "boxes_dropped": 0}
    for shard in _iter_shards(out, batches):
        totals["images"] += len(shard["images"])
        totals["boxes_kept"] += shard["kept"]
        totals["boxes_dropped"] += shard["dropped"]
    meta = {"settings": settings, "totals": totals}
    if fmt == "coco":
        _write_coco(out, meta, index, batches)
    else:
        write_atomic(out / "data.yaml", data_yaml_text(out, index.classes, meta).encode())
    (out / WORK_DIR / "params.json").unlink()  # first: a kill while deleting leaves "complete"
    shutil.rmtree(out / WORK_DIR)
    return totals


def export_augmented(
    dataset: Any,
    out: str | Path,
    *,
    copies: int = 1,
    fmt: str = "coco",
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
        out: output folder; must be new or empty unless ``resume``.
        copies: augmented copies per image.
        fmt: "coco" (``data/*.jpg`` + ``coco.json``, readable by ``FlirDetection(out, split=out)``)
            or "yolo" (``images/``, ``labels/``, ``data.yaml`` for Ultralytics).
        quality: JPEG quality.
        backend, workers, batch_size: how ``make_loader`` runs the export.
        resume: finish an interrupted export in ``out`` (only missing batches are written).
        progress: show a tqdm progress bar.
        limit: export only the first ``limit`` items (copy 0 of the first images first), e.g.
            to save a few augmented samples for a look.

    Raises:
        ExportError: bad argument, ``out`` not empty (without ``resume``), not writable, or
            holding an export made with other settings.
        OSError: a file could not be written (disk full, ...); the message names it.
    """
    start = time.perf_counter()
    out = Path(out)
    total = _check_arguments(dataset, copies, fmt, quality, batch_size, workers, limit)
    settings = _settings(dataset, fmt, copies, quality, total)
    done = _prepare(out, fmt, settings, batch_size, resume)
    written = 0
    if done is None:
        category_ids = tuple(int(c) for c in dataset.index.category_ids)
        plan = ExportPlan(str(out), fmt, quality, batch_size, category_ids)
        pending = _pending_batches(out, dataset, fmt, total, batch_size)
        written = _run(CopyView(dataset, total, batch_size, tuple(pending)), plan, backend, workers, progress)
        done = {"totals": _finish(out, fmt, settings, dataset.index, -(-total // batch_size))}
    totals = done["totals"]
    return ExportSummary(out=str(out), fmt=fmt, images=totals["images"], written=written,
                         boxes_kept=totals["boxes_kept"], boxes_dropped=totals["boxes_dropped"],
                         seconds=time.perf_counter() - start)  # fmt: skip


# -- command line -------------------------------------------------------------------------------
def configure_parser(parser: argparse.ArgumentParser) -> None:
    add = parser.add_argument
    add("--data", required=True, metavar="ROOT", help="dataset folder (holding images_thermal_train/ ...)")
    add("--split", default="train", help="train, val, test, or a folder holding coco.json (default: train)")
    add("--out", required=True, metavar="OUT", help="output folder: new or empty, or an interrupted export")
    add("--copies", type=int, default=1, help="augmented copies of every image (default: 1)")
    add("--format", dest="fmt", choices=FORMATS, default="coco", help="output layout (default: coco)")
    add("--quality", type=int, default=95, help="JPEG quality (default: 95)")
    add("--seed", type=int, default=0, help="augmentation seed (default: 0)")
    add("--preset", default="thermal", help="augmentation preset or pipeline file (default: thermal)")
    add("--resume", action="store_true", help="finish an interrupted export into OUT")
    add("--backend", choices=sorted(BACKENDS), default="sequential", help="loader backend")
    add("--workers", type=int, default=1, help="loader workers (default: 1)")
    add("--batch-size", type=int, default=16, help="images per batch (default: 16)")
    add("--limit", type=int, default=None, help="export only the first N images")
    add("--no-progress", dest="progress", action="store_false", help="no progress bar")


def run_command(args: argparse.Namespace) -> int:
    try:
        dataset = FlirDetection(args.data, args.split, transform=build_transform(args.preset), seed=args.seed)
    except FlirdataError:
        raise
    except ValueError as exc:  # unknown preset, negative seed: user input, not a bug
        raise ExportError(str(exc)) from None
    summary = export_augmented(
        dataset, args.out, copies=args.copies, fmt=args.fmt, quality=args.quality, backend=args.backend,
        workers=args.workers, batch_size=args.batch_size, resume=args.resume, progress=args.progress,
        limit=args.limit,
    )  # fmt: skip
    print(summary)
    return 0
