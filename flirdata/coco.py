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
from pathlib import Path, PureWindowsPath
from typing import Any

import numpy as np

from flirdata.boxes import OFF_FRAME_SLIP, clean_coco_boxes, corrupt_coco_boxes
from flirdata.errors import AnnotationError
from flirdata.files import atomic_file

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

# Ids are packed as int64; the symmetric bound also keeps out -2**63, whose negation overflows.
_ID_MAX = 2**63 - 1
# Width and height are 16-bit fields in a JPEG header, so no real frame is larger.
_SIDE_MAX = 65535


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
    try:
        text = path.read_bytes()
    except FileNotFoundError:
        raise AnnotationError(f"{path}: annotation file not found") from None
    try:
        data = json.loads(text)
    except (ValueError, RecursionError) as exc:  # also an int of over 4300 digits, or nesting too deep
        raise AnnotationError(f"{path}: not valid JSON ({exc})") from None
    return parse_coco(data, str(path), classes)


def _require(cond: bool, path: str, what: str, problem: str = "not a COCO file") -> None:
    if not cond:
        raise AnnotationError(f"{path}: {problem}: {what}")


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _integer(value: Any, low: int = -_ID_MAX, high: int = _ID_MAX) -> bool:
    """An int in ``low..high`` (by default an id that fits int64); never a bool, which JSON
    ``true`` becomes and ``isinstance(True, int)`` accepts."""
    return isinstance(value, int) and not isinstance(value, bool) and low <= value <= high


def parse_coco(data: Any, path: str, classes: Sequence[str] | None = None) -> CocoIndex:
    """Build a ``CocoIndex`` from already-decoded COCO JSON (``path`` is for messages)."""
    _require(isinstance(data, dict), path, f"top level is {type(data).__name__}, expected an object")
    for key in ("images", "annotations", "categories"):
        _require(isinstance(data.get(key), list), path, f"missing list {key!r}")
    cat_names = _parse_categories(data["categories"], path)
    images = _parse_images(data["images"], path)
    anns = _parse_annotations(data["annotations"], path, set(cat_names), images)
    _check_boxes(data["annotations"], path, anns, images)
    used = {cat_names[c] for c in np.unique(anns["category"]).tolist()}
    if classes is None:
        classes = FLIR_CLASSES + tuple(sorted(used - set(FLIR_CLASSES)))
    classes = tuple(classes)
    _require(len(set(classes)) == len(classes), path, f"duplicate class names in {classes}")
    return _pack(path, classes, cat_names, images, anns)


def _parse_categories(categories: list, path: str) -> dict[int, str]:
    names: dict[int, str] = {}
    for k, cat in enumerate(categories):
        ok = isinstance(cat, dict) and _integer(cat.get("id")) and isinstance(cat.get("name"), str)
        _require(ok, path, f"categories[{k}] needs an integer 'id' (|id| < 2**63) and a string 'name', got {cat!r}")
        names[cat["id"]] = cat["name"]
    return names


def _parse_images(images: list, path: str) -> dict[str, Any]:
    ids, names, widths, heights = [], [], [], []
    for k, img in enumerate(images):
        _require(isinstance(img, dict), path, f"images[{k}] is not an object")
        image_id = img.get("id")
        _require(_integer(image_id), path, f"images[{k}] needs an integer 'id' (|id| < 2**63), got {image_id!r}")
        name = _file_name(img.get("file_name"))
        _require(
            name is not None,
            path,
            f"images[{k}] needs a non-empty string 'file_name' (UTF-8, no NUL), got {img.get('file_name')!r}",
        )
        _require(
            _inside_split(img["file_name"]),
            path,
            f"image id {img['id']}: file_name {img['file_name']!r} must "
            "be a relative path inside the split folder (not absolute, no '..' part)",
            problem="image file outside the split folder",
        )
        w, h = img.get("width"), img.get("height")
        ok = _integer(w, 1, _SIDE_MAX) and _integer(h, 1, _SIDE_MAX)
        _require(
            ok,
            path,
            f"image id {img['id']} ({img['file_name']}) needs integer width and height in "
            f"1..{_SIDE_MAX} (the JPEG limit), got width {w!r}, height {h!r}",
        )
        ids.append(img["id"])
        names.append(name)
        widths.append(w)
        heights.append(h)
    image_ids = np.asarray(ids, dtype=np.int64)
    unique, counts = np.unique(image_ids, return_counts=True)
    _require(bool(np.all(counts == 1)), path, f"duplicate image ids {unique[counts > 1][:5].tolist()}")
    return {
        "ids": image_ids,
        "names": np.asarray(names, dtype=bytes) if names else np.zeros(0, dtype="S1"),
        "widths": np.asarray(widths, dtype=np.int32),
        "heights": np.asarray(heights, dtype=np.int32),
        "row": {image_id: row for row, image_id in enumerate(ids)},
    }


