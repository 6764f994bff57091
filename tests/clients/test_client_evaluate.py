"""Evaluation with the real torchvision and pycocotools: the README's recipe and ``flirdata.evaluate``.

The README's "Evaluating" section runs after its Faster R-CNN recipe, on the model that recipe
trained; ground truth fed back as torchvision-style detections scores AP 1.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from readme_code import run_python

import flirdata as fd

FASTER_RCNN = "torchvision (Faster R-CNN)"
EVALUATING = "Evaluating"  # the README section that shows the evaluation recipe
COCO_STATS = {"AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", "AR100", "ARs", "ARm", "ARl"}


def _stats(namespace: dict) -> dict:
    """The dict of the 12 COCO stats that the recipe computed (whatever it named it)."""
    found = [value for value in namespace.values() if isinstance(value, dict) and COCO_STATS <= set(value)]
    assert found, "the evaluation recipe computed no dict of the 12 COCO stats"
    return found[-1]


@pytest.mark.slow
def test_readme_evaluation_recipe_scores_the_trained_model(readme_dir: Callable[..., Path]) -> None:
    readme_dir(train=2, val=2)
    namespace = run_python(EVALUATING, run_python(FASTER_RCNN, {}))
    stats = _stats(namespace)
    assert all(-1.0 <= float(stats[name]) <= 1.0 for name in COCO_STATS), stats


def test_ground_truth_as_torchvision_detections_scores_ap_1(readme_dir: Callable[..., Path]) -> None:
    readme_dir(train=1, val=4)
    val = fd.FlirDetection("data", split="val", transform=fd.build_transform("none"))
    detections = []
    for _, target in (val[i] for i in range(len(val))):
        n = len(target["boxes"])  # as a torchvision model returns them: tensors, float scores
        boxes, labels = target["boxes"], target["labels"]
        detections.append({"image_id": target["image_id"], "boxes": boxes, "scores": torch.ones(n), "labels": labels})
    stats = fd.evaluate(val, detections)
    assert set(stats) >= COCO_STATS
    assert stats["AP"] == pytest.approx(1.0) and stats["AP50"] == pytest.approx(1.0)
