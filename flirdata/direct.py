"""The direct path of the fused presets: their transforms applied to an image and a box array, no ``Compose``.

A pipeline built only of ``flirdata.fused`` transforms (``FusedAffine``, ``IntensityLUT``,
``NoiseBank``) and a ``OneOf`` of image-only transforms, under a ``Compose`` with COCO boxes (the
``thermal`` preset is one), is run by ``DirectPlan`` instead of ``Compose.__call__``: the same draws
from the same generators in the same order, the same pixel calls, and the box arithmetic of
albumentations 2.0.8's bbox processor (its own functions, in its order and dtypes) without its
per-call plumbing (data dicts, label encoders, shape checks). The samples are byte-identical to the
``Compose`` path's (a test holds both paths to it) and the ``Compose`` stays what users, files and
``A.save`` see; any other pipeline runs through its ``Compose``.

Reseeding costs next to nothing: one ``generate_state`` of the sample's ``SeedSequence`` gives every
node its block as ``reseed_transform`` does, but a node's generator is seeded only when the node
draws (the blur's children and the ``OneOf``'s numpy generator in one sample of five).

    image, boxes ──FusedAffine──> warp + boxes moved by its matrix ──IntensityLUT, OneOf, NoiseBank──> image
"""

from __future__ import annotations

import time
from typing import Any

import albumentations as A
import cv2
import numpy as np
from albumentations.augmentations.blur import functional as fblur

from flirdata.fused import _CORNERS, _IDENTITY, FusedAffine, IntensityLUT, NoiseBank, _like
from flirdata.seeding import iter_random_nodes, seed_node

__all__ = ["DirectPlan", "direct_plan"]

# Our own steps: their apply is called directly, and they draw only from ``py_random``.
_OWN_STEPS = (FusedAffine, IntensityLUT, NoiseBank)


def _is_image_only_one_of(step: Any) -> bool:
    return type(step) is A.OneOf and all(isinstance(t, A.ImageOnlyTransform) for t in step.transforms)


def direct_plan(pipeline: Any) -> DirectPlan | None:
    """The direct plan of ``pipeline``, or None when it must run through its ``Compose``.

    The plan runs ``pipeline``'s own transforms and generators: build it from the copy the
    calling thread owns.
    """
    if type(pipeline) is not A.Compose or pipeline.p != 1.0 or set(pipeline.processors) != {"bboxes"}:
        return None
    params = pipeline.processors["bboxes"].params
    if params.format != "coco" or list(params.label_fields or ()) != ["labels"] or pipeline.check_each_transform:
        return None
    if not params.clip or not params.filter_invalid_bboxes or pipeline.additional_targets:
        return None
    steps = list(pipeline.transforms)
    if sum(type(s) is FusedAffine for s in steps) > 1:  # the one step that moves boxes
        return None
    if not all(type(s) in _OWN_STEPS or _is_image_only_one_of(s) for s in steps):
        return None
    return DirectPlan(pipeline)


