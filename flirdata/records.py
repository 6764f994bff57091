"""The records of a ``coco.json`` (categories, images, annotations) checked and packed into columns.

A coco.json may hold a million annotations, so each check runs on a whole column at once: one
list comprehension gathers a field, the set of its values' types is its type check (``bool`` is
a type of its own, so JSON ``true`` never passes for an int), numpy checks ranges and
references. Only when a column fails does the per-record walk run, which finds the first bad
record and words its error; nothing is formatted for a check that passes. The walk is also the
reference the columns follow: whatever it accepts, they accept.
"""

from __future__ import annotations

from itertools import chain
from pathlib import PureWindowsPath
from typing import Any

import numpy as np

from flirdata._validate import is_int
from flirdata.errors import AnnotationError

__all__ = ["SIDE_MAX", "annotation_error", "parse_annotations", "parse_categories", "parse_images"]

# Ids are packed as int64; the symmetric bound also keeps out -2**63, whose negation overflows.
_ID_MAX = 2**63 - 1
# Width and height are 16-bit fields in a JPEG header, so no real frame is larger.
SIDE_MAX = 65535
_NOT_COCO = "not a COCO file"


def annotation_error(path: str, what: str, problem: str = _NOT_COCO) -> AnnotationError:
    return AnnotationError(f"{path}: {problem}: {what}")


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _integer(value: Any, low: int = -_ID_MAX, high: int = _ID_MAX) -> bool:
    """An int in ``low..high`` (by default an id that fits int64); never a bool, which JSON
    ``true`` becomes and ``isinstance(True, int)`` accepts."""
    return is_int(value, low, high)


def _int_column(values: list[Any], low: int = -_ID_MAX, high: int = _ID_MAX) -> np.ndarray | None:
    """``values`` as int64 when every one is an int in ``low..high``, else None (let the walk say why)."""
    if set(map(type, values)) - {int}:
        return None
    try:
        column = np.array(values, dtype=np.int64)
    except OverflowError:
        return None
    if len(column) and (column.min() < low or column.max() > high):
        return None
    return column


# -- categories --------------------------------------------------------------------------


def parse_categories(categories: list, path: str) -> dict[int, str]:
    """Category id -> name. Two entries may repeat one id only with one name: two names on an
    id would silently give every box of one the other's label."""
    names: dict[int, str] = {}
    first: dict[int, int] = {}
    for k, cat in enumerate(categories):
        if not (isinstance(cat, dict) and _integer(cat.get("id")) and isinstance(cat.get("name"), str)):
            raise annotation_error(
                path, f"categories[{k}] needs an integer 'id' (|id| < 2**63) and a string 'name', got {cat!r}"
            )
        cid = cat["id"]
        if cid in names and names[cid] != cat["name"]:
            j = first[cid]
            raise annotation_error(
                path,
                f"categories[{j}] {categories[j]!r} and categories[{k}] {cat!r} share id {cid}; "
                "expected one id per category name",
                problem="duplicate category id",
            )
        names[cid] = cat["name"]
        first.setdefault(cid, k)
    return names


# -- images ------------------------------------------------------------------------------


def _inside_split(name: str) -> bool:
    """Whether ``file_name`` stays below the split folder: not absolute and no '..' part, read
    with both POSIX and Windows separators, so a coco.json is as safe on either system."""
    parts = name.replace("\\", "/").split("/")
    drive = ":" in name and PureWindowsPath(name).drive  # a drive ("C:", "1:") needs a colon; parsing is slow
    return not (name.startswith(("/", "\\")) or drive or ".." in parts)


def _file_name(value: Any) -> bytes | None:
    """``value`` encoded for the packed name array, or None where it cannot name a file: not a
    string, empty, holding NUL (numpy's bytes arrays strip a trailing one) or a lone surrogate."""
    if not isinstance(value, str) or not value or "\0" in value:
        return None
    try:
        return value.encode("utf-8")
    except UnicodeEncodeError:
        return None


