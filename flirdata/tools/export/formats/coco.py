"""The COCO layout of ``flirdata export``: ``data/NAME.jpg`` and one ``coco.json``, one split per folder.

``FlirDetection(out, split=out)`` reads the folder back. ``coco.json`` keeps the source's category
ids; every annotation has ``segmentation`` (the box as a polygon), ``area`` and ``iscrowd`` for
pycocotools; ``info.flirdata_export`` records the export's settings and totals, which marks the
folder as a finished export.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from flirdata.coco import write_coco
from flirdata.tools.export.layout import Layout, Shards

__all__ = ["LAYOUT", "CocoLayout"]


@dataclass(frozen=True)
class CocoLayout(Layout):
    """A COCO dataset: the images, and their boxes in the final ``coco.json`` (no label files)."""

    def read_final(self, out: Path, split: str | None) -> Any:
        try:
            return json.loads((out / self.final_file).read_text(encoding="utf-8"))["info"]["flirdata_export"]
        except (OSError, ValueError, KeyError, TypeError):
            return None

    def write_final(self, out: Path, split: str | None, meta: dict[str, Any], index: Any, shards: Shards) -> None:
        """Stream ``coco.json`` from the shards (two passes), numbering annotations in order."""
        labels = [label for label in range(1, len(index.classes) + 1) if index.category_ids[label] > 0]
        categories = sorted(
            ({"id": int(index.category_ids[label]), "name": index.classes[label - 1]} for label in labels),
            key=lambda c: c["id"],
        )
        info = {"description": "augmented copies written by flirdata export", "flirdata_export": meta}
        images = (image for shard in shards() for image in shard["images"])
        anns = (ann for shard in shards() for ann in shard["annotations"])
        numbered = ({"id": n, **ann} for n, ann in enumerate(anns, start=1))
        header = {"info": info, "licenses": [], "categories": categories}
        write_coco(out / self.final_file, header, images, numbered, layout="lines")


LAYOUT = CocoLayout(name="coco", images="data", final_file="coco.json")
