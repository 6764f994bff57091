"""The worker side of ``flirdata export``: one batch of augmented copies becomes files and a shard.

A worker receives ``ExportItem``s from ``CopyView`` and runs ``write_batch`` as the loader's
collate function: each image is encoded to JPEG and written (with its YOLO label file) under
a temporary name and renamed, then the batch's COCO records go to a shard in the work folder.
The shard is written last, so its presence means the whole batch is on disk.

Where files go is ``ExportPlan``'s business, relative to the output folder ``out``::

    coco                    yolo, split S
    data/NAME.jpg           images/S/NAME.jpg
                            labels/S/NAME.txt
    .flirdata-export/       .flirdata-export/S/     (params.json, shards/; removed when done)
"""

from __future__ import annotations

import contextlib
import json
import os
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import IO, Any

import cv2
import numpy as np

from flirdata.errors import FlirdataError
from flirdata.tools.export.yolo import yolo_label_text

__all__ = ["DECIMALS", "WORK_DIR", "BatchResult", "CopyView", "ExportError", "ExportItem", "ExportPlan",
           "atomic_file", "output_stem", "shard_path", "write_atomic", "write_batch"]  # fmt: skip

WORK_DIR = ".flirdata-export"  # hidden: tools that glob OUT never see half-finished state
DECIMALS = 2  # box coordinates in pixels: 0.01 px is far below annotation accuracy


class ExportError(FlirdataError, ValueError):
    """An export cannot start or continue: bad argument, non-empty or foreign output folder."""


@dataclass(frozen=True)
class ExportPlan:
    """Everything ``write_batch`` needs in a worker (small and picklable), and where files go."""

    out: str
    fmt: str
    quality: int
    batch_size: int
    category_ids: tuple[int, ...]  # label -> the coco.json category id
    split: str | None = None  # the YOLO split this export fills; None for coco

    @property
    def images(self) -> str:
        """The image folder, relative to ``out``."""
        return "data" if self.fmt == "coco" else f"images/{self.split}"

    @property
    def labels(self) -> str | None:
        """The YOLO label folder, relative to ``out`` (None for coco)."""
        return f"labels/{self.split}" if self.fmt == "yolo" else None

    @property
    def work(self) -> str:
        """The hidden work folder, relative to ``out``: one per split, so splits resume apart."""
        return f"{WORK_DIR}/{self.split}" if self.fmt == "yolo" else WORK_DIR


@dataclass(frozen=True)
class ExportItem:
    """One augmented copy on its way from ``CopyView`` to ``write_batch``."""

    index: int  # flat item j
    copy: int
    stem: str  # output file name without suffix
    image: np.ndarray  # uint8 [H, W] grey, or [H, W, 3] in OpenCV's B, G, R order
    xyxy: np.ndarray  # float32 [N, 4]
    labels: np.ndarray  # int64 [N]
    source_id: int
    source_file: str
    source_boxes: int  # boxes before augmentation, to count the dropped ones
    area: np.ndarray | None = None  # float [N], the dataset's target["area"] if it has one
    iscrowd: np.ndarray | None = None  # int [N], the dataset's target["iscrowd"] if it has one


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


def _as_hwc_bgr(image: np.ndarray) -> np.ndarray:
    """A ``[C, H, W]`` sample image as OpenCV encodes it: ``[H, W]`` grey or ``[H, W, 3]`` B, G, R."""
    if image.shape[0] == 1:
        return image[0]
    return np.ascontiguousarray(image.transpose(1, 2, 0)[:, :, ::-1])


def _optional(target: dict[str, Any], key: str) -> np.ndarray | None:
    value = target.get(key)
    return None if value is None else np.asarray(value)


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
            index=j, copy=k, stem=output_stem(index.file_name(i), k), image=_as_hwc_bgr(image.numpy()),
            xyxy=target["boxes"].numpy(), labels=target["labels"].numpy(), source_id=source_id,
            source_file=index.file_name(row), source_boxes=int(np.diff(index.box_start[row : row + 2])[0]),
            area=_optional(target, "area"), iscrowd=_optional(target, "iscrowd"),
        )  # fmt: skip


# -- files: temporary name, then rename -------------------------------------------------------
@contextlib.contextmanager
def atomic_file(path: Path, mode: str = "wb") -> Iterator[IO[Any]]:
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
    with atomic_file(Path(path)) as f:
        f.write(data)


def shard_path(plan: ExportPlan, batch: int) -> Path:
    """The shard of batch ``batch``: its COCO records and box counts (JSON)."""
    return Path(plan.out) / plan.work / "shards" / f"{batch:08d}.json"


# -- one item, one batch ----------------------------------------------------------------------
def _annotations(image_id: int, corners: np.ndarray, size: np.ndarray, labels: np.ndarray, area: np.ndarray,
                 iscrowd: np.ndarray, plan: ExportPlan) -> list[dict[str, Any]]:  # fmt: skip
    """COCO annotations with every field pycocotools reads; ``segmentation`` is the box as a
    polygon, as FLIR's own coco.json has it (``annToMask`` and segm evaluation need one)."""
    rows = zip(labels.tolist(), corners.tolist(), size.tolist(), area.tolist(), iscrowd.tolist(), strict=True)
    return [{"image_id": image_id, "category_id": plan.category_ids[label], "bbox": [x1, y1, w, h],
             "area": round(a, DECIMALS), "iscrowd": int(crowd), "segmentation": [[x1, y1, x2, y1, x2, y2, x1, y2]]}
            for label, (x1, y1, x2, y2), (w, h), a, crowd in rows]  # fmt: skip


def _write_item(item: ExportItem, plan: ExportPlan) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Encode and write one copy (and its YOLO labels); return its COCO image and annotations."""
    ok, jpeg = cv2.imencode(".jpg", item.image, [cv2.IMWRITE_JPEG_QUALITY, plan.quality])
    if not ok:
        raise ExportError(f"item {item.index} ({item.source_file}): JPEG encoding failed")
    file_name = f"{plan.images}/{item.stem}.jpg"
    write_atomic(Path(plan.out) / file_name, jpeg.tobytes())
    # Rounded corners stay inside the image; boxes thinner than the rounding are dropped.
    corners = np.round(np.asarray(item.xyxy, dtype=np.float64).reshape(-1, 4), DECIMALS)
    size = np.round(corners[:, 2:] - corners[:, :2], DECIMALS)
    keep = (size > 0).all(axis=1)
    corners, size, labels = corners[keep], size[keep], item.labels[keep]
    area = size.prod(axis=1) if item.area is None else np.asarray(item.area, dtype=np.float64)[keep]
    iscrowd = np.zeros(len(labels), dtype=np.int64) if item.iscrowd is None else np.asarray(item.iscrowd)[keep]
    height, width = item.image.shape[:2]
    if plan.labels is not None:
        text = yolo_label_text(corners, labels - 1, width, height)
        write_atomic(Path(plan.out) / plan.labels / f"{item.stem}.txt", text.encode())
    image_id = item.index + 1
    image = {"id": image_id, "file_name": file_name, "width": width, "height": height,
             "extra_info": {"source_file_name": item.source_file, "source_image_id": item.source_id,
                            "copy": item.copy}}  # fmt: skip
    return image, _annotations(image_id, corners, size, labels, area, iscrowd, plan)


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
    write_atomic(shard_path(plan, batch), json.dumps(shard).encode())
    return BatchResult(batch=batch, images=len(items), kept=len(anns), dropped=dropped)
