"""``FlirDetection``: the FLIR ADAS v2 detection dataset as a map-style torch Dataset."""

from __future__ import annotations

import copy
import threading
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch.utils.data import Dataset

from flirdata.boxes import clip_xyxy, coco_to_xyxy, valid_mask
from flirdata.coco import CocoIndex, load_coco
from flirdata.errors import DataError, ImageError
from flirdata.images import read_gray
from flirdata.seeding import reseed_transform, sample_seed_sequence
from flirdata.transforms import ensure_detection_compose

__all__ = ["SPLITS", "ON_ERROR", "BadImageWarning", "FlirDetection", "resolve_split"]

# Split name -> folder name in the FLIR ADAS v2 download.
SPLITS: dict[str, str] = {
    "train": "images_thermal_train",
    "val": "images_thermal_val",
    "test": "video_thermal_test",
}
ON_ERROR = ("raise", "skip")

Target = dict[str, Any]


class BadImageWarning(UserWarning):
    """A bad image was replaced by another sample (``on_error="skip"``)."""


def resolve_split(root: str | Path, split: str | Path) -> Path:
    """The folder holding ``coco.json`` for a split name or a path.

    ``split`` is one of ``SPLITS`` (a folder of ``root``) or a folder holding ``coco.json``
    (absolute, relative to the working directory, or relative to ``root``).
    """
    root = Path(root)
    if str(split) in SPLITS:
        if not root.is_dir():
            raise DataError(f"{root}: dataset folder not found")
        folder = root / SPLITS[str(split)]
        if not (folder / "coco.json").is_file():
            raise DataError(f"{folder / 'coco.json'}: not found (split {split!r} of dataset {root})")
        return folder
    for folder in (Path(split), root / split):
        if (folder / "coco.json").is_file():
            return folder
    raise DataError(f"split {str(split)!r}: expected one of {sorted(SPLITS)} or a folder holding coco.json")


