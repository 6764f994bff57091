"""Fast thermal augmentations: the reference preset's distributions in fewer passes over the pixels.

Three albumentations transforms of our own, each standing for several transforms of the reference
preset (``PRESETS["thermal_reference"]``) with the same parameter distributions:

* ``FusedAffine``: HorizontalFlip, Affine and the letterbox (LongestMaxSize + PadIfNeeded) as one
  matrix, so one ``cv2.warpAffine`` (a plain ``cv2.flip`` for a flip alone, nothing for the
  identity). Boxes move by the same matrix: corners -> enclosing box, as albumentations' Affine.
* ``IntensityLUT``: RandomBrightnessContrast then RandomGamma as one uint8 lookup table.
* ``NoiseBank``: GaussNoise from a bank of noise drawn once per process, cropped at a random offset
  and scaled per sample, instead of a fresh normal field per image.

They draw only from ``py_random``/``random_generator``, which ``flirdata.seeding.reseed_transform``
sets per (seed, epoch, index). The noise bank is seeded by ``bank_seed`` and the image shape, never
by the sample, so every worker and backend holds the same bank and the same sample gets the same bytes.
Being albumentations transforms, they compose with a user's and round-trip through ``A.save``/``A.load``.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from typing import Any

import albumentations as A
import cv2
import numpy as np

from flirdata._validate import check_int, is_int

__all__ = ["FusedAffine", "IntensityLUT", "NoiseBank", "noise_bank"]

Pair = tuple[float, float]
_IDENTITY = np.eye(3)


# -- argument checks ----------------------------------------------------------------------------
def _pair(name: str, value: Any, low: float = -math.inf, high: float = math.inf) -> Pair:
    """A ``(min, max)`` range inside ``[low, high]``; JSON gives lists, so any 2-sequence will do."""
    try:
        pair = tuple(float(v) for v in value)
    except (TypeError, ValueError):
        pair = ()
    if len(pair) != 2 or not low <= pair[0] <= pair[1] <= high:
        raise ValueError(f"{name} must be a (min, max) pair with {low} <= min <= max <= {high}, got {value!r}")
    return pair  # type: ignore[return-value]


def _probability(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= value <= 1.0:
        raise ValueError(f"{name} must be a probability in [0, 1], got {value!r}")
    return float(value)


def _size(value: Any) -> tuple[int, int] | None:
    if value is None:
        return None
    pair = tuple(value) if isinstance(value, Sequence) else ()
    if len(pair) != 2 or not all(is_int(v, 1) for v in pair):
        raise ValueError(f"size must be None or a (height, width) pair of positive ints, got {value!r}")
    return pair  # type: ignore[return-value]


def _check_uint8(image: np.ndarray, name: str) -> None:
    if image.dtype != np.uint8:
        raise TypeError(f"{name} works on uint8 images (its table has 256 entries), got {image.dtype}")


def _like(out: np.ndarray, image: np.ndarray) -> np.ndarray:
    """OpenCV drops a trailing channel axis of 1; give it back so grey [H, W, 1] stays [H, W, 1]."""
    return out[..., None] if image.ndim == 3 and out.ndim == 2 else out


# -- geometry ------------------------------------------------------------------------------------
def _translation(x: float, y: float) -> np.ndarray:
    return np.array([[1.0, 0.0, x], [0.0, 1.0, y], [0.0, 0.0, 1.0]])


def letterbox_matrix(shape: tuple[int, int], size: tuple[int, int] | None) -> np.ndarray:
    """LongestMaxSize to fit ``size`` then centred PadIfNeeded, as albumentations rounds them."""
    height, width = shape
    if size is None or tuple(size) == (height, width):
        return _IDENTITY  # what the arithmetic below gives for the frame's own size, without building it
    scale = min(size[0] / height, size[1] / width)
    new_h, new_w = max(1, round(height * scale)), max(1, round(width * scale))
    top, left = max(0, int((size[0] - new_h) / 2.0)), max(0, int((size[1] - new_w) / 2.0))
    return np.array([[new_w / width, 0.0, left], [0.0, new_h / height, top], [0.0, 0.0, 1.0]])


def affine_matrix(shape: tuple[int, int], translate: Pair, scale: Pair, angle: float) -> np.ndarray:
    """albumentations' Affine (no shear) about the frame centre, in box (pixel-edge) coordinates."""
    height, width = shape
    rad = np.deg2rad(angle % 360)
    cos, sin = np.cos(rad), np.sin(rad)
    linear = np.array([[cos * scale[0], sin * scale[1], 0.0], [-sin * scale[0], cos * scale[1], 0.0], [0, 0, 1.0]])
    centre = _translation(width / 2, height / 2)
    return centre @ _translation(*translate) @ linear @ _translation(-width / 2, -height / 2)


