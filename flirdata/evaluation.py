"""``evaluate``: the 12 COCO box metrics of a detector's output on a flirdata dataset.

A detector sees ``dataset[i]`` and answers as torchvision's detection models do, one dict per
image plus the ``image_id`` its target carried::

    {"image_id": target["image_id"], "boxes": xyxy [N, 4], "scores": [N], "labels": [N]}

``evaluate`` speaks flirdata's terms, so nothing COCO-specific is left to get wrong:

* labels are the dataset's (1..K, ``dataset.classes``); it maps them to the ``coco.json``'s own
  category ids by name (FLIR's ids are not contiguous). A ``category_id`` key is refused.
* image ids are those of the file the dataset reads (a split, or a COCO export of it), the ids
  its targets carry.
* boxes are in the frame of the dataset's samples (what the detector saw). They are mapped back
  to each image's own pixels through the dataset's transform, which must only resize and pad
  (``build_transform("none")`` at any size, or ``transform=None``), and scored against the
  boxes the dataset holds in that frame (``flirdata.boxes.box_exists``), so ``APs``/``APm``/``APl``
  use COCO's area ranges on the real pixels.

The metrics are pycocotools' ``COCOeval`` (the ``eval`` extra); ``stats_table`` prints them as
``COCOeval.summarize`` does.
"""

from __future__ import annotations

import contextlib
import copy
import io
import operator
import warnings
from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np

from flirdata.boxes import clip_xyxy, coco_to_xyxy
from flirdata.errors import FlirdataError, MissingExtraError
from flirdata.seeding import reseed_transform, sample_seed_sequence

__all__ = ["DETECTION_KEYS", "STATS", "DetectionError", "evaluate", "stats_table"]

DETECTION_KEYS = ("image_id", "boxes", "scores", "labels")
# name -> (AP or AR, IoU, area, max detections): COCOeval.stats in its order
STATS: dict[str, tuple[str, str, str, int]] = {
    "AP": ("AP", "0.50:0.95", "all", 100),
    "AP50": ("AP", "0.50", "all", 100),
    "AP75": ("AP", "0.75", "all", 100),
    "APs": ("AP", "0.50:0.95", "small", 100),
    "APm": ("AP", "0.50:0.95", "medium", 100),
    "APl": ("AP", "0.50:0.95", "large", 100),
    "AR1": ("AR", "0.50:0.95", "all", 1),
    "AR10": ("AR", "0.50:0.95", "all", 10),
    "AR100": ("AR", "0.50:0.95", "all", 100),
    "ARs": ("AR", "0.50:0.95", "small", 100),
    "ARm": ("AR", "0.50:0.95", "medium", 100),
    "ARl": ("AR", "0.50:0.95", "large", 100),
}
PROBES = 4  # samples whose geometry must agree: a random flip or affine differs in one of them
_PROBE_ATOL = 0.05  # px: albumentations maps boxes through float32 ratios


class DetectionError(FlirdataError, ValueError):
    """Detections that do not fit the dataset: unknown image, label out of range, bad shape."""


