"""``per_box_fields``: the per-box rows of a target, as torchvision's SanitizeBoundingBoxes needs them."""

from __future__ import annotations

import pickle
from pathlib import Path

import pytest
import torch

import flirdata as fd


def test_per_box_fields_are_the_targets_own_tensors(synth_root: Path) -> None:
    image, target = fd.FlirDetection(synth_root, split="train")[0]
    fields = fd.per_box_fields((image, target))
    assert fd.PER_BOX_FIELDS == ("labels", "area", "iscrowd")
    assert [id(f) for f in fields] == [id(target[name]) for name in fd.PER_BOX_FIELDS]  # identity, not copies
    assert all(len(f) == len(target["boxes"]) for f in fields)
    assert [id(f) for f in fd.per_box_fields(target)] == [id(f) for f in fields]
    assert pickle.loads(pickle.dumps(fd.per_box_fields)) is fd.per_box_fields  # a transform using it pickles


def test_per_box_fields_leaves_out_absent_fields_and_refuses_other_input() -> None:
    labels = torch.ones(2, dtype=torch.int64)
    assert fd.per_box_fields({"boxes": torch.zeros(2, 4), "labels": labels})[0] is labels
    assert len(fd.per_box_fields({"boxes": torch.zeros(2, 4), "labels": labels})) == 1
    with pytest.raises(TypeError, match=r"expects an \(image, target\) pair or a target dict, got Tensor"):
        fd.per_box_fields(torch.zeros(2))
