"""Helpers the test modules share: tiny datasets, the loader contract, process and segment probes.

Test modules import from here (``from support import ...``), never from one another. Fixtures
live in ``conftest.py``; this module holds plain functions and classes.
"""

from __future__ import annotations

import hashlib
import json
import os
import pickle
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import psutil
import pytest
import torch

__all__ = [
    "BATCH",
    "IN_PROCESS",
    "RAY_PROCESSES",
    "RGB_SIZES",
    "ProbeDataset",
    "ToyDataset",
    "assert_same_batch",
    "backend_params",
    "check_backend",
    "count_boxes_on_pixels",
    "digest_sample",
    "our_children",
    "our_segments",
    "reference",
    "run_epochs",
    "use_shared_ray_for",
    "write_split",
]

BATCH = 5  # 24 training images: four full batches and a short one
IN_PROCESS = ("sequential", "threads")  # backends whose workers are this process: the quick tier runs them
RAY_PROCESSES = ("gcs_server", "raylet", "ray::")  # the names of what a local Ray instance starts
RGB_SIZES = ((48, 64), (60, 52), (40, 40))  # (height, width) of the rgb_root frames, in turn


# -- backends over the two tiers --------------------------------------------------------------------


def backend_params(names: Iterable[str]) -> list[Any]:
    """``names`` as parameters, those that start processes (pools, Ray) marked slow."""
    return [name if name in IN_PROCESS else pytest.param(name, marks=pytest.mark.slow) for name in names]


def use_shared_ray_for(backend: str, request: pytest.FixtureRequest) -> None:
    """On "ray", use the session's local instance (``shared_ray``) instead of starting one for the test."""
    if backend == "ray":
        request.getfixturevalue("shared_ray")


# -- tiny datasets ------------------------------------------------------------------------------