def _inside_split(name: str) -> bool:
    """Whether ``file_name`` stays below the split folder: not absolute and no '..' part, read
    with both POSIX and Windows separators, so a coco.json is as safe on either system."""
    parts = name.replace("\\", "/").split("/")
    return not (name.startswith(("/", "\\")) or PureWindowsPath(name).drive or ".." in parts)


def _file_name(value: Any) -> bytes | None:
    """``value`` encoded for the packed name array, or None where it cannot name a file: not a
    string, empty, holding NUL (numpy's bytes arrays strip a trailing one) or a lone surrogate."""
    if not isinstance(value, str) or not value or "\0" in value:
        return None
    try:
        return value.encode("utf-8")
    except UnicodeEncodeError:
        return None


def _parse_annotations(anns: list, path: str, cat_ids: set[int], images: dict) -> dict[str, np.ndarray]:
    n = len(anns)
    rows = np.empty(n, dtype=np.int64)
    cats = np.empty(n, dtype=np.int64)
    ids = np.empty(n, dtype=np.int64)
    crowd = np.zeros(n, dtype=np.uint8)
    boxes = np.empty((n, 4), dtype=np.float64)
    for k, ann in enumerate(anns):
        _require(isinstance(ann, dict), path, f"annotations[{k}] is not an object")
        ann_id = ann.get("id", k)
        for key in ("id", "image_id", "category_id"):
            value = ann.get(key, k)
            _require(
                _integer(value),
                path,
                f"annotations[{k}] (id {ann_id!r}): {key!r} must be an integer with |value| < 2**63, got {value!r}",
            )
        bbox = ann.get("bbox")
        ok = isinstance(bbox, list) and len(bbox) == 4 and all(_number(v) for v in bbox)
        _require(ok, path, f"annotation id {ann_id}: 'bbox' must be 4 numbers [x, y, w, h], got {bbox!r}")
        row = images["row"].get(ann.get("image_id"))
        _require(row is not None, path, f"annotation id {ann_id}: unknown image_id {ann.get('image_id')!r}")
        _require(
            ann.get("category_id") in cat_ids,
            path,
            f"annotation id {ann_id}: category_id {ann.get('category_id')!r} is not declared",
        )
        iscrowd = ann.get("iscrowd", 0)
        _require(
            type(iscrowd) is int and iscrowd in (0, 1),
            path,
            f"annotation id {ann_id}: 'iscrowd' must be 0 or 1, got {iscrowd!r}",
        )
        rows[k], cats[k], ids[k], crowd[k] = row, ann["category_id"], ann_id, iscrowd
        try:
            boxes[k] = bbox
        except OverflowError:  # an int beyond float64 (10**400): as corrupt as inf, reported as such
            boxes[k] = np.inf
    return {"row": rows, "category": cats, "id": ids, "box": boxes, "crowd": crowd}


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
    _require(
        False,
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
    labels = np.asarray([label_of_cat[c] for c in anns["category"].tolist()], dtype=np.int64)
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
