"""The Ultralytics YOLO detection layout: label lines, label files and ``data.yaml``.

A YOLO dataset holds one folder per split, ``images/S/NAME.jpg`` next to ``labels/S/NAME.txt``
(Ultralytics finds a label file by replacing the last ``/images/`` of the image path with
``/labels/``), one ``class cx cy w h`` line per box with the centre and size normalised to
``[0, 1]`` and classes counted from 0, plus a ``data.yaml`` naming the classes and each
split's image folder.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from flirdata.errors import AnnotationError

__all__ = ["YOLO_SPLITS", "yolo_label_text", "parse_yolo_labels", "data_yaml_text", "read_data_yaml"]

YOLO_SPLITS = ("train", "val", "test")  # the split keys Ultralytics' data.yaml knows

# Six decimals is what Ultralytics itself writes: 1e-6 of a 640-pixel frame is 0.0006 px.
_LINE = "{:d} {:.6f} {:.6f} {:.6f} {:.6f}\n"


def yolo_label_text(xyxy: np.ndarray, classes: np.ndarray, width: int, height: int) -> str:
    """Label-file text of one image: a ``class cx cy w h`` line per box (empty: no boxes).

    Args:
        xyxy: ``[N, 4]`` corner boxes in pixels, inside ``[0, width] x [0, height]``.
        classes: ``[N]`` 0-based class indices.
        width, height: the image size the boxes are normalised by.
    """
    b = np.asarray(xyxy, dtype=np.float64).reshape(-1, 4)
    scale = np.array([width, height, width, height], dtype=np.float64)
    centre = (b[:, :2] + b[:, 2:]) / 2
    size = b[:, 2:] - b[:, :2]
    norm = np.clip(np.concatenate([centre, size], axis=1) / scale, 0.0, 1.0)
    rows = zip(np.asarray(classes).tolist(), norm.tolist(), strict=True)
    return "".join(_LINE.format(int(c), *row) for c, row in rows)


def parse_yolo_labels(path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """Read one label file as ``(classes int64 [N], boxes float64 [N, 4] cx cy w h)``.

    Raises ``AnnotationError`` naming the file and line when a line is not 5 numbers with
    the box inside ``[0, 1]``.
    """
    classes, boxes = [], []
    for number, line in enumerate(Path(path).read_text().splitlines(), start=1):
        fields = line.split()
        if not fields:
            continue
        try:
            cls, values = int(fields[0]), [float(v) for v in fields[1:]]
        except ValueError:
            raise AnnotationError(f"{path}:{number}: expected 'class cx cy w h', got {line!r}") from None
        if len(values) != 4 or cls < 0 or not all(0.0 <= v <= 1.0 for v in values):
            raise AnnotationError(f"{path}:{number}: expected 'class cx cy w h' in [0, 1], got {line!r}")
        classes.append(cls)
        boxes.append(values)
    return np.asarray(classes, dtype=np.int64), np.asarray(boxes, dtype=np.float64).reshape(-1, 4)


def data_yaml_text(names: Sequence[str], splits: Iterable[str], extra: Mapping[str, Any] | None = None) -> str:
    """The ``data.yaml`` of an exported folder, as Ultralytics' ``check_det_dataset`` reads it.

    Each split ``S`` of ``splits`` (some of ``YOLO_SPLITS``) is listed as ``S: images/S``. There
    is deliberately no ``path`` key: Ultralytics resolves a ``path`` given in the file against
    the working directory (then its own datasets folder), and only a missing one against the
    yaml's own folder; so the folder can be moved or copied and still train. Ultralytics needs
    ``train`` and ``val``: a file without ``val`` is refused there, never silently validated
    on the training images. ``extra`` is stored under ``flirdata_export`` (Ultralytics ignores
    unknown keys).
    """
    present = set(splits)
    data: dict[str, Any] = {split: f"images/{split}" for split in YOLO_SPLITS if split in present}
    data["nc"] = len(names)
    data["names"] = dict(enumerate(names))
    if extra:
        data["flirdata_export"] = dict(extra)
    header = "# YOLO dataset written by flirdata export; splits resolve against this file's folder.\n"
    return header + yaml.safe_dump(data, sort_keys=False, allow_unicode=True)


def read_data_yaml(path: str | Path) -> dict[str, Any] | None:
    """The mapping in a ``data.yaml``, or None if the file is missing or not a YAML mapping."""
    try:
        data = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError):
        return None
    return data if isinstance(data, dict) else None