class ToyDataset:
    """Images and boxes drawn from (seed, epoch, i); optionally logs every fetch to a folder."""

    def __init__(
        self,
        size: int = 40,
        shape: tuple[int, ...] = (1, 16, 20),
        seed: int = 0,
        log_dir: Path | None = None,
        grow: bool = False,
    ) -> None:
        self.size, self.shape, self.seed, self.log_dir, self.grow = size, shape, seed, log_dir, grow
        self.epoch = 0

    def __len__(self) -> int:
        return self.size

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __getitem__(self, i: int) -> tuple[torch.Tensor, dict[str, Any]]:
        rng = np.random.default_rng([self.seed, self.epoch, i])
        shape = (self.shape[0], self.shape[1] * (1 + i // 4), self.shape[2]) if self.grow else self.shape
        image = torch.from_numpy(rng.integers(0, 256, shape, dtype=np.uint8))
        boxes = torch.from_numpy(rng.uniform(0, 10, (i % 3, 4)).astype(np.float32))
        if self.log_dir is not None:
            (self.log_dir / f"{self.epoch}-{i}").touch()
        return image, {"boxes": boxes, "labels": torch.arange(i % 3), "image_id": i}


class ProbeDataset(ToyDataset):
    """Reports how the worker that loaded a sample is set up and how often it received the dataset."""

    unpickles = 0  # per process: how many copies of the dataset reached this process

    def __setstate__(self, state: dict[str, Any]) -> None:
        type(self).unpickles += 1
        self.__dict__.update(state)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, dict[str, Any]]:
        image, target = super().__getitem__(i)
        target.update(
            pid=os.getpid(),
            cv2=cv2.getNumThreads(),
            torch=torch.get_num_threads(),
            omp=os.environ.get("OMP_NUM_THREADS"),
            unpickles=type(self).unpickles,
        )
        return image, target


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


# -- the loader contract ------------------------------------------------------------------------


def run_epochs(loader: Any, epochs: tuple[int, ...]) -> dict[int, list[Any]]:
    out = {}
    for epoch in epochs:
        loader.set_epoch(epoch)
        out[epoch] = list(loader)
    return out


# Keyed by the dataset's pickled bytes (what every worker receives), never by id(): Python
# reuses the id of a dataset that is gone for the next one.
_REFERENCE: dict[tuple, dict[int, list[Any]]] = {}


def reference(dataset: Any, epochs: tuple[int, ...], **options: Any) -> dict[int, list[Any]]:
    """The "sequential" backend's batches of ``dataset`` for ``epochs`` (computed once per content)."""
    from flirdata.loader import make_loader

    key = (hashlib.sha256(pickle.dumps(dataset)).hexdigest(), epochs, tuple(sorted(options.items())))
    if key not in _REFERENCE:
        with make_loader(dataset, backend="sequential", **options) as loader:
            _REFERENCE[key] = run_epochs(loader, epochs)
    return _REFERENCE[key]


def assert_same_batch(got: Any, expected: Any) -> None:
    images, targets = got
    want_images, want_targets = expected
    assert images.dtype == want_images.dtype and images.shape == want_images.shape
    assert images.numpy().tobytes() == want_images.numpy().tobytes()
    assert len(targets) == len(want_targets)
    for target, want in zip(targets, want_targets, strict=True):
        assert target["image_id"] == want["image_id"]
        for key in ("boxes", "labels"):
            assert target[key].dtype == want[key].dtype and torch.equal(target[key], want[key])


def check_backend(dataset: Any, backend: str, workers: int, epochs: tuple[int, ...] = (0, 1), **options: Any) -> Any:
    """Assert the loader contract for one backend and worker count; return the (closed) loader."""
    from flirdata.loader import make_loader

    options = {"batch_size": BATCH, "shuffle": True, "seed": 0, **options}
    loader = pickle.loads(pickle.dumps(make_loader(dataset, backend=backend, workers=workers, **options)))
    expected = reference(dataset, epochs, **options)
    with loader:
        got = run_epochs(loader, epochs)
        for epoch in epochs:
            assert len(got[epoch]) == len(loader) == len(expected[epoch])
            for batch, want in zip(got[epoch], expected[epoch], strict=True):
                assert_same_batch(batch, want)
    if len(epochs) > 1:  # new augmentations (and, shuffled, a new order) every epoch
        first, second = (b[0].numpy().tobytes() for b in (got[epochs[0]][0], got[epochs[1]][0]))
        assert first != second
    return loader


def digest_sample(sample: tuple[torch.Tensor, dict]) -> str:
    """sha256 of a sample's image, boxes and labels."""
    image, target = sample
    h = hashlib.sha256(image.numpy().tobytes())
    h.update(target["boxes"].numpy().tobytes())
    h.update(target["labels"].numpy().tobytes())
    return h.hexdigest()


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


# -- what a test leaves behind --------------------------------------------------------------------


def our_segments() -> set[str]:
    """This process's flirdata shared-memory segments in /dev/shm."""
    from flirdata.backends._shm import SEGMENT_PREFIX

    prefix = f"{SEGMENT_PREFIX}{os.getpid()}-"
    return {name for name in os.listdir("/dev/shm") if name.startswith(prefix)}


def our_children() -> list[psutil.Process]:
    """This process's descendants, less a shared Ray instance's (its raylet starts and ends workers at will)."""
    found, ray_tree = [], set()
    for child in psutil.Process().children(recursive=True):
        try:
            if child.ppid() in ray_tree or any(name in " ".join(child.cmdline()) for name in RAY_PROCESSES):
                ray_tree.add(child.pid)
                continue
        except psutil.Error:
            continue
        found.append(child)
    return found


def export_argv(source: Path, out: Path, backend: str, *extra: str, seed: int = 7) -> list[str]:
    """``flirdata export`` of 8 augmented copies of ``source``'s train split into ``out`` on 2 workers."""
    return [
        "export",
        str(source),
        "--out",
        str(out),
        "--copies",
        "8",
        "--seed",
        str(seed),
        "--batch-size",
        "4",
        "--backend",
        backend,
        "--workers",
        "2",
        "--no-progress",
        *extra,
    ]
