"""The worker side of ``flirdata export``: one batch of augmented copies becomes files and a shard.

``BatchWriter`` is the task function a backend runs (``flirdata.mapping``'s ordered map):
its task is a batch number, it draws the batch's items (``export_item``) and ``write_batch``
encodes each image to JPEG and writes it (with its label file, if the format has them) atomically, then the
batch's COCO records go to a shard in the work folder and only small counts go back. The
shard is written last, so its presence means the whole batch is on disk; it records the size
and digest of every file the batch wrote, which ``--resume`` checks before trusting a file.

Where files go is the format's ``Layout`` (``formats/``), relative to the output folder ``out``;
``ExportPlan`` names them::

    coco                    yolo, split S
    data/NAME.jpg           images/S/NAME.jpg
                            labels/S/NAME.txt
    .flirdata-export/       .flirdata-export/S/     (params.json, shards/; removed when done)
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

import cv2
import numpy as np

from flirdata.errors import add_note
from flirdata.files import write_atomic
from flirdata.tools.export.formats import layout_for
from flirdata.tools.export.layout import ExportError, Layout

__all__ = [
    "DECIMALS",
    "BatchResult",
    "BatchWriter",
    "ExportItem",
    "ExportPlan",
    "export_item",
    "file_record",
    "output_stem",
    "shard_path",
    "write_batch",
]

DECIMALS = 2  # box coordinates in pixels: 0.01 px is far below annotation accuracy


@dataclass(frozen=True)
class ExportPlan:
    """Everything ``write_batch`` needs in a worker (small and picklable), and where files go."""

    out: str
    fmt: str  # a key of formats.LAYOUTS
    quality: int
    batch_size: int
    category_ids: tuple[int, ...]  # label -> the coco.json category id
    split: str | None = None  # the split this export fills, if the format's folder holds several (YOLO)
    keep_ids: bool = False  # images keep their source ids (original frames, one copy); else 1..N

    @property
    def layout(self) -> Layout:
        """The format's layout."""
        return layout_for(self.fmt)

    @property
    def images(self) -> str:
        """The image folder, relative to ``out``."""
        return self.layout.images.format(split=self.split)

    @property
    def labels(self) -> str | None:
        """The label folder, relative to ``out`` (None: the format has no label files)."""
        labels = self.layout.labels
        return None if labels is None else labels.format(split=self.split)

    @property
    def work(self) -> str:
        """The hidden work folder, relative to ``out``: one per split where splits share ``out``."""
        return self.layout.work(self.split)

    def files(self, stem: str) -> list[str]:
        """The files an item of output name ``stem`` writes, relative to ``out``: image first, then label."""
        labels = self.labels
        image = f"{self.images}/{stem}.jpg"
        return [image] if labels is None else [image, f"{labels}/{stem}{self.layout.label_suffix}"]


@dataclass(frozen=True)
class ExportItem:
    """One augmented copy on its way from ``export_item`` to ``write_batch``."""

    index: int  # flat item j
    copy: int
    stem: str  # output file name without suffix
    image: np.ndarray  # uint8 [H, W] grey, or [H, W, 3] in OpenCV's B, G, R order
    xyxy: np.ndarray  # float32 [N, 4]
    labels: np.ndarray  # int64 [N]
    source_id: int
    row_id: int  # the source id of image i, whose place this item takes (source_id unless skipped)
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


def file_record(data: bytes) -> list[Any]:
    """What a shard records of a file it wrote: ``[size in bytes, blake2b-128 of the bytes]``."""
    return [len(data), hashlib.blake2b(data, digest_size=16).hexdigest()]


def _write(plan: ExportPlan, file_name: str, data: bytes, files: dict[str, list[Any]]) -> None:
    """Write ``out/file_name`` atomically and record it in ``files``."""
    write_atomic(Path(plan.out) / file_name, data)
    files[file_name] = file_record(data)


def _as_hwc_bgr(image: np.ndarray) -> np.ndarray:
    """A ``[C, H, W]`` sample image as OpenCV encodes it: ``[H, W]`` grey or ``[H, W, 3]`` B, G, R."""
    if image.shape[0] == 1:
        return image[0]
    return np.ascontiguousarray(image.transpose(1, 2, 0)[:, :, ::-1])


def _optional(target: dict[str, Any], key: str) -> np.ndarray | None:
    value = target.get(key)
    return None if value is None else np.asarray(value)


def export_item(dataset: Any, j: int) -> ExportItem:
    """Flat item ``j`` of an export: copy ``k = j // N`` of image ``i = j % N``, ``dataset.sample(i, epoch=k)``."""
    index = dataset.index
    i, k = j % len(index), j // len(index)
    image, target = dataset.sample(i, epoch=k)
    source_id = int(target["image_id"])
    # on_error="skip" may have replaced image i by another one: record the real source
    row = i if index.image_ids[i] == source_id else int(np.flatnonzero(index.image_ids == source_id)[0])
    return ExportItem(
        index=j,
        copy=k,
        stem=output_stem(index.file_name(i), k),
        image=_as_hwc_bgr(image.numpy()),
        xyxy=target["boxes"].numpy(),
        labels=target["labels"].numpy(),
        source_id=source_id,
        row_id=int(index.image_ids[i]),
        source_file=index.file_name(row),
        source_boxes=int(np.diff(index.box_start[row : row + 2])[0]),
        area=_optional(target, "area"),
        iscrowd=_optional(target, "iscrowd"),
    )


