"""What an export's output folder is made of: the names every format shares, and ``Layout``.

Every export writes its images as JPEG files, records each batch in a shard of a hidden work
folder (``WORK_DIR``) while it runs, and ends by writing one final file merged from the shards.
What differs from one format to another is a ``Layout``: where the images (and per-image label
files, if the format has them) go, the label file's text, the final file and how a finished
export is read back from it. Each format is one module of ``formats/`` that makes one
``Layout``; ``formats.LAYOUTS`` names them. Everything else (batches, shards, the lock, resume
and its checks, the version) is the same for every format.

A format's folder holds either one split (``splits == ()``: a COCO folder is one dataset) or
several (``splits`` names them: a YOLO dataset holds train, val and test, each exported on its
own, with its own work folder, and shares the final file).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from flirdata.errors import FlirdataError

__all__ = ["LOCK_FILE", "VERSION", "WORK_DIR", "ExportError", "Layout", "Shards", "has_content"]

WORK_DIR = ".flirdata-export"  # hidden: tools that glob OUT never see half-finished state
# 2: segmentation in coco.json; YOLO splits in images/S and labels/S; 3: reseeding in place (other bytes);
# 4: un-augmented exports keep the source image ids; boxes under a pixel (boxes.box_exists) dropped;
#    shards record each file's size and digest
VERSION = 4
LOCK_FILE = ".flirdata-export.lock"  # held while an export writes into OUT; removed when it ends

Shards = Callable[[], Iterator[dict[str, Any]]]  # a new pass over an export's shards, in batch order


class ExportError(FlirdataError, ValueError):
    """An export cannot start or continue: bad argument, non-empty or foreign output folder."""


def has_content(folder: Path) -> bool:
    """Whether ``folder`` is a folder holding anything but the lock of the export running now."""
    return folder.is_dir() and any(p.name != LOCK_FILE for p in folder.iterdir())


@dataclass(frozen=True)
class Layout(ABC):
    """One export format: a module of ``formats/`` subclasses it and makes one, ``formats.LAYOUTS`` names it.

    Folders are relative to the output folder; ``{split}`` in them stands for the split. The
    final file records ``{"settings": ..., "totals": ...}`` of what was exported (for a folder of
    several splits, of each split): that record marks a finished export, and is how a resume or
    a repeated export recognises one.
    """

    name: str  # the registry key, as --format takes it
    images: str  # folder of the JPEG images
    final_file: str  # written last, from the shards, when the export (of a split) finishes
    labels: str | None = None  # folder of one label file per image (``label_text``); None: no such files
    label_suffix: str = ".txt"
    splits: tuple[str, ...] = ()  # the splits one folder holds, the default first; (): one per folder

    def work(self, split: str | None) -> str:
        """The hidden work folder, relative to the output folder: one per split where splits share it."""
        return f"{WORK_DIR}/{split}" if self.splits else WORK_DIR

    def label_text(self, xyxy: np.ndarray, labels: np.ndarray, width: int, height: int) -> str:
        """The label file of one image (formats with ``labels``): ``[N, 4]`` pixel corners and
        flirdata's 1-based labels, of a ``width`` x ``height`` image."""
        raise NotImplementedError(f"the {self.name} format has no label files")

    @abstractmethod
    def read_final(self, out: Path, split: str | None) -> Any:
        """What a finished export (of ``split``) recorded in the final file; None if there is none."""

    @abstractmethod
    def write_final(self, out: Path, split: str | None, meta: dict[str, Any], index: Any, shards: Shards) -> None:
        """Write the final file (atomically) from the shards; ``meta`` is the record ``read_final`` returns.

        ``index`` is the source's ``CocoIndex`` (classes, category ids).
        """

    def check_out(self, out: Path, classes: Sequence[str]) -> None:
        """Refuse a non-empty ``out`` that a split of ``classes`` may not join (formats of several splits)."""
        return  # a folder of one split: prepare_output refuses any non-empty one

    def recorded_classes(self, out: Path) -> list[str]:
        """The classes the splits already in ``out`` have, which a new split keeps (in this order)."""
        return []

    def next_step(self, out: Path) -> str | None:
        """A line the command line prints after exporting into ``out``: what to do next, if anything."""
        return None
