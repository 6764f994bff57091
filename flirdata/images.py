"""Decoding of one image file to a uint8 array of its split's modality, with loud failures.

A thermal split holds grey frames (``uint8 [H, W]``), an RGB split colour frames (``uint8
[H, W, 3]`` in R, G, B order, as torchvision expects; OpenCV decodes B, G, R). A file is grey
when it has one channel, or three equal ones (some tools save grey frames as RGB JPEGs, and
a JPEG round trip keeps equal channels exactly equal). A colour file in a thermal split or a
grey one in an RGB split is an error: silently converting it would train on the wrong data.

OpenCV half-decodes a truncated JPEG with only a warning on stderr (the missing rows come
out grey), so truncation is detected from the file's end marker before decoding.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from flirdata.errors import ImageError

__all__ = [
    "MODALITIES",
    "as_chw",
    "as_hwc",
    "check_modality",
    "decode_gray",
    "decode_image",
    "infer_modality",
    "read_gray",
    "read_image",
]

# Modality -> channels of its images.
MODALITIES: dict[str, int] = {"thermal": 1, "rgb": 3}
# Folder-name prefixes of the FLIR ADAS v2 download's RGB splits.
_RGB_PREFIXES = ("images_rgb_", "video_rgb_")
# A colour frame differs between channels almost everywhere, so a sparse grid finds it
# without comparing every pixel; only frames equal on the grid get the full comparison.
_PROBE_STEP = 7

_JPEG_START = b"\xff\xd8"
_JPEG_END = b"\xff\xd9"
_PNG_START = b"\x89PNG\r\n\x1a\n"
_PNG_END = b"IEND\xaeB`\x82"


def check_modality(modality: str) -> str:
    """``modality`` if it is a key of ``MODALITIES``, else a ValueError listing them."""
    if modality not in MODALITIES:
        raise ValueError(f"unknown modality {modality!r}; expected one of {sorted(MODALITIES)}")
    return modality


def infer_modality(folder: str | Path) -> str:
    """The modality of a split folder: RGB for ``images_rgb_*`` and ``video_rgb_*``, else thermal."""
    return "rgb" if Path(folder).name.startswith(_RGB_PREFIXES) else "thermal"


def _check_complete(data: bytes, name: str) -> None:
    if not data:
        raise ImageError(f"{name}: image file is empty")
    if data.startswith(_JPEG_START):
        # Some encoders pad after EOI; a truncated file has no EOI near its end at all.
        if _JPEG_END not in data[-64:]:
            raise ImageError(f"{name}: truncated JPEG (no end-of-image marker)")
    elif data.startswith(_PNG_START):
        if _PNG_END not in data[-64:]:
            raise ImageError(f"{name}: truncated PNG (no IEND chunk)")


def _equal_channels(image: np.ndarray) -> bool:
    probe = image[::_PROBE_STEP, ::_PROBE_STEP]
    if not ((probe[:, :, 0] == probe[:, :, 1]).all() and (probe[:, :, 1] == probe[:, :, 2]).all()):
        return False
    return bool(np.array_equal(image[:, :, 0], image[:, :, 1]) and np.array_equal(image[:, :, 1], image[:, :, 2]))


def _to_uint8(image: np.ndarray, modality: str) -> np.ndarray:
    if image.dtype == np.uint8:
        return image
    if modality == "thermal":
        # 16-bit radiometric TIFF/PNG: scale the full range to 8 bits.
        return cv2.normalize(image, None, 0, 255, cv2.NORM_MINMAX).astype(np.uint8)
    # A fixed scale for colour: stretching each frame's range would shift its colours.
    scale = 255.0 / np.iinfo(image.dtype).max if image.dtype.kind in "iu" else 255.0
    return np.clip(image * scale + 0.5, 0, 255).astype(np.uint8)


def decode_image(data: bytes, name: str = "<bytes>", modality: str = "thermal") -> np.ndarray:
    """Decode encoded image bytes to ``uint8 [H, W]`` (thermal) or ``uint8 [H, W, 3]`` RGB (rgb).

    Raises:
        ImageError: empty, truncated or undecodable bytes, or channels that do not match
            ``modality`` (a colour file for "thermal", a grey one for "rgb").
    """
    check_modality(modality)
    _check_complete(data, name)
    image = cv2.imdecode(np.frombuffer(data, dtype=np.uint8), cv2.IMREAD_UNCHANGED)
    if image is None:
        raise ImageError(f"{name}: cannot decode image (corrupt or unsupported format)")
    if image.ndim == 3 and image.shape[2] in (1, 2):  # grey, or grey + alpha
        image = image[:, :, 0]
    elif image.ndim == 3:
        image = image[:, :, :3]  # alpha carries no scene content
    grey = image.ndim == 2 or _equal_channels(image)
    if modality == "thermal":
        if not grey:
            raise ImageError(f"{name}: colour image (3 different channels) in a thermal split; expected a "
                             "grey frame (for an RGB split: modality='rgb', --modality rgb)")  # fmt: skip
        image = image if image.ndim == 2 else image[:, :, 0]
    elif grey:
        what = "1 channel" if image.ndim == 2 else "3 equal channels"
        raise ImageError(f"{name}: grey image ({what}) in an RGB split; expected a colour frame "
                         "(for a thermal split: modality='thermal', --modality thermal)")  # fmt: skip
    else:
        image = cv2.cvtColor(image, cv2.COLOR_BGR2RGB)
    return np.ascontiguousarray(_to_uint8(image, modality))


def decode_gray(data: bytes, name: str = "<bytes>") -> np.ndarray:
    """Decode a grey frame to ``uint8 [H, W]``: ``decode_image(data, name, "thermal")``."""
    return decode_image(data, name, "thermal")


def read_image(path: str | Path, expect_hw: tuple[int, int] | None = None, modality: str = "thermal") -> np.ndarray:
    """Read one image file as ``uint8 [H, W]`` (thermal) or ``[H, W, 3]`` RGB; errors name the file.

    Args:
        path: image file.
        expect_hw: the ``(height, width)`` the annotation file declares, checked when given,
            since boxes are only right for the image size they were drawn on.
        modality: a key of ``MODALITIES``; the file's channels must match it.
    """
    check_modality(modality)
    try:
        with open(path, "rb") as f:
            data = f.read()
    except FileNotFoundError:
        raise ImageError(f"{path}: image file not found") from None
    except IsADirectoryError:
        raise ImageError(f"{path}: is a directory, expected an image file") from None
    image = decode_image(data, str(path), modality)
    if expect_hw is not None and image.shape[:2] != tuple(expect_hw):
        raise ImageError(
            f"{path}: image is {image.shape[1]}x{image.shape[0]} but coco.json declares {expect_hw[1]}x{expect_hw[0]}"
        )
    return image


def read_gray(path: str | Path, expect_hw: tuple[int, int] | None = None) -> np.ndarray:
    """Read one grey frame as ``uint8 [H, W]``: ``read_image(path, expect_hw, "thermal")``."""
    return read_image(path, expect_hw, "thermal")


def as_chw(image: np.ndarray) -> np.ndarray:
    """A decoded or augmented image as contiguous ``[C, H, W]``: ``[H, W]`` gets ``C = 1``."""
    if image.ndim == 2:
        return np.ascontiguousarray(image[None])
    return np.ascontiguousarray(image.transpose(2, 0, 1))


def as_hwc(image: np.ndarray) -> np.ndarray:
    """A dataset image ``[C, H, W]`` as OpenCV lays it out: ``[H, W]`` for ``C = 1``, else ``[H, W, C]``."""
    if image.ndim == 2:
        return image
    return image[0] if image.shape[0] == 1 else np.ascontiguousarray(image.transpose(1, 2, 0))
