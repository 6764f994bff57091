"""Augmentation pipelines: named presets, user files, and the bbox contract they must meet.

Every pipeline the dataset runs is an ``albumentations.Compose`` that takes COCO boxes via
``bboxes=`` and labels via ``labels=``, clips boxes to the image and drops invalid ones, so the
dataset never has to special-case a user's pipeline.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import albumentations as A
import cv2

from flirdata._validate import is_int
from flirdata.boxes import MIN_BOX_SIDE, SIDE_SLACK
from flirdata.fused import FusedAffine, IntensityLUT, NoiseBank

__all__ = [
    "PRESETS",
    "PRESET_SIZES",
    "RESIZE_ONLY",
    "MODALITY_PRESETS",
    "build_transform",
    "default_bbox_params",
    "ensure_detection_compose",
]

Size = tuple[int, int]
BOX_FORMATS = ("coco", "pascal_voc")
PIPELINE_SUFFIXES = {".json": "json", ".yaml": "yaml", ".yml": "yaml"}


def default_bbox_params(min_visibility: float = 0.1, min_side: float = MIN_BOX_SIDE) -> A.BboxParams:
    """COCO boxes in and out; boxes cut to the frame are clipped, ones that vanish dropped.

    ``min_side``: boxes the pipeline leaves narrower or lower than this many pixels are dropped;
    ``MIN_BOX_SIDE``, the rule of ``flirdata.boxes.box_exists``, for pipelines that augment.
    """
    side = max(0.0, min_side - SIDE_SLACK)
    return A.BboxParams(
        format="coco",
        label_fields=["labels"],
        clip=True,
        filter_invalid_bboxes=True,
        min_visibility=min_visibility,
        min_width=side,
        min_height=side,
        # Filtering once at the end instead of after every transform saves ~1.5 ms per image
        # (a quarter of the thermal preset); clip=True keeps the intermediate boxes sane.
        check_each_transform=False,
    )


def _letterbox(size: Size) -> list[A.BasicTransform]:
    height, width = size
    return [
        A.LongestMaxSize(max_size_hw=(height, width), p=1.0),
        A.PadIfNeeded(min_height=height, min_width=width, border_mode=cv2.BORDER_CONSTANT, fill=0, p=1.0),
    ]


def _geometric() -> list[A.BasicTransform]:
    """Flip, scale, translate and a small rotation: the geometry every training preset shares."""
    affine = A.Affine(
        scale=(0.8, 1.25),
        translate_percent=(-0.08, 0.08),
        rotate=(-5, 5),
        border_mode=cv2.BORDER_CONSTANT,
        fill=0,
        p=0.7,
    )
    return [A.HorizontalFlip(p=0.5), affine]


def _blur() -> A.OneOf:
    return A.OneOf([A.GaussianBlur(blur_limit=(3, 5)), A.MotionBlur(blur_limit=(3, 7))], p=0.2)


def _thermal_reference(size: Size) -> list[A.BasicTransform]:
    """Geometric and intensity transforms only: thermal images have one channel, no colour.

    The reference of the fast ``thermal`` preset: plain albumentations transforms, one per step.
    """
    geometric = _geometric()
    intensity = [
        A.RandomBrightnessContrast(brightness_limit=0.2, contrast_limit=0.2, p=0.5),
        A.RandomGamma(gamma_limit=(80, 120), p=0.3),
        _blur(),
        A.GaussNoise(std_range=(0.01, 0.04), noise_scale_factor=0.5, p=0.3),
    ]
    return geometric + _letterbox(size) + intensity


def _thermal(size: Size) -> list[A.BasicTransform]:
    """The reference's distributions in fewer passes (``flirdata.fused``; table in the README):
    flip, affine and letterbox in one warp, brightness/contrast and gamma in one lookup table,
    the blur as it is, noise cropped from a bank drawn once per process.
    """
    return [FusedAffine(size=size), IntensityLUT(), _blur(), NoiseBank()]


def _rgb(size: Size) -> list[A.BasicTransform]:
    """The thermal geometry, then colour: brightness/contrast/saturation/hue jitter, blur, and
    colour camera noise (ISO noise shifts hue per pixel, which only a colour sensor makes).

    The frame is shrunk to ``size`` before the flip and the affine warp, not after as in the
    thermal preset: RGB frames are up to 2048x1536, and warping the shrunk frame is several
    times cheaper for the same geometry.
    """
    shrink, pad = _letterbox(size)
    noise = [A.ISONoise(color_shift=(0.01, 0.04), intensity=(0.05, 0.2)), A.GaussNoise(std_range=(0.01, 0.04))]
    colour = [
        A.ColorJitter(brightness=(0.8, 1.2), contrast=(0.8, 1.2), saturation=(0.7, 1.3), hue=(-0.03, 0.03), p=0.6),
        A.OneOf([A.GaussianBlur(blur_limit=(3, 5)), A.MotionBlur(blur_limit=(3, 7))], p=0.2),
        A.OneOf(noise, p=0.3),
    ]
    return [shrink, *_geometric(), pad, *colour]


def _none(size: Size) -> list[A.BasicTransform]:
    """Validation: only fit the image to ``size`` (no randomness)."""
    return _letterbox(size)


PRESETS: dict[str, Callable[[Size], list[A.BasicTransform]]] = {
    "thermal": _thermal,
    "thermal_reference": _thermal_reference,
    "rgb": _rgb,
    "none": _none,
}
# Default output (height, width) per preset. Thermal frames are 512x640 and keep their size.
# RGB frames (2048x1536, 1800x1600, 1224x1024 in FLIR v2) go to 480x640: 4:3 like the most
# common of them (which shrinks to it without padding), the 640-pixel width detectors are
# usually trained at, and about the thermal frame's pixel count: a batch of three channels
# costs three thermal batches, not the ten times more full-size frames would.
PRESET_SIZES: dict[str, Size] = {
    "thermal": (512, 640),
    "thermal_reference": (512, 640),
    "rgb": (480, 640),
    "none": (512, 640),
}
# Presets that only resize and pad: they keep every box of the index, which judged each box in
# its image's own frame (``boxes.box_exists``). Judging again after the resize would drop a 2-px
# box of a 2048-px RGB frame (0.6 px at 640) that the split and its export keep.
RESIZE_ONLY = frozenset({"none"})
# The training preset the CLI picks for a split of each modality when none is given.
MODALITY_PRESETS: dict[str, str] = {"thermal": "thermal", "rgb": "rgb"}


def _as_size(size: int | Size) -> Size:
    pair = (size, size) if isinstance(size, int) else tuple(size)
    if len(pair) != 2 or not all(is_int(v, 1) for v in pair):
        raise ValueError(f"size must be a positive int or (height, width), got {size!r}")
    return pair  # type: ignore[return-value]


def build_transform(
    preset: str | Path = "thermal", size: int | Size | None = None, *, min_visibility: float = 0.1
) -> A.Compose:
    """Build the augmentation pipeline of a preset, or load a user's pipeline file.

    Args:
        preset: a key of ``PRESETS`` ("thermal" or "rgb" for training, "none" for validation,
            "thermal_reference" for the plain-albumentations pipeline "thermal" reproduces faster),
            or the path of an albumentations pipeline saved with ``A.save`` (``.json``/``.yaml``).
        size: output ``(height, width)`` (or one int for a square); presets letterbox to it
            so every image of a batch has the same shape. Default ``PRESET_SIZES[preset]``:
            512x640 (the thermal frame) for "thermal" and "none", 480x640 for "rgb".
        min_visibility: boxes keeping less than this fraction of their area are dropped.
    """
    if isinstance(preset, Path) or Path(str(preset)).suffix.lower() in PIPELINE_SUFFIXES:
        return load_pipeline(preset, min_visibility=min_visibility)
    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}; expected one of {sorted(PRESETS)} or a .json/.yaml file")
    steps = PRESETS[preset](_as_size(PRESET_SIZES[preset] if size is None else size))
    min_side = 0.0 if preset in RESIZE_ONLY else MIN_BOX_SIDE
    return A.Compose(steps, bbox_params=default_bbox_params(min_visibility, min_side))


def load_pipeline(path: str | Path, *, min_visibility: float = 0.1) -> A.Compose:
    """Load an albumentations pipeline file and give it the bbox contract if it lacks one."""
    path = Path(path)
    data_format = PIPELINE_SUFFIXES.get(path.suffix.lower())
    if data_format is None:
        raise ValueError(f"{path}: unknown pipeline file type; expected one of {sorted(PIPELINE_SUFFIXES)}")
    if not path.is_file():
        raise FileNotFoundError(f"{path}: pipeline file not found")
    try:
        loaded = A.load(str(path), data_format=data_format)
    except Exception as exc:  # albumentations raises many types for a malformed file
        raise ValueError(f"{path}: not an albumentations pipeline ({type(exc).__name__}: {exc})") from exc
    return ensure_detection_compose(loaded, min_visibility=min_visibility)


def ensure_detection_compose(transform: Any, *, min_visibility: float = 0.1) -> A.Compose:
    """Return a Compose that transforms ``bboxes=`` with ``labels=`` aligned.

    A user's pipeline without bbox params would move the pixels and silently leave the boxes
    behind, so it is wrapped in a Compose that has them.
    """
    if isinstance(transform, A.Compose) and "bboxes" in transform.processors:
        params = transform.processors["bboxes"].params
        if params.format not in BOX_FORMATS:
            raise ValueError(f"bbox format {params.format!r} is not supported; expected one of {BOX_FORMATS}")
        if "labels" not in (params.label_fields or ()):
            raise ValueError(f"bbox_params.label_fields must include 'labels', got {params.label_fields!r}")
        return transform
    if not isinstance(transform, (A.BasicTransform, A.BaseCompose)):
        raise TypeError(f"transform must be an albumentations transform or Compose, got {type(transform).__name__}")
    return A.Compose([transform], bbox_params=default_bbox_params(min_visibility))
