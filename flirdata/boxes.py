"""Pure numpy box maths: format conversion, clipping, validity, IoU, and which boxes exist.

Box formats are named as albumentations names them: ``coco`` is ``[x, y, w, h]`` and
``pascal_voc`` is ``[x_min, y_min, x_max, y_max]``, both in pixels. No function mutates its
input; every function takes and returns ``float32``/``float64`` arrays of shape ``[N, 4]``.

Which boxes exist is one rule, ``box_exists``: clipped to its frame, a box is at least
``MIN_BOX_SIDE`` pixels wide and high. The annotation index applies it to every box of a
``coco.json`` in the image's own frame, so a dataset without transform, the export and
``flirdata.evaluate``'s ground truth hold the same boxes; augmenting presets apply it again
to the boxes they output (``min_side`` in ``transforms.default_bbox_params``), while a resize
alone (the ``none`` preset) keeps every box: it judged none of them.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import ArrayLike

__all__ = [
    "coco_to_xyxy",
    "xyxy_to_coco",
    "clip_xyxy",
    "valid_mask",
    "clip_valid_xyxy",
    "box_area",
    "box_iou",
    "box_exists",
    "clean_coco_boxes",
    "corrupt_coco_boxes",
    "MIN_BOX_SIDE",
    "OFF_FRAME_SLIP",
    "SIDE_SLACK",
]

# A box narrower or lower than a pixel marks no object a detector could find: FLIR's zero-width
# clicks, and the sliver of a box that reaches a pixel's width past the frame's edge.
MIN_BOX_SIDE = 1.0
# Sides computed from float32 ratios carry noise: albumentations measures a 1-px box at the
# right edge of a 640-px frame (639/640 to 640/640) as 0.99997 px.
SIDE_SLACK = 1e-3

# A box lying off its frame by up to this fraction of the frame's size is an annotator's slip,
# dropped as degenerate: FLIR's zero-width "click without a drag" beside a box dragged past the
# edge sits a few pixels out. Further out, the box was drawn for a frame of another size.
OFF_FRAME_SLIP = 0.1


def _as_boxes(boxes: np.ndarray) -> np.ndarray:
    arr = np.asarray(boxes, dtype=np.float64)
    if arr.size == 0:
        return arr.reshape(0, 4)
    if arr.ndim != 2 or arr.shape[1] != 4:
        raise ValueError(f"boxes must have shape [N, 4], got {arr.shape}")
    return arr


def coco_to_xyxy(boxes: np.ndarray) -> np.ndarray:
    """``[x, y, w, h]`` → ``[x1, y1, x2, y2]``."""
    b = _as_boxes(boxes)
    return np.concatenate([b[:, :2], b[:, :2] + b[:, 2:]], axis=1)


def xyxy_to_coco(boxes: np.ndarray) -> np.ndarray:
    """``[x1, y1, x2, y2]`` → ``[x, y, w, h]``."""
    b = _as_boxes(boxes)
    return np.concatenate([b[:, :2], b[:, 2:] - b[:, :2]], axis=1)


def clip_xyxy(boxes: np.ndarray, width: ArrayLike, height: ArrayLike) -> np.ndarray:
    """Clip corner boxes to ``[0, width] x [0, height]`` (scalars, or one size per box)."""
    b = _as_boxes(boxes)
    w, h = np.asarray(width, dtype=np.float64), np.asarray(height, dtype=np.float64)
    if w.ndim == h.ndim == 0:  # one frame: the per-sample case, without the broadcast
        return np.clip(b, 0.0, np.array([w, h, w, h]))
    limits = np.stack(np.broadcast_arrays(w, h, w, h), axis=-1)
    return np.clip(b, 0.0, limits)


def valid_mask(boxes: np.ndarray, min_size: float = 1e-3) -> np.ndarray:
    """True where a corner box is finite and has positive width and height."""
    b = _as_boxes(boxes)
    finite = np.isfinite(b).all(axis=1)
    if finite.all():  # inf - inf is the only invalid operation below; errstate costs more than the test
        return (b[:, 2] - b[:, 0] > min_size) & (b[:, 3] - b[:, 1] > min_size)
    with np.errstate(invalid="ignore"):
        positive = (b[:, 2] - b[:, 0] > min_size) & (b[:, 3] - b[:, 1] > min_size)
    return finite & positive


def clip_valid_xyxy(boxes: np.ndarray, width: float, height: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(xyxy [M, 4], area [M], keep [N])``: corner boxes clipped to one frame, the ``valid_mask`` ones kept.

    ``clip_xyxy``, ``valid_mask`` and ``box_area`` of the kept boxes, the same values in fewer passes
    (a sample's target is built from it): a kept box has positive sides, so its area needs no clip.
    """
    clipped = clip_xyxy(boxes, width, height)
    if not np.isfinite(clipped).all():
        keep = valid_mask(clipped)
        return clipped[keep], box_area(clipped[keep]), keep
    sides = clipped[:, 2:] - clipped[:, :2]
    keep = (sides[:, 0] > 1e-3) & (sides[:, 1] > 1e-3)  # valid_mask's default min_size
    kept = sides[keep]
    return clipped[keep], kept[:, 0] * kept[:, 1], keep