_HALF_BACK, _HALF_ON = _translation(-0.5, -0.5), _translation(0.5, 0.5)

# Columns of (x, y) for the corners top-left, top-right, bottom-right, bottom-left of an xyxy box.
_CORNERS = np.array([[0, 1], [2, 1], [2, 3], [0, 3]])


def move_boxes(boxes: np.ndarray, matrix: np.ndarray) -> np.ndarray:
    """Pixel xyxy boxes (extra columns kept) -> boxes enclosing their corners moved by ``matrix``."""
    corners = boxes[:, _CORNERS]  # [N, 4, 2]
    moved = corners @ matrix[:2, :2].T + matrix[:2, 2]
    out = boxes.astype(np.float64, copy=True)
    out[:, :2], out[:, 2:4] = moved.min(axis=1), moved.max(axis=1)
    return out


class FusedAffine(A.DualTransform):
    """HorizontalFlip(flip_p), Affine(affine_p) and the letterbox to ``size``, in one warp.

    Distributions as ``A.HorizontalFlip(p=flip_p)`` then ``A.Affine(scale, translate_percent, rotate,
    p=affine_p)`` (x and y scale drawn apart, translation ``int(u * side)`` pixels) then
    ``A.LongestMaxSize`` + centred ``A.PadIfNeeded`` to ``size`` (``None`` keeps the input size).
    Pixels outside the frame are 0; interpolation is bilinear. ``p`` stays 1: the flip and the
    warp have their own probabilities.
    """

    def __init__(
        self,
        size: Sequence[int] | None = None,
        flip_p: float = 0.5,
        affine_p: float = 0.7,
        scale: Pair = (0.8, 1.25),
        translate_percent: Pair = (-0.08, 0.08),
        rotate: Pair = (-5.0, 5.0),
        p: float = 1.0,
    ) -> None:
        super().__init__(p=_probability("p", p))
        self.size = _size(size)
        self.flip_p = _probability("flip_p", flip_p)
        self.affine_p = _probability("affine_p", affine_p)
        self.scale = _pair("scale", scale, low=1e-3)
        self.translate_percent = _pair("translate_percent", translate_percent, -1.0, 1.0)
        self.rotate = _pair("rotate", rotate, -360.0, 360.0)

    @property
    def targets(self) -> dict[str, Any]:
        return {"image": self.apply, "mask": self.apply_to_mask, "bboxes": self.apply_to_bboxes}

    def get_transform_init_args_names(self) -> tuple[str, ...]:
        return ("size", "flip_p", "affine_p", "scale", "translate_percent", "rotate")

    def get_params_dependent_on_data(self, params: dict[str, Any], data: dict[str, Any]) -> dict[str, Any]:
        shape = tuple(params["shape"][:2])
        height, width = shape
        matrix = _IDENTITY
        flipped = self.py_random.random() < self.flip_p
        if flipped:
            matrix = np.array([[-1.0, 0.0, width], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]])
        warped = self.py_random.random() < self.affine_p
        if warped:
            # Draw order as A.Affine: translate x, y; scale x, y; angle.
            tx, ty = (self.py_random.uniform(*self.translate_percent) for _ in range(2))
            scale = (self.py_random.uniform(*self.scale), self.py_random.uniform(*self.scale))
            angle = self.py_random.uniform(*self.rotate)
            matrix = affine_matrix(shape, (int(tx * width), int(ty * height)), scale, angle) @ matrix
        out_shape = shape if self.size is None else tuple(self.size)
        # The pixels' work, decided with the draws: none (native size, nothing drawn), a mirror copy, or a warp.
        pixels = "warp" if warped or out_shape != shape else "flip" if flipped else "none"
        return {
            "matrix": matrix,
            "letterbox": letterbox_matrix(shape, self.size),
            "output_shape": out_shape,
            "pixels": pixels,
        }

    def _warp(
        self, image: np.ndarray, matrix: np.ndarray, out_shape: tuple[int, int], flags: int, pixels: str
    ) -> np.ndarray:
        if pixels == "none":
            return image  # no flip, no affine, native size: no work at all
        if pixels == "flip":
            return _like(cv2.flip(image, 1), image)  # a flip alone: a copy, not an interpolating warp
        # Box coordinates put pixel i on [i, i + 1); OpenCV puts its centre at i: shift by half a pixel.
        pixel = _HALF_BACK @ matrix @ _HALF_ON
        out = cv2.warpAffine(
            image, pixel[:2], (out_shape[1], out_shape[0]), flags=flags, borderMode=cv2.BORDER_CONSTANT, borderValue=0
        )
        return _like(out, image)

    def apply(
        self,
        img: np.ndarray,
        matrix: np.ndarray,
        letterbox: np.ndarray,
        output_shape: tuple[int, int],
        pixels: str,
        **params: Any,
    ) -> np.ndarray:
        return self._warp(img, letterbox @ matrix, output_shape, cv2.INTER_LINEAR, pixels)

    def apply_to_mask(
        self,
        mask: np.ndarray,
        matrix: np.ndarray,
        letterbox: np.ndarray,
        output_shape: tuple[int, int],
        pixels: str,
        **params: Any,
    ) -> np.ndarray:
        return self._warp(mask, letterbox @ matrix, output_shape, cv2.INTER_NEAREST, pixels)

    def apply_to_bboxes(
        self,
        bboxes: np.ndarray,
        matrix: np.ndarray,
        letterbox: np.ndarray,
        output_shape: tuple[int, int],
        **params: Any,
    ) -> np.ndarray:
        """Normalised boxes in, normalised to ``output_shape`` out (albumentations' inner format)."""
        if len(bboxes) == 0:
            return bboxes
        height, width = params["shape"][:2]
        boxes = bboxes.astype(np.float64, copy=True)
        boxes[:, :4] *= (width, height, width, height)
        boxes = move_boxes(boxes, matrix)
        # As A.Affine: drop boxes wholly outside the frame before the letterbox moves the frame.
        inside = (boxes[:, 2] > 0) & (boxes[:, 3] > 0) & (boxes[:, 0] < width) & (boxes[:, 1] < height)
        boxes = move_boxes(boxes[inside], letterbox)
        boxes[:, :4] /= (output_shape[1], output_shape[0], output_shape[1], output_shape[0])
        return boxes.astype(bboxes.dtype, copy=False)