def shard_path(plan: ExportPlan, batch: int) -> Path:
    """The shard of batch ``batch``: its COCO records and box counts (JSON)."""
    return Path(plan.out) / plan.work / "shards" / f"{batch:08d}.json"


# -- one item, one batch ----------------------------------------------------------------------
def _annotations(
    image_id: int,
    corners: np.ndarray,
    size: np.ndarray,
    labels: np.ndarray,
    area: np.ndarray,
    iscrowd: np.ndarray,
    plan: ExportPlan,
) -> list[dict[str, Any]]:
    """COCO annotations with every field pycocotools reads; ``segmentation`` is the box as a
    polygon, as FLIR's own coco.json has it (``annToMask`` and segm evaluation need one)."""
    rows = zip(labels.tolist(), corners.tolist(), size.tolist(), area.tolist(), iscrowd.tolist(), strict=True)
    return [
        {
            "image_id": image_id,
            "category_id": plan.category_ids[label],
            "bbox": [x1, y1, w, h],
            "area": round(a, DECIMALS),
            "iscrowd": int(crowd),
            "segmentation": [[x1, y1, x2, y1, x2, y2, x1, y2]],
        }
        for label, (x1, y1, x2, y2), (w, h), a, crowd in rows
    ]


def _write_item(
    item: ExportItem, plan: ExportPlan, files: dict[str, list[Any]]
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Encode and write one copy (and its label file, all recorded in ``files``); return its COCO records."""
    ok, jpeg = cv2.imencode(".jpg", item.image, [cv2.IMWRITE_JPEG_QUALITY, plan.quality])
    if not ok:
        raise ExportError(f"item {item.index} ({item.source_file}): JPEG encoding failed")
    file_name, *label_files = plan.files(item.stem)
    _write(plan, file_name, jpeg.tobytes(), files)
    # Rounded corners stay inside the image; boxes thinner than the rounding are dropped.
    corners = np.round(np.asarray(item.xyxy, dtype=np.float64).reshape(-1, 4), DECIMALS)
    size = np.round(corners[:, 2:] - corners[:, :2], DECIMALS)
    keep = (size > 0).all(axis=1)
    corners, size, labels = corners[keep], size[keep], item.labels[keep]
    area = size.prod(axis=1) if item.area is None else np.asarray(item.area, dtype=np.float64)[keep]
    iscrowd = np.zeros(len(labels), dtype=np.int64) if item.iscrowd is None else np.asarray(item.iscrowd)[keep]
    height, width = item.image.shape[:2]
    for name in label_files:  # none, or the format's one
        _write(plan, name, plan.layout.label_text(corners, labels, width, height).encode(), files)
    image_id = item.row_id if plan.keep_ids else item.index + 1
    image = {
        "id": image_id,
        "file_name": file_name,
        "width": width,
        "height": height,
        "extra_info": {"source_file_name": item.source_file, "source_image_id": item.source_id, "copy": item.copy},
    }
    return image, _annotations(image_id, corners, size, labels, area, iscrowd, plan)


def write_batch(items: list[ExportItem], plan: ExportPlan) -> BatchResult:
    """Write a batch's images, labels and shard; return its counts.

    The shard is written last, so its presence means the whole batch is on disk.
    """
    images, anns, dropped, files = [], [], 0, {}
    for item in items:
        image, image_anns = _write_item(item, plan, files)
        images.append(image)
        anns.extend(image_anns)
        dropped += max(0, item.source_boxes - len(image_anns))
    batch = items[0].index // plan.batch_size
    shard = {"images": images, "annotations": anns, "kept": len(anns), "dropped": dropped, "files": files}
    write_atomic(shard_path(plan, batch), json.dumps(shard).encode())
    return BatchResult(batch=batch, images=len(items), kept=len(anns), dropped=dropped)


@dataclass(frozen=True)
class BatchWriter:
    """The task function of an export: batch number in, files on disk, ``BatchResult`` out.

    Small and picklable (the dataset, the plan, the item count): process backends send it to
    each worker once. Errors keep their type and message and gain a note naming the item.
    """

    dataset: Any
    plan: ExportPlan
    total: int  # items in the whole export; only the last batch is short

    def items(self, batch: int) -> range:
        """The flat items of ``batch``."""
        size = self.plan.batch_size
        return range(batch * size, min(self.total, (batch + 1) * size))

    def samples(self, batch: int) -> tuple[int, ...]:
        """The dataset indices ``batch`` reads (what the ``ray`` backend's ``ship_images`` reads ahead)."""
        n = len(self.dataset)
        return tuple(j % n for j in self.items(batch))

    def __call__(self, batch: int) -> BatchResult:
        items = []
        for j in self.items(batch):
            try:
                items.append(export_item(self.dataset, j))
            except Exception as exc:
                n = len(self.dataset)
                add_note(exc, f"flirdata export: while drawing item {j} (copy {j // n} of sample {j % n})")
                raise
        return write_batch(items, self.plan)
