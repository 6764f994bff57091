"""``FlirDetection``: the FLIR ADAS v2 detection dataset as a map-style torch Dataset."""

from __future__ import annotations

import copy
import operator
import threading
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch.utils.data import Dataset

from flirdata._validate import check_int
from flirdata.boxes import box_area, clip_valid_xyxy, coco_to_xyxy
from flirdata.cache import FrameCache, build_cache, check_cache
from flirdata.coco import CocoIndex, load_coco
from flirdata.direct import direct_plan
from flirdata.errors import DataError, ImageError, ShmCapacityWarning
from flirdata.images import (
    MAX_IMAGE_BYTES,
    MODALITIES,
    as_chw,
    check_modality,
    dataset_folder,
    infer_modality,
    read_image,
)
from flirdata.names import SPLITS  # split name -> folder, defined where light modules read it
from flirdata.sampler import MAX_EPOCH
from flirdata.seeding import reseed_transform, sample_seed_sequence
from flirdata.transforms import ensure_detection_compose

__all__ = ["SPLITS", "ON_ERROR", "BadImageWarning", "FlirDetection", "resolve_split"]

ON_ERROR = ("raise", "skip")

Target = dict[str, Any]


def _shared_epoch(epoch: int) -> torch.Tensor:
    """A 0-d int64 tensor in shared memory: torch's pickler hands the same memory to workers.

    Where /dev/shm cannot take even its one page (full, or not mounted): one
    ``ShmCapacityWarning`` and a tensor of this process. flirdata's loaders send the epoch with
    every task, so only a plain DataLoader's persistent workers would miss a later ``set_epoch``.
    """
    cell = torch.tensor(epoch, dtype=torch.int64)
    try:
        return cell.share_memory_()
    except RuntimeError as exc:  # torch: "unable to allocate shared memory(shm) for file ...: No space left"
        warnings.warn(
            f"flirdata: /dev/shm cannot hold the dataset's epoch ({exc}); it is kept in this process: "
            "flirdata's loaders send it with every task, but a plain DataLoader's persistent workers "
            "will not see set_epoch. Free space in /dev/shm (in docker: a larger --shm-size).",
            ShmCapacityWarning,
            stacklevel=3,
        )
        return cell