# -- intensity -----------------------------------------------------------------------------------
# The inputs of albumentations' uint8 tables, built once (read-only): 0..255, and 0..255 / 255 as
# ``np.arange(0, 256.0 / 255, 1.0 / 255)`` makes them.
_LEVELS = np.arange(0, 256, dtype=np.float32)
_UNIT_LEVELS = np.arange(0, 256.0 / 255, 1.0 / 255)
_LEVELS.setflags(write=False)
_UNIT_LEVELS.setflags(write=False)


class IntensityLUT(A.ImageOnlyTransform):
    """RandomBrightnessContrast(``brightness_contrast_p``) then RandomGamma(``gamma_p``) as one table.

    Each table is built exactly as albumentations builds it for uint8 (``clip(i * alpha + beta)``,
    then ``(i / 255) ** gamma * 255``), so the composed table gives the bytes of the two passes.
    """

    def __init__(
        self,
        brightness_limit: Pair = (-0.2, 0.2),
        contrast_limit: Pair = (-0.2, 0.2),
        brightness_contrast_p: float = 0.5,
        gamma_limit: Pair = (80.0, 120.0),
        gamma_p: float = 0.3,
        p: float = 1.0,
    ) -> None:
        super().__init__(p=_probability("p", p))
        self.brightness_limit = _pair("brightness_limit", brightness_limit, -1.0, 1.0)
        self.contrast_limit = _pair("contrast_limit", contrast_limit, -1.0)
        self.brightness_contrast_p = _probability("brightness_contrast_p", brightness_contrast_p)
        self.gamma_limit = _pair("gamma_limit", gamma_limit, low=1e-3)
        self.gamma_p = _probability("gamma_p", gamma_p)

    def get_transform_init_args_names(self) -> tuple[str, ...]:
        return ("brightness_limit", "contrast_limit", "brightness_contrast_p", "gamma_limit", "gamma_p")

    def get_params_dependent_on_data(self, params: dict[str, Any], data: dict[str, Any]) -> dict[str, Any]:
        table = None
        if self.py_random.random() < self.brightness_contrast_p:
            alpha = 1.0 + self.py_random.uniform(*self.contrast_limit)
            beta = self.py_random.uniform(*self.brightness_limit) * 255
            table = np.clip(_LEVELS * alpha + beta, 0, 255).astype(np.uint8)
        if self.py_random.random() < self.gamma_p:
            gamma = self.py_random.uniform(*self.gamma_limit) / 100.0
            curve = ((_UNIT_LEVELS**gamma) * 255).astype(np.uint8)
            table = curve if table is None else curve[table]
        return {"table": table}

    def apply(self, img: np.ndarray, table: np.ndarray | None, **params: Any) -> np.ndarray:
        if table is None:
            return img  # neither change drawn: no pass over the pixels
        _check_uint8(img, type(self).__name__)
        return _like(cv2.LUT(img, table), img)


