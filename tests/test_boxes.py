"""Property tests of the pure box maths."""

from __future__ import annotations

import numpy as np
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from flirdata.boxes import (
    OFF_FRAME_SLIP,
    box_area,
    box_iou,
    clean_coco_boxes,
    clip_valid_xyxy,
    clip_xyxy,
    coco_to_xyxy,
    corrupt_coco_boxes,
    valid_mask,
    xyxy_to_coco,
)

coords = st.floats(min_value=-2000, max_value=2000, allow_nan=False, width=32)
box_arrays = st.integers(0, 12).flatmap(lambda n: arrays(np.float64, (n, 4), elements=coords))


any_coords = st.floats(min_value=-2000, max_value=2000, width=32) | st.sampled_from([np.inf, -np.inf, np.nan, -0.0])
any_boxes = st.integers(0, 12).flatmap(lambda n: arrays(np.float64, (n, 4), elements=any_coords))


@given(any_boxes, st.integers(1, 1000), st.integers(1, 1000))
def test_clip_valid_xyxy_is_clip_then_valid_mask_then_area(boxes: np.ndarray, w: int, h: int) -> None:
    """A sample's targets come from it: the same bytes as the three steps it stands for."""
    xyxy, area, keep = clip_valid_xyxy(boxes, w, h)
    clipped = clip_xyxy(boxes, w, h)
    want = valid_mask(clipped)
    assert np.array_equal(keep, want)
    assert xyxy.tobytes() == clipped[want].tobytes() and area.tobytes() == box_area(clipped[want]).tobytes()


@given(box_arrays)
def test_coco_xyxy_round_trip(boxes: np.ndarray) -> None:
    np.testing.assert_allclose(xyxy_to_coco(coco_to_xyxy(boxes)), boxes, atol=1e-6)


@given(box_arrays, st.integers(1, 1000), st.integers(1, 1000))
def test_clean_keeps_only_positive_boxes_inside_the_frame(boxes: np.ndarray, w: int, h: int) -> None:
    before = boxes.copy()
    cleaned, keep, clipped = clean_coco_boxes(boxes, w, h)
    np.testing.assert_array_equal(boxes, before)  # inputs are never mutated
    kept = coco_to_xyxy(cleaned[keep])
    assert np.all(kept >= 0) and np.all(kept[:, [0, 2]] <= w) and np.all(kept[:, [1, 3]] <= h)
    assert np.all(cleaned[keep, 2:] > 0)
    assert not np.any(clipped & ~keep)


def test_clean_counts_degenerate_and_clipped() -> None:
    boxes = np.array([[10, 10, 20, 20], [5, 5, 0, 10], [630, 500, 30, 30], [700, 10, 5, 5]], float)
    cleaned, keep, clipped = clean_coco_boxes(boxes, 640, 512)
    assert keep.tolist() == [True, False, True, False]
    assert clipped.tolist() == [False, False, True, False]
    np.testing.assert_allclose(cleaned[2], [630, 500, 10, 12])


def test_clip_accepts_one_size_per_box() -> None:
    boxes = np.array([[-5, -5, 50, 50], [-5, -5, 50, 50]], float)
    out = clip_xyxy(boxes, np.array([40, 60]), np.array([30, 70]))
    np.testing.assert_allclose(out, [[0, 0, 40, 30], [0, 0, 50, 50]])


@given(box_arrays)
def test_iou_is_symmetric_and_bounded(boxes: np.ndarray) -> None:
    xyxy = clip_xyxy(coco_to_xyxy(np.abs(boxes)), 4000, 4000)
    iou = box_iou(xyxy, xyxy)
    np.testing.assert_allclose(iou, iou.T, atol=1e-9)
    assert np.all((iou >= 0) & (iou <= 1 + 1e-9))
    valid = valid_mask(xyxy)
    np.testing.assert_allclose(np.diag(iou)[valid], 1.0)


def test_corrupt_masks_name_what_is_wrong_per_frame() -> None:
    boxes = np.array([[10, 10, 20, 20], [710, 10, 5, 5], [0, 0, 1e300, 1], [np.inf, 0, 1, 1], [900, 10, 5, 5]])
    masks = corrupt_coco_boxes(boxes, np.array([640, 640, 640, 640, 1000]), 512)
    assert [mask.nonzero()[0].tolist() for mask in masks.values()] == [[3], [1], [2]]
    assert "not finite" in list(masks)[0] and "outside" in list(masks)[1] and "frame's own size" in list(masks)[2]
    # unchecked, clipping turns the 1e300 box into a frame-wide one: why readers check first
    np.testing.assert_allclose(clean_coco_boxes(boxes[2:3], 640, 512)[0], [[0, 0, 640, 1]])


@given(box_arrays, st.integers(1, 1000), st.integers(1, 1000))
def test_corrupt_exactly_when_far_off_the_frame_or_past_its_own_size(boxes: np.ndarray, w: int, h: int) -> None:
    bad = np.logical_or.reduce(list(corrupt_coco_boxes(boxes, w, h).values()))
    xyxy = coco_to_xyxy(boxes)
    xs, ys = np.sort(xyxy[:, [0, 2]], axis=1), np.sort(xyxy[:, [1, 3]], axis=1)
    mx, my = OFF_FRAME_SLIP * w, OFF_FRAME_SLIP * h
    touches = (xs[:, 1] >= -mx) & (xs[:, 0] <= w + mx) & (ys[:, 1] >= -my) & (ys[:, 0] <= h + my)
    near = (xs[:, 0] >= -w) & (xs[:, 1] <= 2 * w) & (ys[:, 0] >= -h) & (ys[:, 1] <= 2 * h)
    np.testing.assert_array_equal(bad, ~(touches & near))
    inside = np.abs(boxes) % [w, h, 1, 1]  # a corner in the frame, less than 1 px across
    assert not np.logical_or.reduce(list(corrupt_coco_boxes(inside, w, h).values())).any()
