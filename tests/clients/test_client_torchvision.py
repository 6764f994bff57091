"""The README's torchvision recipes, run from its own text with the real torchvision."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from readme_code import adapt, commands, python_blocks, run_python, run_shell
from torchvision.ops import box_area

import flirdata as fd

FASTER_RCNN = "torchvision (Faster R-CNN)"
TRANSFORMS_V2 = "torchvision `transforms.v2`"
COCO_DETECTION = "torchvision `CocoDetection`"


@pytest.mark.slow
def test_faster_rcnn_recipe_trains_offline(readme_dir: Callable[..., Path]) -> None:
    readme_dir(train=2, val=2)
    ns = run_python(FASTER_RCNN, {})
    assert ns["epoch"] == 1 and torch.isfinite(ns["loss"])
    assert set(ns["losses"]) == {"loss_classifier", "loss_box_reg", "loss_objectness", "loss_rpn_box_reg"}
    grad = ns["model"].roi_heads.box_predictor.cls_score.weight.grad
    assert grad is not None and grad.abs().sum() > 0


def _v2_outputs(ns: dict) -> list[tuple[dict, dict]]:
    """(source target with rows tagged, v2 target) for every sample of ``ns["ds"]``, twice.

    ``iscrowd`` is replaced by each box's row number, so a kept row says which box it came from.
    """
    torch.manual_seed(0)
    pairs = []
    for _ in range(2):
        for i in range(len(ns["ds"])):
            image, target = ns["ds"][i]
            tagged = {**target, "iscrowd": torch.arange(len(target["boxes"]))}
            pairs.append((tagged, ns["v2_sample"](image, tagged)[1]))
    return pairs


def test_transforms_v2_recipe_keeps_area_and_iscrowd_in_step(readme_dir: Callable[..., Path]) -> None:
    readme_dir(train=16)
    pairs = _v2_outputs(run_python(TRANSFORMS_V2, {}))
    dropped = 0
    for source, out in pairs:
        rows = out["iscrowd"]
        assert len(out["boxes"]) == len(out["labels"]) == len(out["area"]) == len(rows)
        assert torch.equal(out["labels"], source["labels"][rows])  # the rows of the boxes kept
        assert torch.allclose(out["area"], box_area(out["boxes"]))
        dropped += len(rows) < len(source["boxes"])
    assert dropped >= 3, "SanitizeBoundingBoxes dropped no box: the test proves nothing"


def test_transforms_v2_default_labels_getter_leaves_iscrowd_behind(readme_dir: Callable[..., Path]) -> None:
    """Why the recipe passes ``labels_getter``: without it the per-box rows fall out of step."""
    readme_dir(train=16)
    ns = run_python(TRANSFORMS_V2, {}, {"labels_getter=fd.per_box_fields": ""})
    out_of_step = [out for _, out in _v2_outputs(ns) if len(out["iscrowd"]) != len(out["boxes"])]
    assert out_of_step


@pytest.mark.slow
def test_coco_detection_reads_a_coco_export(readme_dir: Callable[..., Path]) -> None:
    readme_dir(train=2, val=4)
    (export,) = commands(COCO_DETECTION)
    run_shell(export)
    ns = run_python(COCO_DETECTION, {})
    coco = json.loads(Path("coco_val/coco.json").read_text())
    names = {c["id"]: c["name"] for c in coco["categories"]}
    ours = fd.FlirDetection("coco_val", split="coco_val")
    by_id = {ours[i][1]["image_id"]: ours[i][1] for i in range(len(ours))}
    assert len(ns["val"]) == len(coco["images"]) == len(ours) == 4
    differ = 0  # labels there are FLIR's category ids, here flirdata's 1..K
    for image, target in ns["val"]:
        mine = by_id[target["image_id"]]
        assert image.size == (640, 512)
        assert torch.allclose(target["boxes"].as_subclass(torch.Tensor), mine["boxes"])
        assert [names[int(c)] for c in target["labels"]] == [ours.classes[int(k)] for k in mine["labels"]]
        assert target["area"] == pytest.approx(mine["area"].tolist())
        assert target["iscrowd"] == mine["iscrowd"].tolist()
        differ += not torch.equal(target["labels"], mine["labels"])
    assert differ


def test_readme_code_is_found_by_heading() -> None:
    assert python_blocks(TRANSFORMS_V2) and python_blocks(COCO_DETECTION) and python_blocks(FASTER_RCNN)
    with pytest.raises(AssertionError, match="no longer contains 'epochs=1000'"):
        adapt(python_blocks(FASTER_RCNN)[0], {"epochs=1000": "epochs=1"})