def _image_columns(images: list) -> tuple[np.ndarray, list[bytes], np.ndarray, np.ndarray] | None:
    """``(ids, encoded names, widths, heights)`` if every entry passes, else None."""
    if set(map(type, images)) - {dict}:
        return None
    ids = _int_column([img.get("id") for img in images])
    widths = _int_column([img.get("width") for img in images], 1, SIDE_MAX)
    heights = _int_column([img.get("height") for img in images], 1, SIDE_MAX)
    names = [img.get("file_name") for img in images]
    if ids is None or widths is None or heights is None or set(map(type, names)) - {str}:
        return None
    encoded = list(map(_file_name, names))
    if None in encoded or not all(map(_inside_split, names)):
        return None
    return ids, encoded, widths, heights


def _check_image(img: Any, k: int, path: str) -> bytes:
    """The walk's check of ``images[k]``: its encoded file name, or the error naming it."""
    if not isinstance(img, dict):
        raise annotation_error(path, f"images[{k}] is not an object")
    if not _integer(img.get("id")):
        raise annotation_error(path, f"images[{k}] needs an integer 'id' (|id| < 2**63), got {img.get('id')!r}")
    name = _file_name(img.get("file_name"))
    if name is None:
        raise annotation_error(
            path, f"images[{k}] needs a non-empty string 'file_name' (UTF-8, no NUL), got {img.get('file_name')!r}"
        )
    if not _inside_split(img["file_name"]):
        raise annotation_error(
            path,
            f"image id {img['id']}: file_name {img['file_name']!r} must "
            "be a relative path inside the split folder (not absolute, no '..' part)",
            problem="image file outside the split folder",
        )
    w, h = img.get("width"), img.get("height")
    if not (_integer(w, 1, SIDE_MAX) and _integer(h, 1, SIDE_MAX)):
        raise annotation_error(
            path,
            f"image id {img['id']} ({img['file_name']}) needs integer width and height in "
            f"1..{SIDE_MAX} (the JPEG limit), got width {w!r}, height {h!r}",
        )
    return name


def parse_images(images: list, path: str) -> dict[str, Any]:
    """``{"ids", "names", "widths", "heights"}`` of the image entries, checked."""
    columns = _image_columns(images)
    if columns is None:  # the walk raises at the first bad entry, or agrees with them all
        names = [_check_image(img, k, path) for k, img in enumerate(images)]
        columns = (
            np.asarray([img["id"] for img in images], dtype=np.int64),
            names,
            np.asarray([img["width"] for img in images], dtype=np.int64),
            np.asarray([img["height"] for img in images], dtype=np.int64),
        )
    ids, names, widths, heights = columns
    unique, counts = np.unique(ids, return_counts=True)
    if not np.all(counts == 1):
        raise annotation_error(path, f"duplicate image ids {unique[counts > 1][:5].tolist()}")
    return {
        "ids": ids,
        "names": np.asarray(names, dtype=bytes) if names else np.zeros(0, dtype="S1"),
        "widths": widths.astype(np.int32),
        "heights": heights.astype(np.int32),
    }


# -- annotations ---------------------------------------------------------------------------


def _rows_of(image_ids: np.ndarray, ids: np.ndarray) -> np.ndarray | None:
    """The row of each of ``image_ids`` among the (unique) ``ids``; None if one is not there."""
    if not len(image_ids):
        return np.zeros(0, dtype=np.int64)
    if not len(ids):
        return None
    order = np.argsort(ids, kind="stable")
    pos = np.minimum(np.searchsorted(ids[order], image_ids), len(ids) - 1)
    if not np.array_equal(ids[order][pos], image_ids):
        return None
    return order[pos]


def _box_column(anns: list) -> np.ndarray | None:
    """``float64 [N, 4]`` when every ``bbox`` is a list of 4 numbers, else None."""
    bboxes = [ann.get("bbox") for ann in anns]
    if set(map(type, bboxes)) - {list} or set(map(len, bboxes)) - {4}:
        return None
    if set(map(type, chain.from_iterable(bboxes))) - {int, float}:
        return None
    try:
        return np.fromiter(chain.from_iterable(bboxes), np.float64, 4 * len(bboxes)).reshape(-1, 4)
    except OverflowError:  # an int beyond float64: the walk marks it as inf
        return None