class DirectPlan:
    """``pipeline(image=..., bboxes=..., labels=rows)``'s image, COCO boxes and rows, without ``Compose``."""

    def __init__(self, pipeline: A.Compose) -> None:
        self.pipeline = pipeline
        self.params = pipeline.processors["bboxes"].params
        self._nodes = list(iter_random_nodes(pipeline))
        self._slot = {id(node): k for k, node in enumerate(self._nodes)}

    def __call__(
        self,
        image: np.ndarray,
        boxes: np.ndarray,
        seed_sequence: np.random.SeedSequence,
        clock: list[float] | None = None,
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``(image, coco boxes float64 [M, 4], rows int64 [M])``: the kept boxes and their input rows.

        ``clock`` (``flirdata bench --profile``): ``clock[k]`` gains the seconds of step ``k``.
        """
        blocks = seed_sequence.generate_state(6 * len(self._nodes), dtype=np.uint64).reshape(-1, 6).tolist()
        seeded: set[int] = set()

        def seeded_node(node: Any, numpy: bool = True) -> Any:
            """``node`` seeded from its block once per sample: the generators it draws from, when it draws."""
            slot = self._slot[id(node)]
            if slot not in seeded:
                seed_node(node, blocks[slot], numpy=numpy)
                seeded.add(slot)
            elif numpy:  # seeded before without its numpy generator, which it draws from now
                seed_node(node, blocks[slot], python=False)
            return node

        data = self._boxes_in(boxes, image.shape)
        for k, step in enumerate(self.pipeline.transforms):
            start = time.perf_counter() if clock is not None else 0.0
            if type(step) is A.OneOf:
                image = self._one_of(seeded_node(step, numpy=False), image, seeded_node)
            elif seeded_node(step, numpy=False).should_apply():  # our own steps draw from py_random only
                params: dict[str, Any] = {"shape": image.shape}
                params.update(step.get_params_dependent_on_data(params, {}))
                if type(step) is FusedAffine and data is not None:
                    data = _affine_boxes(data, params)
                image = step.apply(image, **params)
            if clock is not None:
                clock[k] += time.perf_counter() - start
        return (image, *self._boxes_out(data, image.shape))

    @staticmethod
    def _one_of(step: A.OneOf, image: np.ndarray, seeded_node: Any) -> np.ndarray:
        """``OneOf.__call__``: its coin, then its numpy choice of a child run with ``force_apply``.

        The blurs of ``_BLURS`` draw from their Python generator only; any other child is called.
        """
        if not step.transforms_ps or not step.py_random.random() < step.p:
            return image
        idx = seeded_node(step).random_generator.choice(len(step.transforms), p=step.transforms_ps)
        blur = _BLURS.get(type(step.transforms[idx]))
        child = seeded_node(step.transforms[idx], numpy=blur is None)
        return blur(child, image) if blur is not None else child(force_apply=True, image=image)["image"]

    def _boxes_in(self, boxes: np.ndarray, shape: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray] | None:
        """The bbox processor's preprocess: ``(corners float64 [N, 4], rows [N])``, normalised, clipped, valid."""
        if len(boxes) == 0:
            return None
        height, width = shape[:2]
        coco = boxes.astype(np.float32, copy=False)
        if not (coco[:, 2:] > 0).all():  # albumentations refuses these anyway: its own steps, for its errors
            return _split(_filter(_columns_in(coco, width, height, rows=True), width, height))
        corners = _columns_in(coco, width, height, rows=False)
        # _filter with no limits on boxes of positive size clipped to [0, 1]: its clip and its
        # round trip to pixels and back change nothing (a float32 times an int is exact in
        # float64), every visibility is >= 0, and what it drops is the boxes of no area.
        sides = (corners[:, 2:] - corners[:, :2]) * np.array([width, height], dtype=np.float32)
        keep = sides[:, 0] * sides[:, 1] >= _EPS  # the area, in float32 as there
        return corners[keep].astype(np.float64), np.flatnonzero(keep)

    def _boxes_out(
        self, data: tuple[np.ndarray, np.ndarray] | None, shape: tuple[int, ...]
    ) -> tuple[np.ndarray, np.ndarray]:
        """The bbox processor's postprocess: filtered by the pipeline's rule, back to COCO pixels."""
        if data is None or not len(data[0]):
            return np.zeros((0, 4)), np.zeros(0, np.int64)
        height, width = shape[:2]
        p = self.params
        boxes, rows = data
        limits = (p.min_area, p.min_visibility, p.min_width, p.min_height, p.max_accept_ratio)
        corners, mask = _filter_corners(boxes, width, height, *limits)  # = convert_bboxes_from_albumentations
        corners = corners[mask]
        coco = np.empty(corners.shape)
        coco[:, :2] = corners[:, :2]
        np.subtract(corners[:, 2:], corners[:, :2], out=coco[:, 2:])
        return coco, rows[mask].astype(np.int64, copy=False)


_EPS = 1e-7  # albumentations 2.0.8's filter_bboxes epsilon


def _columns_in(coco: np.ndarray, width: int, height: int, rows: bool) -> np.ndarray:
    """COCO pixels -> corners normalised in float64, stored in float32, clipped to [0, 1], as
    ``convert_bboxes_to_albumentations`` makes them; ``rows`` adds the row number as a fifth column."""
    data = np.empty((len(coco), 5 if rows else 4), np.float32)
    data[:, :2] = coco[:, :2]
    np.add(coco[:, :2], coco[:, 2:4], out=data[:, 2:4])  # coco -> corners, in float32
    if rows:
        data[:, 4] = np.arange(len(coco))
    np.divide(data[:, :4], _scale(width, height), out=data[:, :4])  # in float64, stored in float32
    np.clip(data[:, :4], 0, 1, out=data[:, :4])
    return data


def _split(data: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    return np.ascontiguousarray(data[:, :4]), data[:, 4].astype(np.int64)


def _affine_boxes(data: tuple[np.ndarray, np.ndarray], params: dict[str, Any]) -> tuple[np.ndarray, np.ndarray]:
    """``FusedAffine.apply_to_bboxes`` on ``(boxes, rows)``: the same arithmetic, the rows alongside."""
    boxes, rows = data
    if not len(boxes):
        return data
    height, width = params["shape"][:2]
    out_h, out_w = params["output_shape"]
    pixels = boxes * _scale(width, height)
    moved = _move(pixels, params["matrix"])
    inside = ((moved[:, 2:] > 0) & (moved[:, :2] < np.array([width, height]))).all(axis=1)
    moved = _move(moved[inside], params["letterbox"])
    moved /= _scale(out_w, out_h)
    return moved, rows[inside]


def _move(boxes: np.ndarray, matrix: np.ndarray) -> np.ndarray:
    """``fused.move_boxes`` of corner boxes ``[N, 4]``, its matmul and its min and max, in one new array.

    By the identity (``FusedAffine`` passes ``_IDENTITY`` itself for no move), ``x * 1 + y * 0 + 0``
    is ``x + 0.0`` whatever the matmul's order.
    """
    if matrix is _IDENTITY:
        return boxes + 0.0  # -0.0 becomes 0.0, as through the matmul
    moved = boxes[:, _CORNERS] @ matrix[:2, :2].T + matrix[:2, 2]
    return np.concatenate([moved.min(axis=1), moved.max(axis=1)], axis=1)


# -- the blurs, as their ``__call__(force_apply=True, image=...)`` without its plumbing -------------
def _gaussian_blur(step: A.GaussianBlur, image: np.ndarray) -> np.ndarray:
    """``A.GaussianBlur``: its draws (sigma, then size) and its kernel; ``separable_convolve`` is this call."""
    sigma = step.py_random.uniform(*step.sigma_limit)
    size = step.py_random.randint(*step.blur_limit)
    kernel = fblur.create_gaussian_kernel_1d(sigma, size)
    return _like(cv2.sepFilter2D(image, ddepth=-1, kernelX=kernel, kernelY=kernel), image)


def _motion_blur(step: A.MotionBlur, image: np.ndarray) -> np.ndarray:
    """``A.MotionBlur``: its draws (size, angle, direction, the shift) and its kernel; ``convolve`` is this call."""
    size = fblur.sample_odd_from_range(step.py_random, step.blur_limit[0], step.blur_limit[1])
    angle = step.py_random.uniform(*step.angle_range)
    direction = step.py_random.uniform(*step.direction_range)
    kernel = _motion_kernel(size, angle, direction, step.allow_shifted, step.py_random)
    kernel = kernel.astype(np.float32) / np.sum(kernel)
    return _like(cv2.filter2D(image, ddepth=-1, kernel=kernel), image)


def _motion_kernel(size: int, angle: float, direction: float, allow_shifted: bool, rng: Any) -> np.ndarray:
    """albumentations 2.0.8's ``create_motion_kernel``, step for step, without its ``np.unique`` of the
    points (setting a cell to 1 twice sets it to 1): the same kernel, the same draws."""
    direction = np.clip(direction, -1.0, 1.0)
    kernel = np.zeros((size, size), dtype=np.float32)
    center = line = size // 2
    angle_rad = np.deg2rad(angle)
    dx, dy = np.cos(angle_rad), np.sin(angle_rad)
    t_start, t_end = float(-line), float(line)
    if direction < 0:
        t_end = line * (1 - abs(direction))
    elif direction > 0:
        t_start = -line * (1 - direction)
    t = np.linspace(t_start, t_end, size)
    x, y = center + dx * t, center + dy * t
    if allow_shifted:
        x += rng.uniform(-1, 1) * line / 2
        y += rng.uniform(-1, 1) * line / 2
    x = np.clip(np.round(x), 0, size - 1).astype(int)
    y = np.clip(np.round(y), 0, size - 1).astype(int)
    kernel[y, x] = 1
    if not kernel.any():
        kernel[center, center] = 1
    return kernel


_BLURS = {A.GaussianBlur: _gaussian_blur, A.MotionBlur: _motion_blur}


def _scale(width: int, height: int) -> np.ndarray:
    return np.array([width, height, width, height], dtype=np.float64)


def _filter(data: np.ndarray, width: int, height: int) -> np.ndarray:
    """albumentations 2.0.8's ``filter_bboxes`` with no limits, on normalised boxes with extra columns."""
    clipped = np.empty(data.shape, np.float64)
    pixels, mask = _filter_corners(data[:, :4], width, height)
    clipped[:, :4] = pixels / _scale(width, height)
    clipped[:, 4:] = data[:, 4:]
    return clipped[mask]


def _filter_corners(
    data: np.ndarray,
    width: int,
    height: int,
    min_area: float = 0.0,
    min_visibility: float = 0.0,
    min_width: float = 0.0,
    min_height: float = 0.0,
    max_accept_ratio: float | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """albumentations 2.0.8's ``filter_bboxes`` step for step on normalised corners ``[N, 4]``:
    ``(the boxes clipped to the frame, in pixels, float64; the mask of those it keeps)``.

    Its arithmetic and dtypes are kept (the areas before clipping in the input's dtype, the clipped
    boxes in float64), so the boxes kept and their bytes are the same; what goes is its wrappers.
    Its clipped boxes normalised again and back in pixels are these pixels: ``x / w * w`` is ``x``
    for the clipped ``x`` here, kept in float64 (a float32 ratio times an int is exact).
    """
    # By [width, height] in the boxes' dtype: the same products as by the ints (which are exact in it).
    sides_in = (data[:, 2:] - data[:, :2]) * np.array([width, height], dtype=data.dtype)
    area = sides_in[:, 0] * sides_in[:, 1]
    scale = _scale(width, height)
    pixels = data * scale
    np.clip(pixels, 0, scale, out=pixels)
    clipped = pixels / scale
    sides_clipped = (clipped[:, 2:] - clipped[:, :2]) * scale[:2]
    clipped_area = sides_clipped[:, 0] * sides_clipped[:, 1]
    sides = clipped * scale
    lengths = sides[:, 2:] - sides[:, :2]  # widths, heights
    mask = (
        (area >= _EPS)
        & (clipped_area >= min_area - _EPS)
        & (clipped_area / (area + _EPS) >= min_visibility)
        & (lengths >= np.array([min_width - _EPS, min_height - _EPS])).all(axis=1)
    )
    if max_accept_ratio is not None:
        widths, heights = lengths[:, 0], lengths[:, 1]
        mask &= np.maximum(widths / (heights + _EPS), heights / (widths + _EPS)) <= max_accept_ratio
    return sides, mask