def box_exists(boxes: np.ndarray) -> np.ndarray:
    """True where a corner box, already clipped to its frame, is an object: finite, and at least
    ``MIN_BOX_SIDE`` pixels wide and high (less ``SIDE_SLACK``)."""
    return valid_mask(boxes, min_size=MIN_BOX_SIDE - SIDE_SLACK)


def box_area(boxes: np.ndarray) -> np.ndarray:
    """Area of corner boxes (zero for inverted boxes)."""
    b = _as_boxes(boxes)
    return np.clip(b[:, 2] - b[:, 0], 0, None) * np.clip(b[:, 3] - b[:, 1], 0, None)


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Pairwise IoU ``[len(a), len(b)]`` of corner boxes."""
    a, b = _as_boxes(a), _as_boxes(b)
    top_left = np.maximum(a[:, None, :2], b[None, :, :2])
    bottom_right = np.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = np.prod(np.clip(bottom_right - top_left, 0, None), axis=2)
    union = box_area(a)[:, None] + box_area(b)[None, :] - inter
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(union > 0, inter / union, 0.0)


def clean_coco_boxes(
    boxes: np.ndarray, width: ArrayLike, height: ArrayLike
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Clip COCO boxes to the image and flag the degenerate ones.

    Real FLIR annotations hold zero-width boxes and boxes that reach past the frame;
    albumentations raises on both, so they are repaired once, when the index is built.

    Returns:
        ``(clipped_coco_boxes, keep, was_clipped)``: the boxes clipped to the frame, a mask of
        the boxes that exist once clipped (``box_exists``), and a mask of the kept boxes
        whose coordinates clipping changed.
    """
    xyxy = coco_to_xyxy(boxes)
    clipped = clip_xyxy(xyxy, width, height)
    keep = box_exists(clipped)
    with np.errstate(invalid="ignore"):
        changed = ~np.all(np.isclose(clipped, xyxy), axis=1)
    return xyxy_to_coco(clipped), keep, changed & keep


def corrupt_coco_boxes(
    boxes: np.ndarray, width: ArrayLike, height: ArrayLike, slip: float = OFF_FRAME_SLIP
) -> dict[str, np.ndarray]:
    """Masks of the COCO boxes that clipping must not repair, keyed by what is wrong.

    A box a little past the frame is an annotator's slip that ``clean_coco_boxes`` clips (or
    drops, when nothing of it is left). One that is not finite, lies wholly outside its frame
    farther than ``slip`` times the frame's size, or reaches past the frame by more than the
    frame's own size is corrupt data: clipping it would invent a box, frame-wide for ``1e300``.
    Inverted boxes (negative ``w`` or ``h``) are judged by the span they cover.
    """
    b = _as_boxes(boxes)
    w, h = np.asarray(width, dtype=np.float64), np.asarray(height, dtype=np.float64)
    with np.errstate(over="ignore", invalid="ignore"):  # inf and 1e308 + 1e308 are the point here
        xyxy = coco_to_xyxy(b)
        lo = np.minimum(xyxy[:, :2], xyxy[:, 2:])
        hi = np.maximum(xyxy[:, :2], xyxy[:, 2:])
    size = np.stack(np.broadcast_arrays(w, h), axis=-1).reshape(-1, 2)
    finite = np.isfinite(b).all(axis=1)
    outside = ((lo > size * (1 + slip)) | (hi < -slip * size)).any(axis=1)
    too_far = ((lo < -size) | (hi > 2 * size)).any(axis=1)
    return {
        "is not finite (NaN, infinite or beyond float64)": ~finite,
        f"lies wholly outside the frame, more than {slip:.0%} of its size away": finite & outside,
        "reaches past the frame by more than the frame's own size": finite & too_far,
    }