def _annotation_columns(anns: list, cat_ids: np.ndarray, images: dict) -> dict[str, np.ndarray] | None:
    if set(map(type, anns)) - {dict}:
        return None
    ids = [ann.get("id") for ann in anns]
    if None in ids:  # an annotation without an id (or with a null one): its position is its id
        ids = [ann.get("id", k) for k, ann in enumerate(anns)]
    ids = _int_column(ids)
    image_ids = _int_column([ann.get("image_id") for ann in anns])
    cats = _int_column([ann.get("category_id") for ann in anns])
    crowd = _int_column([ann.get("iscrowd", 0) for ann in anns], 0, 1)
    if ids is None or image_ids is None or cats is None or crowd is None or not np.isin(cats, cat_ids).all():
        return None
    rows = _rows_of(image_ids, images["ids"])
    boxes = _box_column(anns)
    if rows is None or boxes is None:
        return None
    return {"row": rows, "category": cats, "id": ids, "box": boxes, "crowd": crowd.astype(np.uint8)}


def _check_annotation(ann: Any, k: int, path: str, cat_ids: set[int], row_of: dict[int, int]) -> tuple:
    """The walk's check of ``annotations[k]``: ``(row, category, id, iscrowd, box)``, or the error naming it."""
    if not isinstance(ann, dict):
        raise annotation_error(path, f"annotations[{k}] is not an object")
    ann_id = ann.get("id", k)
    for key in ("id", "image_id", "category_id"):
        if not _integer(ann.get(key, k)):
            raise annotation_error(
                path,
                f"annotations[{k}] (id {ann_id!r}): {key!r} must be an integer with |value| < 2**63, "
                f"got {ann.get(key, k)!r}",
            )
    bbox = ann.get("bbox")
    if not (isinstance(bbox, list) and len(bbox) == 4 and all(_number(v) for v in bbox)):
        raise annotation_error(path, f"annotation id {ann_id}: 'bbox' must be 4 numbers [x, y, w, h], got {bbox!r}")
    row = row_of.get(ann.get("image_id"))
    if row is None:
        raise annotation_error(path, f"annotation id {ann_id}: unknown image_id {ann.get('image_id')!r}")
    if ann.get("category_id") not in cat_ids:
        raise annotation_error(path, f"annotation id {ann_id}: category_id {ann.get('category_id')!r} is not declared")
    iscrowd = ann.get("iscrowd", 0)
    if not (type(iscrowd) is int and iscrowd in (0, 1)):
        raise annotation_error(path, f"annotation id {ann_id}: 'iscrowd' must be 0 or 1, got {iscrowd!r}")
    try:
        box = np.asarray(bbox, dtype=np.float64)
    except OverflowError:  # an int beyond float64 (10**400): as corrupt as inf, reported as such
        box = np.full(4, np.inf)
    return row, ann["category_id"], ann_id, iscrowd, box


def parse_annotations(anns: list, path: str, cat_ids: set[int], images: dict) -> dict[str, np.ndarray]:
    """``{"row", "category", "id", "box", "crowd"}`` of the annotations, checked against the
    declared categories and the images' ids (``parse_images``)."""
    columns = _annotation_columns(anns, np.fromiter(cat_ids, np.int64, len(cat_ids)), images)
    if columns is not None:
        return columns
    row_of = dict(zip(images["ids"].tolist(), range(len(images["ids"])), strict=True))
    checked = [_check_annotation(ann, k, path, cat_ids, row_of) for k, ann in enumerate(anns)]
    rows, cats, ids, crowd, boxes = zip(*checked, strict=True) if checked else ((),) * 5
    return {
        "row": np.asarray(rows, dtype=np.int64),
        "category": np.asarray(cats, dtype=np.int64),
        "id": np.asarray(ids, dtype=np.int64),
        "box": np.asarray(boxes, dtype=np.float64).reshape(-1, 4),
        "crowd": np.asarray(crowd, dtype=np.uint8),
    }