def _row_indices(rows: Any) -> list[int]:
    """``rows`` as ints; bools are refused (True would silently mean row 1)."""
    try:
        values = list(rows)
        if any(isinstance(r, (bool, np.bool_)) for r in values):
            raise TypeError("bool row")
        return [operator.index(r) for r in values]
    except TypeError:
        raise TypeError(f"rows must be a sequence of integer indices, got {rows!r}") from None


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
    """FLIR ADAS v2 detection samples (thermal or RGB) with a reproducible bbox-aware augmentation.

    ``ds[i]`` returns ``(image, target)``: ``image`` is ``uint8 [C, H, W]`` (``C = ds.channels``:
    1 for thermal, 3 for RGB in R, G, B order); ``target`` holds
    ``boxes`` (``float32 [N, 4]`` xyxy pixels), ``labels`` (``int64 [N]``, 1..K, names in
    ``classes``), ``area`` (``float32 [N]``, each box's area after augmentation), ``iscrowd``
    (``int64 [N]``, from ``coco.json``) and ``image_id`` (the COCO id), as torchvision's
    detection models and references read them.

    The augmentation of sample ``i`` is a pure function of ``(seed, epoch, i)``: the same bytes
    in the main process, a thread or any worker, in any order. Each thread runs its own copy
    of the pipeline, so threads never share an RNG.

    Args:
        root: dataset folder (holding ``images_thermal_train/`` etc.).
        split: a key of ``SPLITS`` ("train", "val", "test", "rgb_train", "rgb_val",
            "rgb_test"), or a folder holding ``coco.json``.
        transform: an albumentations pipeline (``build_transform(...)`` or a user's own);
            ``None`` returns the decoded image and cleaned boxes unchanged.
        seed: base seed of the augmentation.
        classes: class names in label order; default ``FLIR_CLASSES`` plus extra used names.
        on_error: "raise" on a bad image, or "skip" to replace it by the next good sample
            (one ``BadImageWarning`` per file, counted in ``skipped``). Worker processes
            keep their own copy of the dataset, so their warnings and counts stay there;
            ``flirdata check`` reports every bad file up front.
        modality: "thermal" (grey frames) or "rgb" (colour frames); default inferred from
            the split folder's name (``images_rgb_*``, ``video_rgb_*`` are RGB). A file whose
            channels do not match raises ``ImageError``.
        max_image_bytes: the largest image file read (default ``MAX_IMAGE_BYTES``, 64 MiB); a
            larger one raises ``ImageError`` after at most this many bytes plus one were read.
        cache: None (decode every read) or "ram": keep each decoded frame once in one shared-memory
            segment that worker processes read without copies (``flirdata.cache``); samples are
            byte-identical to no cache. A bad image is never cached.
        cache_bytes: the cache's budget (default: half the free space of /dev/shm). Over budget,
            the first images that fit are cached, the rest decoded on every read, with one
            ``CacheCapacityWarning`` naming the sizes.
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
        modality: str | None = None,
        max_image_bytes: int = MAX_IMAGE_BYTES,
        cache: Literal["ram"] | None = None,
        cache_bytes: int | None = None,
    ) -> None:
        if on_error not in ON_ERROR:
            raise ValueError(f"on_error must be one of {ON_ERROR}, got {on_error!r}")
        sample_seed_sequence(seed, 0, 0)  # validates the seed now, not in a worker
        self.root = Path(root)
        self.split_dir = resolve_split(root, split)
        # Files and symlink targets must stay in the dataset folder: coco.json is data, not a licence to read /etc.
        self._within = dataset_folder(self.root, self.split_dir)  # resolved once, not per read
        self.modality = infer_modality(self.split_dir) if modality is None else check_modality(modality)
        self.max_image_bytes = check_int("max_image_bytes", max_image_bytes, 1, expected="a positive int")
        self.index: CocoIndex = load_coco(self.split_dir / "coco.json", classes)
        self.transform = None if transform is None else ensure_detection_compose(transform)
        self.seed = seed
        self._epoch = _shared_epoch(0)
        self.on_error = on_error
        self.skipped = 0
        self._warned: set[str] = set()
        self._local = threading.local()
        self._lock = threading.Lock()
        self._keys: np.ndarray | None = None  # seeding key of each row (None: its own index); see subset
        # Keyed like _keys (rows of the full split), so subsets share it.
        self._cache: FrameCache | None = None
        if check_cache(cache) == "ram":
            self._cache = build_cache(self.index.heights, self.index.widths, self.channels, cache_bytes)

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
    def channels(self) -> int:
        """Image channels: 1 for thermal, 3 for RGB."""
        return MODALITIES[self.modality]

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

    @property
    def epoch(self) -> int:
        """The epoch whose augmentations ``ds[i]`` returns (see ``set_epoch``)."""
        return int(self._epoch)

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch whose augmentations ``ds[i]`` returns, here and in every worker.

        The epoch lives in shared memory that travels with the dataset to torch ``DataLoader``
        workers (fork, forkserver and spawn), so ``ds.set_epoch(e)`` in the main process
        reaches persistent workers too. A copy made with ``pickle.dumps`` outside a process
        start, or ``copy.deepcopy``, has its own epoch.
        """
        self._epoch.fill_(check_int("epoch", epoch, 0, MAX_EPOCH))

    def image_path(self, i: int) -> Path:
        return self.split_dir / self.index.file_name(i)

    def load_raw(self, i: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``(image, boxes coco [N, 4], labels [N])`` before augmentation.

        ``image`` is ``uint8 [H, W]`` (thermal) or ``uint8 [H, W, 3]`` RGB (rgb).
        With ``cache="ram"`` it is a read-only view of the shared cache.
        """
        return self._load(self._check_index(i))

    def _load(self, k: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``load_raw`` of a row already checked."""
        if self._cache is None:
            image = self._decode(k)
        else:
            image = self._cache.get(self._key(k), lambda: self._decode(k))
        boxes, labels = self.index.annotations(k)
        return image, boxes, labels

    def _decode(self, k: int) -> np.ndarray:
        expect_hw = (int(self.index.heights[k]), int(self.index.widths[k]))
        path = self.image_path(k)
        return read_image(path, expect_hw, self.modality, within=self._within, max_bytes=self.max_image_bytes)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, Target]:
        return self.sample(i)

    def sample(self, i: int, epoch: int | None = None) -> tuple[torch.Tensor, Target]:
        """``ds[i]`` as augmented in ``epoch`` (default: the current one), without mutating ``ds``.

        Safe to call from many threads at once with different epochs (export uses it to
        draw copy ``k`` of an image as its augmentation in epoch ``k``).
        """
        k = self._check_index(i)
        epoch = self.epoch if epoch is None else check_int("epoch", epoch, 0, MAX_EPOCH)
        image, boxes, labels, source = self._load_or_skip(k)
        image, xyxy, area, kept = self._augment(image, boxes, self._key(k), epoch)
        target = {
            "boxes": torch.from_numpy(xyxy.astype(np.float32)),
            "labels": torch.from_numpy(labels[kept].astype(np.int64, copy=False)),
            "image_id": int(self.index.image_ids[source]),
            "area": torch.from_numpy(area.astype(np.float32)),
            "iscrowd": torch.from_numpy(self.index.crowd_flags(source)[kept].astype(np.int64)),
        }
        chw = as_chw(image)
        if not chw.flags.writeable:  # a cached frame passed through unchanged: the caller owns its tensor
            chw = chw.copy()
        return torch.from_numpy(chw), target

    def subset(self, rows: Sequence[int]) -> FlirDetection:
        """A dataset of the images ``rows`` (in that order) that keeps each image's augmentation.

        ``ds.subset(rows).sample(j, e)`` is ``ds.sample(rows[j], e)``, byte for byte: the
        augmentation stays keyed by the image's index in the full split (a dataset cut to
        those rows would re-key them and draw others). Transform, seed, classes, modality and
        ``on_error`` are shared; the subset has its own epoch (starting at this one's) and its
        own ``skipped`` count. A subset of a subset keeps the keys of the full split.

        Raises:
            TypeError: ``rows`` is not a sequence of integers.
            IndexError: a row is out of range (negative rows count from the end).
        """
        local = np.asarray([self._check_index(r) for r in _row_indices(rows)], dtype=np.int64)
        part = copy.copy(self)  # through __getstate__/__setstate__: fresh locks and thread-local caches
        part.index = self.index.subset(local)
        part._keys = local if self._keys is None else self._keys[local]
        part._epoch = _shared_epoch(self.epoch)
        part.skipped, part._warned = 0, set()
        return part

    def _check_index(self, i: int) -> int:
        if isinstance(i, (bool, np.bool_)) or not hasattr(i, "__index__"):
            raise TypeError(f"dataset indices must be integers, got {type(i).__name__} {i!r}")
        n = len(self)
        if not -n <= i < n:
            raise IndexError(f"index {i} out of range for a dataset of {n} images")
        return operator.index(i) % n

    def _key(self, k: int) -> int:
        """Row ``k``'s index in the full split: its seeding key and its place in the cache."""
        return k if self._keys is None else int(self._keys[k])

    def _load_or_skip(self, k: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
        """Load sample ``k``; with ``on_error="skip"`` fall back to the next good sample."""
        for step in range(len(self)):
            source = (k + step) % len(self)
            try:
                return (*self._load(source), source)
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
            self._local.plan = direct_plan(pipeline)  # the fused presets skip Compose (flirdata.direct)
        return pipeline

    def _check_channels(self, image: np.ndarray) -> np.ndarray:
        """The transform's output image as ``[H, W]`` (thermal) or ``[H, W, 3]`` (rgb), or a ValueError."""
        if image.ndim == 3 and image.shape[2] == 1 and self.channels == 1:  # albumentations' grey [H, W, 1]
            return image[:, :, 0]
        expected = image.ndim == 2 if self.channels == 1 else image.ndim == 3 and image.shape[2] == self.channels
        if not expected:
            shapes = "[H, W] or [H, W, 1]" if self.channels == 1 else f"[H, W, {self.channels}]"
            raise ValueError(
                f"the transform returned an image of shape {list(image.shape)}, but split {self.split_dir} is "
                f"{self.modality} ({self.channels} channel{'s' if self.channels > 1 else ''}): expected {shapes}"
            )
        return image

    def _augment(
        self, image: np.ndarray, boxes: np.ndarray, k: int, epoch: int
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """``(image, xyxy boxes, their areas, positions)``: ``positions`` are the input rows of the kept boxes."""
        if self.transform is None:
            xyxy = coco_to_xyxy(boxes)
            return image, xyxy, box_area(xyxy), np.arange(len(boxes))
        pipeline = self._pipeline()
        seeds = sample_seed_sequence(self.seed, epoch, k)
        plan = self._local.plan
        if plan is not None:  # the same samples as the Compose below, without its plumbing
            result, coco, rows = plan(image, boxes, seeds)  # float64 [M, 4] and int64 [M] already
            result = self._check_channels(np.ascontiguousarray(result))
            xyxy, area, keep = clip_valid_xyxy(coco_to_xyxy(coco), result.shape[1], result.shape[0])
            return result, xyxy, area, rows[keep]
        voc = pipeline.processors["bboxes"].params.format == "pascal_voc"
        reseed_transform(pipeline, seeds)
        # The label field carries each box's row, so labels and iscrowd follow the kept boxes.
        rows = np.arange(len(boxes), dtype=np.int64)
        out = pipeline(image=image, bboxes=coco_to_xyxy(boxes) if voc else boxes, labels=rows)
        result, out_boxes, out_rows = out["image"], out["bboxes"], out["labels"]
        result = self._check_channels(np.ascontiguousarray(result))
        out_boxes = np.asarray(out_boxes, dtype=np.float64).reshape(-1, 4)
        xyxy, area, keep = clip_valid_xyxy(
            out_boxes if voc else coco_to_xyxy(out_boxes), result.shape[1], result.shape[0]
        )
        return result, xyxy, area, np.asarray(out_rows, dtype=np.int64).reshape(-1)[keep]
