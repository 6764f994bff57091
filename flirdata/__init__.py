"""flirdata: an on-the-fly PyTorch data pipeline for object detection on FLIR thermal images.

The public API is flat: ``FlirDetection``, ``build_transform``, ``collate_detection``, and the
parallel loader ``make_loader`` with its registry ``BACKENDS``.
"""

from __future__ import annotations

import os

# albumentations looks up its newest release on PyPI at import; we run where that is blocked.
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

from flirdata.coco import FLIR_CLASSES, CocoIndex, load_coco  # noqa: E402
from flirdata.collate import collate_detection  # noqa: E402
from flirdata.dataset import SPLITS, BadImageWarning, FlirDetection  # noqa: E402
from flirdata.errors import AnnotationError, DataError, FlirdataError, ImageError  # noqa: E402
from flirdata.transforms import PRESETS, build_transform  # noqa: E402

__version__ = "0.1.0"

__all__ = [
    "FLIR_CLASSES",
    "PRESETS",
    "SPLITS",
    "AnnotationError",
    "BadImageWarning",
    "CocoIndex",
    "DataError",
    "FlirDetection",
    "FlirdataError",
    "ImageError",
    "build_transform",
    "collate_detection",
    "load_coco",
]