def evaluate(dataset: Any, detections: Iterable[Mapping[str, Any]]) -> dict[str, float]:
    """Score detections on ``dataset``'s images with COCOeval; return the 12 COCO box metrics.

    Args:
        dataset: a ``FlirDetection`` (a split, a COCO export read as ``FlirDetection(OUT, split=OUT)``,
            or a subset); its transform must only resize and pad, e.g. ``build_transform("none")``.
        detections: one mapping per image, as torchvision's detection models return them plus
            the ``image_id`` of the image's target: ``boxes`` xyxy ``[N, 4]`` in the sample's
            pixels, ``scores [N]``, ``labels [N]`` in 1..K; torch tensors, numpy arrays or lists.
            Images without a mapping count as images where nothing was detected.

    Returns:
        ``{"AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", "AR100", "ARs", "ARm", "ARl"}``,
        COCOeval's ``stats`` (-1 where the images hold no ground truth of that size).

    Raises:
        DetectionError: a detection names an unknown image, a label outside 1..K, or has
            arrays of mismatched shapes.
        ValueError: the dataset's transform does more than resize and pad.
        MissingExtraError: pycocotools is not installed.
    """
    coco_cls, cocoeval_cls = _pycocotools()
    index = dataset.index
    rows = _first_rows(index.image_ids)
    maps = _frame_maps(dataset, {(int(index.heights[r]), int(index.widths[r])) for r in rows.values()})
    gt = _ground_truth(index, rows)
    results = _results(index, rows, maps, detections)
    with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
        # pycocotools' compiled helpers warn under numpy 2 about their own __array__: nothing of ours
        warnings.filterwarnings("ignore", "__array__ implementation", DeprecationWarning)
        truth, found = coco_cls(), coco_cls()
        truth.dataset, found.dataset = gt, {**gt, "annotations": results}
        truth.createIndex()
        found.createIndex()
        run = cocoeval_cls(truth, found, "bbox")
        run.evaluate()
        run.accumulate()
        run.summarize()
    return {name: float(value) for name, value in zip(STATS, run.stats, strict=True)}


def stats_table(stats: Mapping[str, float]) -> str:
    """The 12 lines ``COCOeval.summarize`` prints, from ``evaluate``'s result."""
    lines = []
    for name, (kind, iou, area, max_dets) in STATS.items():
        title = "Average Precision" if kind == "AP" else "Average Recall"
        lines.append(
            f" {title:<18} ({kind}) @[ IoU={iou:<9} | area={area:>6s} | maxDets={max_dets:>3d} ] = {stats[name]:0.3f}"
        )
    return "\n".join(lines)


# -- pycocotools ----------------------------------------------------------------------------------
def _pycocotools() -> tuple[type, type]:
    try:
        from pycocotools.coco import COCO
        from pycocotools.cocoeval import COCOeval
    except ImportError:
        raise MissingExtraError("flirdata.evaluate (COCO metrics through pycocotools)", "eval") from None
    return COCO, COCOeval


def _first_rows(image_ids: np.ndarray) -> dict[int, int]:
    """image id -> its first row (a subset may list an image twice; it is scored once)."""
    rows: dict[int, int] = {}
    for row, image_id in enumerate(image_ids.tolist()):
        rows.setdefault(int(image_id), row)
    return rows


def _ground_truth(index: Any, rows: dict[int, int]) -> dict[str, Any]:
    """The dataset's images and boxes in their own frame, with the file's ids, as a COCO dict."""
    labels = [label for label in range(1, len(index.classes) + 1) if index.category_ids[label] > 0]
    categories = [{"id": int(index.category_ids[label]), "name": index.classes[label - 1]} for label in labels]
    images, anns = [], []
    for image_id, row in rows.items():
        images.append({"id": image_id, "width": int(index.widths[row]), "height": int(index.heights[row])})
        lo, hi = int(index.box_start[row]), int(index.box_start[row + 1])
        spans = (index.boxes[lo:hi].tolist(), index.labels[lo:hi].tolist(), index.crowd[lo:hi].tolist())
        for box, label, crowd in zip(*spans, strict=True):
            anns.append(
                {
                    "id": len(anns) + 1,
                    "image_id": image_id,
                    "category_id": int(index.category_ids[label]),
                    "bbox": box,
                    "area": box[2] * box[3],
                    "iscrowd": int(crowd),
                }
            )
    return {"images": images, "annotations": anns, "categories": categories}


