"""Shared fixtures: tiny datasets generated on the fly (nothing binary lives in the repo)."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

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
            anns.append(
                {
                    "id": len(anns) + 1,
                    "image_id": 100 + k,
                    "category_id": cat,
                    "bbox": list(box),
                    "area": float(box[2] * box[3]),
                    "iscrowd": 0,
                }
            )
    coco = {
        "images": entries,
        "annotations": anns,
        "categories": [{"id": cid, "name": name} for cid, name in categories],
    }
    (folder / "coco.json").write_text(json.dumps(coco))
    return folder


RGB_SIZES = ((48, 64), (60, 52), (40, 40))  # (height, width) of the rgb_root frames, in turn


@pytest.fixture(scope="session")
def rgb_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny RGB dataset: ``images_rgb_train/`` with 9 colour PNGs of 3 sizes, one box each.

    Each frame is a coloured background with a differently coloured object; frame ``k`` is
    ``RGB_SIZES[k % 3]``, so every batch of 3 or more mixes sizes as FLIR's RGB frames do.
    """
    root = tmp_path_factory.mktemp("rgb")
    rng = np.random.default_rng(0)
    images, boxes = [], []
    for k in range(9):
        h, w = RGB_SIZES[k % 3]
        rgb = np.empty((h, w, 3), np.uint8)
        rgb[:] = rng.integers(20, 120, 3)
        rgb += rng.integers(0, 8, (h, w, 3), dtype=np.uint8)  # channels differ pixel by pixel
        x, y, bw, bh = int(rng.integers(0, w // 2)), int(rng.integers(0, h // 2)), w // 3, h // 3
        rgb[y : y + bh, x : x + bw] = rng.integers(150, 256, 3)
        images.append(np.ascontiguousarray(rgb[:, :, ::-1]))  # cv2 writes B, G, R
        boxes.append([[x, y, bw, bh]])
    write_split(root / "images_rgb_train", images, boxes, [[1 + 2 * (k % 2)] for k in range(9)])
    return root


@pytest.fixture(autouse=True)
def _no_inherited_shard(monkeypatch: pytest.MonkeyPatch) -> None:
    """Tests run as one process even under a launcher that sets torchrun's variables."""
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE"):
        monkeypatch.delenv(name, raising=False)


def count_boxes_on_pixels(samples: Iterable[tuple[Any, dict[str, Any]]], mask_of: Callable[[Any], np.ndarray]) -> int:
    """Assert each sample's single box covers its object's pixels (IoU >= 0.9); return how many were checked.

    ``mask_of(image)`` marks the object's pixels; samples whose object is gone or tiny are skipped.
    """
    from flirdata.boxes import box_iou

    checked = 0
    for k, (image, target) in enumerate(samples):
        mask = mask_of(image)
        if len(target["boxes"]) == 0 or mask.sum() < 100:
            continue
        ys, xs = np.nonzero(mask)
        drawn = np.array([[xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]], float)
        iou = box_iou(target["boxes"].numpy(), drawn)[0, 0]
        assert iou >= 0.9, f"sample {k}: box {target['boxes'].tolist()} vs pixels {drawn.tolist()}"
        checked += 1
    return checked


CLIENTS = Path(__file__).resolve().parent / "clients"


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--clients",
        action="store_true",
        help="also collect tests/clients, the tier run with the real torchvision, pycocotools and Ultralytics "
        "(bash .ci/clients builds its environment and runs it)",
    )


def pytest_ignore_collect(collection_path: Path, config: pytest.Config) -> bool | None:
    """tests/clients needs the client tier's environment: the main suite never collects it."""
    if collection_path == CLIENTS and not config.getoption("--clients"):
        return True
    return None