class FlirDetection(Dataset):
    """FLIR ADAS v2 thermal detection samples with a reproducible bbox-aware augmentation.

    ``ds[i]`` returns ``(image, target)``: ``image`` is ``uint8 [1, H, W]``; ``target`` holds
    ``boxes`` (``float32 [N, 4]`` xyxy pixels), ``labels`` (``int64 [N]``, 1..K, names in
    ``classes``) and ``image_id`` (the COCO id), as torchvision detection models take them.

    The augmentation of sample ``i`` is a pure function of ``(seed, epoch, i)``: the same bytes
    in the main process, a thread or any worker, in any order. Each thread runs its own copy
    of the pipeline, so threads never share an RNG.

    Args:
        root: dataset folder (holding ``images_thermal_train/`` etc.).
        split: "train", "val", "test", or a folder holding ``coco.json``.
        transform: an albumentations pipeline (``build_transform(...)`` or a user's own);
            ``None`` returns the decoded image and cleaned boxes unchanged.
        seed: base seed of the augmentation.
        classes: class names in label order; default ``FLIR_CLASSES`` plus extra used names.
        on_error: "raise" on a bad image, or "skip" to replace it by the next good sample
            (one ``BadImageWarning`` per file, counted in ``skipped``). Worker processes
            keep their own copy of the dataset, so their warnings and counts stay there;
            ``flirdata check`` reports every bad file up front.
    """

    def __init__(
        self,
        root: str | Path,
        split: str | Path = "train",
        transform: Any = None,
        seed: int = 0,
        *,
        classes: Sequence[str] | None = None,
        on_error: Literal["raise", "skip"] = "raise",
    ) -> None:
        if on_error not in ON_ERROR:
            raise ValueError(f"on_error must be one of {ON_ERROR}, got {on_error!r}")
        sample_seed_sequence(seed, 0, 0)  # validates the seed now, not in a worker
        self.root = Path(root)
        self.split_dir = resolve_split(root, split)
        self.index: CocoIndex = load_coco(self.split_dir / "coco.json", classes)
        self.transform = None if transform is None else ensure_detection_compose(transform)
        self.seed = seed
        self.epoch = 0
        self.on_error = on_error
        self.skipped = 0
        self._warned: set[str] = set()
        self._local = threading.local()
        self._lock = threading.Lock()

    # -- pickling: thread-local caches and locks do not cross process boundaries --------
    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        del state["_local"], state["_lock"]
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._local = threading.local()
        self._lock = threading.Lock()

    @property
    def classes(self) -> tuple[str, ...]:
        """``classes[label]`` is the class name; index 0 is the background."""
        return ("__background__", *self.index.classes)

    @property
    def stats(self) -> dict[str, int]:
        """Counts of what loading repaired: dropped and clipped boxes, skipped images."""
        return {**self.index.stats, "skipped_images": self.skipped}

    def __len__(self) -> int:
        return len(self.index)

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch whose augmentations ``ds[i]`` returns."""
        sample_seed_sequence(self.seed, epoch, 0)
        self.epoch = int(epoch)

    def image_path(self, i: int) -> Path:
        return self.split_dir / self.index.file_name(i)

    def load_raw(self, i: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``(image uint8 [H, W], boxes coco [N, 4], labels [N])`` before augmentation."""
        k = self._check_index(i)
        image = read_gray(self.image_path(k), (int(self.index.heights[k]), int(self.index.widths[k])))
        boxes, labels = self.index.annotations(k)
        return image, boxes, labels

    def __getitem__(self, i: int) -> tuple[torch.Tensor, Target]:
        return self.sample(i)

    def sample(self, i: int, epoch: int | None = None) -> tuple[torch.Tensor, Target]:
        """``ds[i]`` as augmented in ``epoch`` (default: the current one), without mutating ``ds``.

        Safe to call from many threads at once with different epochs (export uses it to
        draw copy ``k`` of an image as its augmentation in epoch ``k``).
        """
        k = self._check_index(i)
        epoch = self.epoch if epoch is None else epoch
        image, boxes, labels, source = self._load_or_skip(k)
        image, xyxy, labels = self._augment(image, boxes, labels, k, epoch)
        target = {
            "boxes": torch.from_numpy(xyxy.astype(np.float32, copy=False)),
            "labels": torch.from_numpy(labels.astype(np.int64, copy=False)),
            "image_id": int(self.index.image_ids[source]),
        }
        return torch.from_numpy(image)[None], target

    def _check_index(self, i: int) -> int:
        n = len(self)
        if not -n <= i < n:
            raise IndexError(f"index {i} out of range for a dataset of {n} images")
        return int(i) % n

    def _load_or_skip(self, k: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
        """Load sample ``k``; with ``on_error="skip"`` fall back to the next good sample."""
        for step in range(len(self)):
            source = (k + step) % len(self)
            try:
                return (*self.load_raw(source), source)
            except ImageError as exc:
                if self.on_error == "raise":
                    raise
                self._note_bad(source, exc)
        raise DataError(f"{self.split_dir}: no readable image in the whole split")

    def _note_bad(self, source: int, exc: ImageError) -> None:
        name = str(self.image_path(source))
        with self._lock:
            self.skipped += 1
            first = name not in self._warned
            self._warned.add(name)
        if first:
            warnings.warn(f"skipping bad image: {exc}", BadImageWarning, stacklevel=4)

    def _pipeline(self) -> Any:
        """This thread's own copy of the transform (threads must not share its RNG)."""
        pipeline = getattr(self._local, "pipeline", None)
        if pipeline is None:
            pipeline = self._local.pipeline = copy.deepcopy(self.transform)
        return pipeline

    def _augment(
        self, image: np.ndarray, boxes: np.ndarray, labels: np.ndarray, k: int, epoch: int
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        if self.transform is None:
            return image, coco_to_xyxy(boxes), labels
        pipeline = self._pipeline()
        reseed_transform(pipeline, sample_seed_sequence(self.seed, epoch, k))
        voc = pipeline.processors["bboxes"].params.format == "pascal_voc"
        out = pipeline(image=image, bboxes=coco_to_xyxy(boxes) if voc else boxes, labels=labels)
        result = np.ascontiguousarray(out["image"])
        if result.ndim == 3:
            result = result[:, :, 0]
        out_boxes = np.asarray(out["bboxes"], dtype=np.float64).reshape(-1, 4)
        xyxy = clip_xyxy(out_boxes if voc else coco_to_xyxy(out_boxes), result.shape[1], result.shape[0])
        keep = valid_mask(xyxy)
        return result, xyxy[keep], np.asarray(out["labels"], dtype=np.int64).reshape(-1)[keep]