# -- noise ---------------------------------------------------------------------------------------
@functools.lru_cache(maxsize=4)
def noise_bank(shape: tuple[int, ...], scale_factor: float, seed: int) -> np.ndarray:
    """Unit-sigma noise made as GaussNoise makes it, twice the image's height and width, read-only.

    GaussNoise with ``noise_scale_factor`` < 1 draws the field at that fraction of the size and
    resizes it bilinearly, which also lowers and correlates the per-pixel noise; the bank is made
    the same way so a crop of it has the reference's statistics. Cached: one bank per process.
    """
    height, width = 2 * shape[0], 2 * shape[1]
    small = (max(1, int(height * scale_factor)), max(1, int(width * scale_factor)), *shape[2:])
    field = np.random.default_rng([seed, *shape]).standard_normal(small, dtype=np.float32)
    if small[:2] != (height, width):
        field = _like(cv2.resize(field, (width, height), interpolation=cv2.INTER_LINEAR), field)
    field.setflags(write=False)
    return field


class NoiseBank(A.ImageOnlyTransform):
    """GaussNoise(std_range, noise_scale_factor, p) from a pre-drawn bank (see ``noise_bank``).

    Per sample: sigma ``~ U(std_range) * 255`` and a crop offset, both from the sample's stream.
    """

    def __init__(
        self, std_range: Pair = (0.01, 0.04), noise_scale_factor: float = 0.5, bank_seed: int = 0, p: float = 0.3
    ) -> None:
        super().__init__(p=_probability("p", p))
        self.std_range = _pair("std_range", std_range, 0.0, 1.0)
        if (
            isinstance(noise_scale_factor, bool)
            or not isinstance(noise_scale_factor, (int, float))
            or not (0.0 < noise_scale_factor <= 1.0)
        ):
            raise ValueError(f"noise_scale_factor must be in (0, 1], got {noise_scale_factor!r}")
        self.noise_scale_factor = float(noise_scale_factor)
        self.bank_seed = check_int("bank_seed", bank_seed, 0)

    def get_transform_init_args_names(self) -> tuple[str, ...]:
        return ("std_range", "noise_scale_factor", "bank_seed")

    def get_params_dependent_on_data(self, params: dict[str, Any], data: dict[str, Any]) -> dict[str, Any]:
        height, width = params["shape"][:2]
        sigma = self.py_random.uniform(*self.std_range) * 255
        top, left = self.py_random.randint(0, height), self.py_random.randint(0, width)
        return {"sigma": sigma, "offset": (top, left)}

    def apply(self, img: np.ndarray, sigma: float, offset: tuple[int, int], **params: Any) -> np.ndarray:
        _check_uint8(img, type(self).__name__)
        bank = noise_bank(img.shape, self.noise_scale_factor, self.bank_seed)
        top, left = offset
        crop = bank[top : top + img.shape[0], left : left + img.shape[1]]
        # GaussNoise adds in float and truncates to uint8; saturating rounding of x - 0.5 is that floor.
        return _like(cv2.addWeighted(img, 1.0, crop, sigma, -0.5, dtype=cv2.CV_8U), img)
