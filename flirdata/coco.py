"""COCO files: a FLIR ``coco.json`` parsed into a packed, read-only index, and the COCO writer.

The index holds only numpy arrays (no Python list of dicts per image): DataLoader workers
read it by copy-on-write pages, and a dict per image would be copied into every worker as
soon as reference counts are touched ("copy-on-read"). ``write_coco`` streams a COCO file
record by record (export merges millions of records without holding them) and atomically.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from flirdata.boxes import OFF_FRAME_SLIP, clean_coco_boxes, corrupt_coco_boxes
from flirdata.errors import AnnotationError
from flirdata.files import atomic_file
from flirdata.records import annotation_error, parse_annotations, parse_categories, parse_images

__all__ = ["COCO_LAYOUTS", "FLIR_CLASSES", "CocoIndex", "load_coco", "parse_coco", "write_coco"]

# The classes FLIR ADAS v2 annotates, in the order of their (non-contiguous) FLIR ids. Labels
# are assigned by *name* in this order, so train, val and test agree on them, whatever ids a
# coco.json declares.
FLIR_CLASSES: tuple[str, ...] = (
    "person",
    "bike",
    "car",
    "motor",
    "bus",
    "train",
    "truck",
    "light",
    "hydrant",
    "sign",
    "dog",
    "deer",
    "skateboard",
    "stroller",
    "scooter",
    "other vehicle",
)


@dataclass(frozen=True)
class CocoIndex:
    """Annotations of one split, packed in flat arrays.

    Boxes of image ``k`` are ``boxes[box_start[k]:box_start[k + 1]]`` (COCO ``[x, y, w, h]``,
    already clipped to the frame, degenerate ones removed).
    """

    path: str
    classes: tuple[str, ...]  # label - 1 -> name
    category_ids: np.ndarray  # int64 [K + 1]: label -> the coco.json category id (0 = none)
    image_ids: np.ndarray  # int64 [M]
    file_names: np.ndarray  # bytes (dtype S) [M], relative to the split folder
    widths: np.ndarray  # int32 [M]
    heights: np.ndarray  # int32 [M]
    box_start: np.ndarray  # int64 [M + 1]
    boxes: np.ndarray  # float32 [A, 4]
    labels: np.ndarray  # int64 [A]
    ann_ids: np.ndarray  # int64 [A]
    crowd: np.ndarray  # uint8 [A]: COCO ``iscrowd`` (0 or 1)
    stats: dict[str, int] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.image_ids)

    def file_name(self, k: int) -> str:
        return self.file_names[k].decode("utf-8")

    def annotations(self, k: int) -> tuple[np.ndarray, np.ndarray]:
        """``(boxes [N, 4] coco, labels [N])`` of image ``k`` (views, do not modify)."""
        lo, hi = self.box_start[k], self.box_start[k + 1]
        return self.boxes[lo:hi], self.labels[lo:hi]

    def crowd_flags(self, k: int) -> np.ndarray:
        """``iscrowd [N]`` of image ``k``, aligned with ``annotations(k)`` (a view)."""
        return self.crowd[self.box_start[k] : self.box_start[k + 1]]

    def subset(self, rows: Sequence[int] | np.ndarray) -> CocoIndex:
        """The index of images ``rows`` (in that order, repeats allowed) with their boxes.

        ``rows`` must already be valid non-negative positions; ``path``, ``classes`` and
        ``stats`` stay those of the file.
        """
        rows = np.asarray(rows, dtype=np.int64).reshape(-1)
        starts, ends = self.box_start[rows], self.box_start[rows + 1]
        spans = [np.arange(lo, hi) for lo, hi in zip(starts.tolist(), ends.tolist(), strict=True)]
        boxes = np.concatenate([*spans, np.zeros(0, np.int64)])
        box_start = np.zeros(len(rows) + 1, dtype=np.int64)
        np.cumsum(ends - starts, out=box_start[1:])
        return replace(
            self,
            image_ids=self.image_ids[rows],
            file_names=self.file_names[rows],
            widths=self.widths[rows],
            heights=self.heights[rows],
            box_start=box_start,
            boxes=self.boxes[boxes],
            labels=self.labels[boxes],
            ann_ids=self.ann_ids[boxes],
            crowd=self.crowd[boxes],
        )

    @property
    def nbytes(self) -> int:
        arrays = (
            self.category_ids,
            self.image_ids,
            self.file_names,
            self.widths,
            self.heights,
            self.box_start,
            self.boxes,
            self.labels,
            self.ann_ids,
            self.crowd,
        )
        return sum(a.nbytes for a in arrays)


def load_coco(path: str | Path, classes: Sequence[str] | None = None) -> CocoIndex:
    """Read and validate a ``coco.json``; errors name the file and what is wrong.

    Args:
        path: the ``coco.json`` of one split.
        classes: class names in label order (label 1 is ``classes[0]``). ``None`` takes
            ``FLIR_CLASSES`` followed by any other used category name, sorted. Annotations of
            a class not listed are dropped and counted in ``stats["unknown_category"]``.
    """
    path = Path(path)
    return _parse(_read_json(path), str(path), classes, consume=True)


def _read_json(path: Path) -> Any:
    """The decoded JSON of ``path``; its bytes are freed before the parse builds its objects."""
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise AnnotationError(f"{path}: annotation file not found") from None
    try:
        text = raw.decode(json.detect_encoding(raw), "surrogatepass")  # what json.loads(bytes) does
        del raw  # the text and the objects parsed from it are the peak: the bytes need not join them
        return json.loads(text)
    except (ValueError, RecursionError) as exc:  # also an int of over 4300 digits, or nesting too deep
        raise AnnotationError(f"{path}: not valid JSON ({exc})") from None


def parse_coco(data: Any, path: str, classes: Sequence[str] | None = None) -> CocoIndex:
    """Build a ``CocoIndex`` from already-decoded COCO JSON (``path`` is for messages)."""
    return _parse(data, path, classes)


def _parse(data: Any, path: str, classes: Sequence[str] | None, consume: bool = False) -> CocoIndex:
    """``parse_coco``; ``consume``: ``data`` is the caller's to lose, emptied once checked, so the
    decoded records (most of the memory of a large file) are freed before the index is packed."""
    if not isinstance(data, dict):
        raise annotation_error(path, f"top level is {type(data).__name__}, expected an object")
    for key in ("images", "annotations", "categories"):
        if not isinstance(data.get(key), list):
            raise annotation_error(path, f"missing list {key!r}")
    cat_names = parse_categories(data["categories"], path)
    images = parse_images(data["images"], path)
    anns = parse_annotations(data["annotations"], path, set(cat_names), images)
    _check_boxes(data["annotations"], path, anns, images)
    if consume:
        data.clear()
    used = {cat_names[c] for c in np.unique(anns["category"]).tolist()}
    if classes is None:
        classes = FLIR_CLASSES + tuple(sorted(used - set(FLIR_CLASSES)))
    classes = tuple(classes)
    if len(set(classes)) != len(classes):
        raise annotation_error(path, f"duplicate class names in {classes}")
    return _pack(path, classes, cat_names, images, anns)


def _check_boxes(raw: list, path: str, anns: dict[str, np.ndarray], images: dict) -> None:
    """Fail on the first box no clipping can honestly repair (see ``corrupt_coco_boxes``);
    checked on the packed arrays at once, as a Python test per box would slow the parse."""
    widths, heights = images["widths"][anns["row"]], images["heights"][anns["row"]]
    reasons = corrupt_coco_boxes(anns["box"], widths, heights)
    bad = np.logical_or.reduce(list(reasons.values()))
    if not bad.any():
        return
    k = int(np.argmax(bad))
    reason = next(name for name, mask in reasons.items() if mask[k])
    row, w, h = anns["row"][k], int(widths[k]), int(heights[k])
    image = f"image id {images['ids'][row]} ({images['names'][row].decode('utf-8')}, {w}x{h})"
    mw, mh = OFF_FRAME_SLIP * w, OFF_FRAME_SLIP * h
    raise annotation_error(
        path,
        f"annotation id {anns['id'][k]} on {image}: bbox {raw[k]['bbox']!r} {reason}; expected "
        f"finite numbers, a box reaching into x {-mw:g}..{w + mw:g}, y {-mh:g}..{h + mh:g} and staying within "
        f"x {-w}..{2 * w}, y {-h}..{2 * h}",
        problem="corrupt box",
    )


def _pack(path: str, classes: tuple[str, ...], cat_names: dict[int, str], images: dict, anns: dict) -> CocoIndex:
    label_of_name = {name: label for label, name in enumerate(classes, start=1)}
    label_of_cat = {cid: label_of_name.get(name, 0) for cid, name in cat_names.items()}
    category_ids = np.zeros(len(classes) + 1, dtype=np.int64)
    for cid, label in sorted(label_of_cat.items(), reverse=True):
        if label:
            category_ids[label] = cid  # the lowest id wins where two ids share a name
    cat_ids = np.asarray(sorted(label_of_cat), dtype=np.int64)
    label_of_id = np.asarray([label_of_cat[c] for c in cat_ids.tolist()], dtype=np.int64)
    labels = label_of_id[np.searchsorted(cat_ids, anns["category"])]  # every category is declared
    known = labels > 0
    w = images["widths"][anns["row"]].astype(np.float64)
    h = images["heights"][anns["row"]].astype(np.float64)
    clipped, valid, changed = clean_coco_boxes(anns["box"], w, h)
    keep = valid & known
    order = np.argsort(anns["row"][keep], kind="stable")
    rows = anns["row"][keep][order]
    box_start = np.zeros(len(images["ids"]) + 1, dtype=np.int64)
    np.cumsum(np.bincount(rows, minlength=len(images["ids"])), out=box_start[1:])
    stats = {
        "images": len(images["ids"]),
        "annotations": len(labels),
        "boxes": int(keep.sum()),
        "degenerate_dropped": int((known & ~valid).sum()),
        "clipped": int((changed & known).sum()),
        "unknown_category": int((~known).sum()),
    }
    return CocoIndex(
        path=path,
        classes=classes,
        category_ids=category_ids,
        image_ids=images["ids"],
        file_names=images["names"],
        widths=images["widths"],
        heights=images["heights"],
        box_start=box_start,
        boxes=clipped[keep][order].astype(np.float32),
        labels=labels[keep][order],
        ann_ids=anns["id"][keep][order],
        crowd=anns["crowd"][keep][order],
        stats=stats,
    )


# layout -> (between top-level keys, before the first record, between records, after the records,
# end of file). "compact" is exactly ``json.dumps(coco)``; "lines" puts one record per line, so
# a file of millions of records diffs and greps line by line.
COCO_LAYOUTS: dict[str, tuple[str, str, str, str, str]] = {
    "compact": (", ", "", ", ", "", "}"),
    "lines": (",\n", "\n", ",\n", "\n", "}\n"),
}


def write_coco(
    path: str | Path,
    header: Mapping[str, Any],
    images: Iterable[Mapping[str, Any]],
    annotations: Iterable[Mapping[str, Any]],
    layout: str = "compact",
) -> None:
    """Write a COCO file atomically, streaming ``images`` then ``annotations`` (each consumed once).

    Args:
        path: the file to write; it appears complete or not at all.
        header: the top-level keys before the records (``info``, ``licenses``, ``categories``).
        images, annotations: the records, any iterables (generators keep memory flat).
        layout: a key of ``COCO_LAYOUTS``.
    """
    if layout not in COCO_LAYOUTS:
        raise ValueError(f"unknown COCO layout {layout!r}; expected one of {sorted(COCO_LAYOUTS)}")
    between_keys, first, between, last, end = COCO_LAYOUTS[layout]
    with atomic_file(path, "w") as f:
        f.write("{")
        for key, value in header.items():
            f.write(f"{json.dumps(key)}: {json.dumps(value)}{between_keys}")
        for key, records in (("images", images), ("annotations", annotations)):
            f.write(f"{json.dumps(key)}: [")
            sep = first
            for record in records:
                f.write(sep + json.dumps(record))
                sep = between
            f.write(last + "]" + (between_keys if key == "images" else ""))
        f.write(end)