# -- the sample frame -------------------------------------------------------------------------------
def _frame_maps(dataset: Any, sizes: set[tuple[int, int]]) -> dict[tuple[int, int], tuple[np.ndarray, np.ndarray]]:
    """``(height, width) -> (scale [2], offset [2])``: a sample's pixel is ``source * scale + offset``.

    Measured by sending boxes through the dataset's own transform on a blank frame of each size,
    as ``PROBES`` different samples: a transform that moves them differently, or other than by
    scaling and shifting, has no one frame to map predictions back from.
    """
    transform = getattr(dataset, "transform", None)
    if transform is None:
        return {size: (np.ones(2), np.zeros(2)) for size in sizes}
    pipeline = copy.deepcopy(transform)  # reseeding must not touch the dataset's own RNG
    channels = getattr(dataset, "channels", 1)
    return {size: _probe(dataset, pipeline, size, channels) for size in sorted(sizes)}


def _probe(dataset: Any, pipeline: Any, size: tuple[int, int], channels: int) -> tuple[np.ndarray, np.ndarray]:
    height, width = size
    blank = np.zeros((height, width) if channels == 1 else (height, width, channels), np.uint8)
    # the whole frame, and an off-centre box no flip maps onto itself
    probe = np.array([[0, 0, width, height], [width / 8, height / 4, width / 4, height / 8]], np.float64)
    voc = pipeline.processors["bboxes"].params.format == "pascal_voc"
    seen = []
    for key in range(PROBES):
        reseed_transform(pipeline, sample_seed_sequence(dataset.seed, dataset.epoch, key))
        out = pipeline(image=blank, bboxes=coco_to_xyxy(probe) if voc else probe, labels=np.arange(2))
        boxes = np.asarray(out["bboxes"], np.float64).reshape(-1, 4)
        seen.append(boxes if voc else coco_to_xyxy(boxes))
    first = seen[0]
    if any(b.shape != first.shape or not np.allclose(b, first, atol=_PROBE_ATOL) for b in seen):
        raise ValueError(
            "evaluate: the dataset's transform moves boxes differently from sample to sample (random "
            "augmentation); predictions need one frame per image size: build the dataset with "
            "build_transform('none') or transform=None"
        )
    scale, offset = np.zeros(2), np.zeros(2)
    if len(first) == 2:
        scale, offset = (first[0, 2:] - first[0, :2]) / (width, height), first[0, :2]
    expected = coco_to_xyxy(probe[1:]) * np.tile(scale, 2) + np.tile(offset, 2)
    if len(first) != 2 or not np.allclose(first[1:], expected, atol=_PROBE_ATOL):
        raise ValueError(
            f"evaluate: the dataset's transform does more than resize and pad a {width}x{height} frame "
            "(it dropped or moved a box otherwise); build the dataset with build_transform('none') or transform=None"
        )
    return scale, offset


# -- detections -----------------------------------------------------------------------------------
def _array(value: Any) -> np.ndarray:
    if hasattr(value, "detach"):  # a torch tensor, maybe on a GPU or requiring grad
        value = value.detach().cpu().numpy()
    return np.asarray(value)


def _image_row(k: int, det: Any, index: Any, rows: dict[int, int]) -> int:
    if not isinstance(det, Mapping):
        what = type(det).__name__
        raise DetectionError(f"detections[{k}]: expected a mapping with keys {DETECTION_KEYS}, got {what}")
    if "category_id" in det:
        raise DetectionError(
            f"detections[{k}]: has 'category_id'; give 'labels' (1..{len(index.classes)}, as the targets carry them): "
            "evaluate maps them to the file's category ids"
        )
    missing = [key for key in DETECTION_KEYS if key not in det]
    if missing:
        raise DetectionError(f"detections[{k}]: missing {missing}; expected keys {DETECTION_KEYS}")
    try:
        image_id = operator.index(_array(det["image_id"]).reshape(()).item())
    except (TypeError, ValueError):
        raise DetectionError(f"detections[{k}]: image_id must be one integer, got {det['image_id']!r}") from None
    if image_id not in rows:
        ids = sorted(rows)
        span = f"{ids[0]}..{ids[-1]}" if ids else "none"
        raise DetectionError(
            f"detections[{k}]: image_id {image_id} is not an image of {index.path} "
            f"(its {len(ids)} image ids span {span}); use the image_id of the dataset's targets"
        )
    return rows[image_id]


