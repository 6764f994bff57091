"""flirdata: an on-the-fly PyTorch data pipeline for object detection on FLIR thermal images.

The public API is flat: ``FlirDetection``, ``build_transform``, ``collate_detection``, the
parallel loader ``make_loader`` with its registry ``BACKENDS``, and ``evaluate`` (COCO metrics).
Names are imported on first use, so ``flirdata synth`` and worker processes that only need numpy do not pay for torch.
"""

from __future__ import annotations

import importlib
import os
from typing import TYPE_CHECKING, Any

# albumentations looks up its newest release on PyPI at import; we run where that is blocked.
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

__version__ = "0.1.0"

# public name -> module that defines it
_EXPORTS: dict[str, str] = {
    "FLIR_CLASSES": "flirdata.coco",
    "CocoIndex": "flirdata.coco",
    "load_coco": "flirdata.coco",
    "collate_detection": "flirdata.collate",
    "SPLITS": "flirdata.dataset",
    "BadImageWarning": "flirdata.dataset",
    "FlirDetection": "flirdata.dataset",
    "AnnotationError": "flirdata.errors",
    "ClusterConnectionError": "flirdata.errors",
    "DataError": "flirdata.errors",
    "FlirdataError": "flirdata.errors",
    "DetectionError": "flirdata.evaluation",
    "evaluate": "flirdata.evaluation",
    "stats_table": "flirdata.evaluation",
    "ImageError": "flirdata.errors",
    "LoaderTimeoutError": "flirdata.errors",
    "MissingExtraError": "flirdata.errors",
    "WorkerError": "flirdata.errors",
    "PRESETS": "flirdata.transforms",
    "OUTPUTS": "flirdata.outputs",
    "PER_BOX_FIELDS": "flirdata.targets",
    "per_box_fields": "flirdata.targets",
    "MainModuleError": "flirdata.backends",
    "CollatePicklingError": "flirdata.backends",
    "build_transform": "flirdata.transforms",
    "BACKENDS": "flirdata.backends",
    "WorkerCrashError": "flirdata.backends",
    "ShmCapacityWarning": "flirdata.errors",
    "ShmCapacityError": "flirdata.errors",
    "BatchSampler": "flirdata.sampler",
    "Loader": "flirdata.loader",
    "LoaderOptions": "flirdata.loader",
    "make_loader": "flirdata.loader",
    "synthesize": "flirdata.synth",
    "export_augmented": "flirdata.tools.export",
}

__all__ = [
    "AnnotationError",
    "BACKENDS",
    "BadImageWarning",
    "BatchSampler",
    "ClusterConnectionError",
    "CocoIndex",
    "CollatePicklingError",
    "DataError",
    "DetectionError",
    "FLIR_CLASSES",
    "FlirDetection",
    "FlirdataError",
    "ImageError",
    "Loader",
    "LoaderOptions",
    "LoaderTimeoutError",
    "MainModuleError",
    "MissingExtraError",
    "OUTPUTS",
    "PER_BOX_FIELDS",
    "PRESETS",
    "SPLITS",
    "ShmCapacityError",
    "ShmCapacityWarning",
    "WorkerCrashError",
    "WorkerError",
    "build_transform",
    "collate_detection",
    "evaluate",
    "export_augmented",
    "load_coco",
    "make_loader",
    "per_box_fields",
    "stats_table",
    "synthesize",
]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'flirdata' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_EXPORTS])


if TYPE_CHECKING:  # static checkers and IDEs see the eager imports
    from flirdata.backends import BACKENDS, CollatePicklingError, MainModuleError, WorkerCrashError
    from flirdata.coco import FLIR_CLASSES, CocoIndex, load_coco
    from flirdata.collate import collate_detection
    from flirdata.dataset import SPLITS, BadImageWarning, FlirDetection
    from flirdata.errors import (
        AnnotationError,
        ClusterConnectionError,
        DataError,
        FlirdataError,
        ImageError,
        LoaderTimeoutError,
        MissingExtraError,
        ShmCapacityError,
        ShmCapacityWarning,
        WorkerError,
    )
    from flirdata.evaluation import DetectionError, evaluate, stats_table
    from flirdata.loader import Loader, LoaderOptions, make_loader
    from flirdata.outputs import OUTPUTS
    from flirdata.sampler import BatchSampler
    from flirdata.synth import synthesize
    from flirdata.targets import PER_BOX_FIELDS, per_box_fields
    from flirdata.tools.export import export_augmented
    from flirdata.transforms import PRESETS, build_transform
