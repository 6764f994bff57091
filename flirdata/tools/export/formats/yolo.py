"""The Ultralytics YOLO layout of ``flirdata export``: label lines, label files and ``data.yaml``.

A YOLO dataset holds one folder per split, ``images/S/NAME.jpg`` next to ``labels/S/NAME.txt``
(Ultralytics finds a label file by replacing the last ``/images/`` of the image path with
``/labels/``), one ``class cx cy w h`` line per box with the centre and size normalised to
``[0, 1]`` and classes counted from 0, plus a ``data.yaml`` naming the classes and each
split's image folder.

One export fills one split of such a dataset (``images/S``, ``labels/S``); finishing it rewrites
``data.yaml`` to list every split present, in a fixed order, so its bytes do not depend on the
order the splits were exported in. Its ``flirdata_export`` entry records each split's settings and
totals: a split recorded there is finished, and a folder whose ``data.yaml`` has no such entry of
this version is not a dataset a split may join.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from flirdata.errors import AnnotationError
from flirdata.files import write_atomic
from flirdata.tools.export.layout import VERSION, WORK_DIR, ExportError, Layout, Shards, has_content

__all__ = [
    "LAYOUT",
    "YOLO_SPLITS",
    "YoloLayout",
    "data_yaml_text",
    "parse_yolo_labels",
    "read_data_yaml",
    "yolo_label_text",
    "yolo_record",
]

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


def yolo_record(out: Path) -> tuple[list[str], dict[str, Any]] | None:
    """``(class names, {split: metadata})`` of a YOLO dataset this version of export wrote."""
    data = read_data_yaml(out / "data.yaml") or {}
    meta, names = data.get("flirdata_export"), data.get("names")
    ours = isinstance(meta, dict) and meta.get("version") == VERSION and isinstance(meta.get("splits"), dict)
    if not (ours and isinstance(names, dict)):
        return None
    return [names[k] for k in sorted(names)], meta["splits"]


@dataclass(frozen=True)
class YoloLayout(Layout):
    """An Ultralytics dataset: ``images/S``, ``labels/S`` of each split ``S``, one shared ``data.yaml``."""

    def label_text(self, xyxy: np.ndarray, labels: np.ndarray, width: int, height: int) -> str:
        return yolo_label_text(xyxy, labels - 1, width, height)  # YOLO counts classes from 0

    def read_final(self, out: Path, split: str | None) -> Any:
        return (yolo_record(out) or ([], {}))[1].get(split)

    def check_out(self, out: Path, classes: Sequence[str]) -> None:
        """A split may join a non-empty ``out`` only if it is a flirdata YOLO dataset of the same classes."""
        if not has_content(out):
            return
        record = yolo_record(out)
        if record is None and not (out / WORK_DIR).is_dir():
            raise ExportError(
                f"{out}: not empty and not a YOLO dataset written by this flirdata export "
                "(no data.yaml of it); choose an empty folder"
            )
        if record is not None and record[0] != list(classes):
            raise ExportError(
                f"{out}: data.yaml names the classes {record[0]}, this split has {list(classes)}; "
                "export every split with the same classes (--split train,val in one call does)"
            )

    def write_final(self, out: Path, split: str | None, meta: dict[str, Any], index: Any, shards: Shards) -> None:
        """Rewrite ``data.yaml`` listing every split present: the ones recorded plus this one."""
        names = index.classes
        self.check_out(out, names)  # another split may have finished since this one started
        splits = {**(yolo_record(out) or ([], {}))[1], split: meta}
        ordered = {s: splits[s] for s in YOLO_SPLITS if s in splits}  # same bytes in any order
        text = data_yaml_text(names, ordered, {"version": VERSION, "splits": ordered})
        write_atomic(out / self.final_file, text.encode())

    def recorded_classes(self, out: Path) -> list[str]:
        return (yolo_record(out) or ([], {}))[0]

    def next_step(self, out: Path) -> str | None:
        data = out / self.final_file
        if "val" not in (yolo_record(out) or ([], {}))[1]:
            return f"note: {data} has no val split yet; Ultralytics needs one: export --split val into it"
        return f"train with: yolo detect train data={data.resolve()}"


LAYOUT = YoloLayout(
    name="yolo", images="images/{split}", labels="labels/{split}", final_file="data.yaml", splits=YOLO_SPLITS
)
