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
import numpy as np

from flirdata.fused import FusedAffine, IntensityLUT, NoiseBank
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

        def seeded_node(node: Any) -> Any:
            slot = self._slot[id(node)]
            if slot not in seeded:  # our own steps draw only from their Python generator
                seed_node(node, blocks[slot], numpy=type(node) not in _OWN_STEPS)
                seeded.add(slot)
            return node

        data = self._boxes_in(boxes, image.shape)
        for k, step in enumerate(self.pipeline.transforms):
            start = time.perf_counter() if clock is not None else 0.0
            if type(step) is A.OneOf:
                image = self._one_of(seeded_node(step), image, seeded_node)
            elif seeded_node(step).should_apply():
                params: dict[str, Any] = {"shape": image.shape}
                params.update(step.get_params_dependent_on_data(params, {}))
                if type(step) is FusedAffine and data is not None:
                    data = step.apply_to_bboxes(data, **params)
                image = step.apply(image, **params)
            if clock is not None:
                clock[k] += time.perf_counter() - start
        return (image, *self._boxes_out(data, image.shape))

    @staticmethod
    def _one_of(step: A.OneOf, image: np.ndarray, seeded_node: Any) -> np.ndarray:
        """``OneOf.__call__``: its coin, then its numpy choice of a child run with ``force_apply``."""
        if not step.transforms_ps or not step.py_random.random() < step.p:
            return image
        idx = step.random_generator.choice(len(step.transforms), p=step.transforms_ps)
        return seeded_node(step.transforms[idx])(force_apply=True, image=image)["image"]

    def _boxes_in(self, boxes: np.ndarray, shape: tuple[int, ...]) -> np.ndarray | None:
        """The bbox processor's preprocess: rows as a float32 column, normalised, clipped, invalid dropped."""
        if len(boxes) == 0:
            return None
        height, width = shape[:2]
        coco = boxes.astype(np.float32, copy=False)
        data = np.empty((len(boxes), 5), np.float32)
        data[:, :2] = coco[:, :2]
        data[:, 2:4] = coco[:, :2] + coco[:, 2:4]  # coco -> corners, in float32
        data[:, 4] = np.arange(len(boxes))
        # As convert_bboxes_to_albumentations: normalised in float64, stored in float32, then clipped.
        data[:, :4] = data[:, :4] / _scale(width, height)
        np.clip(data[:, :4], 0, 1, out=data[:, :4])
        return _filter(data, width, height)

    def _boxes_out(self, data: np.ndarray | None, shape: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray]:
        """The bbox processor's postprocess: filtered by the pipeline's rule, back to COCO pixels."""
        if data is None or not data.size:
            return np.zeros((0, 4)), np.zeros(0, np.int64)
        height, width = shape[:2]
        p = self.params
        data = _filter(data, width, height, p.min_area, p.min_visibility, p.min_width, p.min_height, p.max_accept_ratio)
        corners = data[:, :4] * _scale(width, height)  # convert_bboxes_from_albumentations, in float64
        coco = np.concatenate([corners[:, :2], corners[:, 2:] - corners[:, :2]], axis=1)
        return coco.astype(np.float64), data[:, 4].astype(np.int64)


def _scale(width: int, height: int) -> np.ndarray:
    return np.array([width, height, width, height], dtype=np.float64)


def _filter(
    data: np.ndarray,
    width: int,
    height: int,
    min_area: float = 0.0,
    min_visibility: float = 0.0,
    min_width: float = 0.0,
    min_height: float = 0.0,
    max_accept_ratio: float | None = None,
) -> np.ndarray:
    """albumentations 2.0.8's ``filter_bboxes`` on normalised boxes with extra columns, step for step.

    Its arithmetic and dtypes are kept (the areas before clipping in the input's dtype, the clipped
    boxes in float64), so the boxes kept and their bytes are the same; what goes is its wrappers.
    """
    eps = 1e-7
    area = ((data[:, 2] - data[:, 0]) * width) * ((data[:, 3] - data[:, 1]) * height)
    scale = _scale(width, height)
    pixels = data[:, :4] * scale
    np.clip(pixels, 0, scale, out=pixels)
    clipped = np.empty(data.shape, np.float64)
    clipped[:, :4] = pixels / scale
    clipped[:, 4:] = data[:, 4:]
    clipped_area = ((clipped[:, 2] - clipped[:, 0]) * width) * ((clipped[:, 3] - clipped[:, 1]) * height)
    sides = clipped[:, :4] * scale
    widths, heights = sides[:, 2] - sides[:, 0], sides[:, 3] - sides[:, 1]
    mask = (
        (area >= eps)
        & (clipped_area >= min_area - eps)
        & (clipped_area / (area + eps) >= min_visibility)
        & (widths >= min_width - eps)
        & (heights >= min_height - eps)
    )
    if max_accept_ratio is not None:
        mask &= np.maximum(widths / (heights + eps), heights / (widths + eps)) <= max_accept_ratio
    return clipped[mask]
