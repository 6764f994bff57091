"""The per-box fields of a sample's target, for code that filters boxes outside flirdata.

A target holds ``boxes`` and one row per box in ``labels``, ``area`` and ``iscrowd``. A tool that
drops boxes must drop those rows with them: torchvision's ``transforms.v2.SanitizeBoundingBoxes``
filters only what its ``labels_getter`` returns (by default ``labels`` alone), and
``per_box_fields`` is a ``labels_getter`` that returns all three. It is plain Python: flirdata
does not import torchvision.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

__all__ = ["PER_BOX_FIELDS", "per_box_fields"]

PER_BOX_FIELDS = ("labels", "area", "iscrowd")


def per_box_fields(sample: Any) -> tuple[Any, ...]:
    """The target's per-box tensors (``labels``, ``area``, ``iscrowd``, those it has), in that order.

    Args:
        sample: an ``(image, target)`` pair or a target dict, as ``SanitizeBoundingBoxes`` hands
            its ``labels_getter``.

    Returns:
        The target's own tensor objects (not copies): ``SanitizeBoundingBoxes`` recognises
        them by identity.
    """
    target = sample[1] if isinstance(sample, (tuple, list)) and len(sample) == 2 else sample
    if not isinstance(target, Mapping):
        raise TypeError(f"per_box_fields expects an (image, target) pair or a target dict, got {type(sample).__name__}")
    return tuple(target[name] for name in PER_BOX_FIELDS if name in target)