def _checked(k: int, det: Mapping[str, Any], image_id: int, classes: int) -> tuple[np.ndarray, ...]:
    """``(boxes [N, 4] float64, scores [N], labels [N] int64)`` of one detection, validated."""
    where = f"detections[{k}] (image_id {image_id})"
    try:  # a JSON null, a string or a ragged list is the user's data, not a crash
        boxes, scores, labels = (_array(det[key]) for key in ("boxes", "scores", "labels"))
        if boxes.dtype == object or scores.dtype == object or labels.dtype == object:
            raise TypeError("not numbers")
        boxes.astype(np.float64), scores.astype(np.float64)
    except (TypeError, ValueError) as exc:
        raise DetectionError(f"{where}: boxes, scores and labels must be arrays of numbers ({exc})") from None
    n = len(scores.reshape(-1))
    if boxes.size == 0 and n == 0 and labels.size == 0:
        return np.zeros((0, 4)), np.zeros(0), np.zeros(0, np.int64)
    if boxes.shape != (n, 4) or scores.shape != (n,) or labels.shape != (n,):
        raise DetectionError(
            f"{where}: boxes {tuple(boxes.shape)}, scores {tuple(scores.shape)}, labels {tuple(labels.shape)}; "
            "expected boxes [N, 4], scores [N], labels [N]"
        )
    if not (np.issubdtype(labels.dtype, np.integer) and not np.issubdtype(labels.dtype, np.bool_)):
        raise DetectionError(f"{where}: labels must be integers 1..{classes}, got dtype {labels.dtype}")
    bad = (labels < 1) | (labels > classes)
    if bad.any():
        raise DetectionError(f"{where}: label {int(labels[bad][0])} is out of range; expected 1..{classes}")
    boxes, scores = boxes.astype(np.float64), scores.astype(np.float64)
    if not (np.isfinite(boxes).all() and np.isfinite(scores).all()):
        raise DetectionError(f"{where}: boxes and scores must be finite numbers")
    inverted = (boxes[:, 2] < boxes[:, 0]) | (boxes[:, 3] < boxes[:, 1])
    if inverted.any():
        raise DetectionError(
            f"{where}: box {boxes[inverted][0].tolist()} has x2 < x1 or y2 < y1; boxes are xyxy corners, not COCO xywh"
        )
    return boxes, scores, labels.astype(np.int64)


def _results(index: Any, rows: dict[int, int], maps: dict, detections: Iterable[Mapping[str, Any]]) -> list[dict]:
    """The detections as COCO result records in each image's own frame, with the file's ids."""
    results: list[dict[str, Any]] = []
    seen: set[int] = set()
    for k, det in enumerate(detections):
        row = _image_row(k, det, index, rows)
        image_id = int(index.image_ids[row])
        if image_id in seen:
            raise DetectionError(f"detections[{k}]: image_id {image_id} again; give one mapping per image")
        seen.add(image_id)
        boxes, scores, labels = _checked(k, det, image_id, len(index.classes))
        height, width = int(index.heights[row]), int(index.widths[row])
        scale, offset = maps[(height, width)]
        source = clip_xyxy((boxes - np.tile(offset, 2)) / np.tile(scale, 2), width, height)
        sides = source[:, 2:] - source[:, :2]
        columns = (source.tolist(), sides.tolist(), scores.tolist(), index.category_ids[labels].tolist())
        for box, side, score, category in zip(*columns, strict=True):
            if category == 0:  # a class the file does not declare: COCO scores only the file's categories
                continue
            results.append(
                {
                    "id": len(results) + 1,
                    "image_id": image_id,
                    "category_id": int(category),
                    "bbox": [box[0], box[1], side[0], side[1]],
                    "area": side[0] * side[1],
                    "score": score,
                    "iscrowd": 0,
                }
            )
    return results
