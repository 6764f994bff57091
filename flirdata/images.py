"""Decoding of one image file to a single-channel uint8 array, with loud failures.

OpenCV half-decodes a truncated JPEG with only a warning on stderr (the missing rows come
out grey), so truncation is detected from the file's end marker before decoding.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from flirdata.errors import ImageError

__all__ = ["decode_gray", "read_gray"]

_JPEG_START = b"\xff\xd8"
_JPEG_END = b"\xff\xd9"
_PNG_START = b"\x89PNG\r\n\x1a\n"
_PNG_END = b"IEND\xaeB`\x82"


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


def decode_gray(data: bytes, name: str = "<bytes>") -> np.ndarray:
    """Decode encoded image bytes to ``uint8 [H, W]`` (3-channel files are converted)."""
    _check_complete(data, name)
    image = cv2.imdecode(np.frombuffer(data, dtype=np.uint8), cv2.IMREAD_UNCHANGED)
    if image is None:
        raise ImageError(f"{name}: cannot decode image (corrupt or unsupported format)")
    if image.ndim == 3:
        code = cv2.COLOR_BGRA2GRAY if image.shape[2] == 4 else cv2.COLOR_BGR2GRAY
        image = cv2.cvtColor(image, code) if image.shape[2] > 1 else image[:, :, 0]
    if image.dtype != np.uint8:
        # 16-bit radiometric TIFF/PNG: scale the full range to 8 bits.
        image = cv2.normalize(image, None, 0, 255, cv2.NORM_MINMAX).astype(np.uint8)
    return np.ascontiguousarray(image)


def read_gray(path: str | Path, expect_hw: tuple[int, int] | None = None) -> np.ndarray:
    """Read one image file as ``uint8 [H, W]``; errors name the file.

    Args:
        path: image file.
        expect_hw: the ``(height, width)`` the annotation file declares, checked when given,
            since boxes are only right for the image size they were drawn on.
    """
    try:
        with open(path, "rb") as f:
            data = f.read()
    except FileNotFoundError:
        raise ImageError(f"{path}: image file not found") from None
    except IsADirectoryError:
        raise ImageError(f"{path}: is a directory, expected an image file") from None
    image = decode_gray(data, str(path))
    if expect_hw is not None and image.shape != tuple(expect_hw):
        raise ImageError(
            f"{path}: image is {image.shape[1]}x{image.shape[0]} but coco.json declares "
            f"{expect_hw[1]}x{expect_hw[0]}"
        )
    return image
