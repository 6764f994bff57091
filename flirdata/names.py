"""The names the command lines offer, held without importing what they name.

A parser needs the names of the backends and presets for its choices and help text, not the
backends (torch, joblib) or the presets (albumentations, OpenCV): with these,
``flirdata COMMAND --help``, a usage error and ``train_demo.py --help`` answer without importing
them. ``BACKEND_NAMES`` and ``PRESET_NAMES`` repeat their registries' keys, in the registries'
order (tests prove they are equal); the plain tables here are defined once and re-exported by
the modules that own them, so a tool that needs only them (``flirdata check`` needs the
splits' folders) does not import torch for them.
"""

from __future__ import annotations

__all__ = ["BACKEND_NAMES", "EXPORT_FORMATS", "MODALITIES", "PRESET_NAMES", "SIZES", "SPLITS"]

# The keys of flirdata.backends.BACKENDS, in its order.
BACKEND_NAMES: tuple[str, ...] = ("sequential", "dataloader", "threads", "loky", "process", "ray")
# The keys of flirdata.transforms.PRESETS, in its order.
PRESET_NAMES: tuple[str, ...] = ("thermal", "thermal_reference", "rgb", "none")
# Split name -> folder name in the FLIR ADAS v2 download (flirdata.dataset re-exports it).
SPLITS: dict[str, str] = {
    "train": "images_thermal_train",
    "val": "images_thermal_val",
    "test": "video_thermal_test",
    "rgb_train": "images_rgb_train",
    "rgb_val": "images_rgb_val",
    "rgb_test": "video_rgb_test",
}
# Image modality -> channels of a decoded frame (flirdata.images re-exports it).
MODALITIES: dict[str, int] = {"thermal": 1, "rgb": 3}
# Synthetic dataset sizes: name -> train images (flirdata.synth re-exports it).
SIZES: dict[str, int] = {"small": 500, "medium": 2000, "big": 10000}
# Layouts ``flirdata export`` writes (flirdata.tools.export re-exports it as FORMATS).
EXPORT_FORMATS: tuple[str, ...] = ("coco", "yolo")
