"""Shared fixtures: tiny datasets generated on the fly (nothing binary lives in the repo)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np
import pytest


@pytest.fixture(scope="session")
def synth_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small synthetic FLIR dataset shared by the whole session (read-only by convention)."""
    from flirdata.synth import synthesize

    root = tmp_path_factory.mktemp("synth")
    synthesize(root, train=24, val=6, seed=0, progress=False)
    return root


def write_split(
    folder: Path,
    images: Sequence[np.ndarray],
    boxes: Sequence[Sequence[Sequence[float]]],
    category_ids: Sequence[Sequence[int]],
    categories: Sequence[tuple[int, str]] = ((1, "person"), (3, "car")),
) -> Path:
    """Write a minimal COCO split folder (``coco.json`` + ``data/*.png``) and return it.

    PNG keeps pixels exact, which the augmentation-correctness tests rely on.
    """
    (folder / "data").mkdir(parents=True, exist_ok=True)
    entries, anns = [], []
    for k, (image, image_boxes, cats) in enumerate(zip(images, boxes, category_ids, strict=True)):
        name = f"data/image-{k:04d}.png"
        cv2.imwrite(str(folder / name), image)
        entries.append({"id": 100 + k, "file_name": name, "width": image.shape[1], "height": image.shape[0]})
        for box, cat in zip(image_boxes, cats, strict=True):
            anns.append({"id": len(anns) + 1, "image_id": 100 + k, "category_id": cat, "bbox": list(box),
                         "area": float(box[2] * box[3]), "iscrowd": 0})  # fmt: skip
    coco = {"images": entries, "annotations": anns,
            "categories": [{"id": cid, "name": name} for cid, name in categories]}  # fmt: skip
    (folder / "coco.json").write_text(json.dumps(coco))
    return folder
