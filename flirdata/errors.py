"""Exceptions raised at the package's boundaries.

Every error a user can cause (bad data, bad argument) derives from ``FlirdataError`` so the CLI
can turn it into one clear line instead of a traceback.
"""

from __future__ import annotations

__all__ = ["FlirdataError", "DataError", "ImageError", "AnnotationError"]


class FlirdataError(Exception):
    """Base class of every error flirdata raises on purpose."""


class DataError(FlirdataError, ValueError):
    """A dataset folder or file is missing or malformed."""


class ImageError(DataError):
    """An image file is missing, empty, truncated or cannot be decoded."""


class AnnotationError(DataError):
    """A ``coco.json`` is not valid JSON or does not follow the COCO layout."""
