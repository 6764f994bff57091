"""The fused presets' direct path (``flirdata.direct``) gives the ``Compose`` path's samples, byte for byte."""

from __future__ import annotations

import pickle
from pathlib import Path

import albumentations as A
import numpy as np
import pytest
import torch

import flirdata.dataset
from flirdata import FlirDetection, build_transform
from flirdata.direct import DirectPlan, direct_plan
from flirdata.fused import FusedAffine, IntensityLUT, NoiseBank
from flirdata.seeding import reseed_transform, sample_seed_sequence
from flirdata.transforms import default_bbox_params


def _same(a: tuple[torch.Tensor, dict], b: tuple[torch.Tensor, dict]) -> None:
    assert a[0].dtype == b[0].dtype and a[0].shape == b[0].shape and torch.equal(a[0], b[0])
    for key in ("boxes", "labels", "area", "iscrowd"):
        x, y = a[1][key], b[1][key]
        assert x.dtype == y.dtype and x.shape == y.shape
        assert x.numpy().tobytes() == y.numpy().tobytes(), key
    assert a[1]["image_id"] == b[1]["image_id"]


def _compose_only(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(flirdata.dataset, "direct_plan", lambda pipeline: None)


def test_the_thermal_preset_has_a_plan_and_user_pipelines_none() -> None:
    assert isinstance(direct_plan(build_transform("thermal")), DirectPlan)
    assert isinstance(direct_plan(build_transform("thermal", size=(320, 480))), DirectPlan)
    for preset in ("thermal_reference", "rgb", "none"):
        assert direct_plan(build_transform(preset)) is None
    steps = [FusedAffine(), IntensityLUT()]
    assert direct_plan(A.Compose([*steps, A.HorizontalFlip()], bbox_params=default_bbox_params())) is None
    assert direct_plan(A.Compose([FusedAffine(), FusedAffine()], bbox_params=default_bbox_params())) is None
    voc = A.BboxParams(format="pascal_voc", label_fields=["labels"], clip=True, filter_invalid_bboxes=True)
    assert direct_plan(A.Compose(steps, bbox_params=voc)) is None
    each = A.BboxParams(format="coco", label_fields=["labels"], clip=True, filter_invalid_bboxes=True)
    assert direct_plan(A.Compose(steps, bbox_params=each)) is None  # filters after every transform
    assert direct_plan(A.Compose(steps, bbox_params=default_bbox_params(), p=0.5)) is None
    assert direct_plan(A.Compose([*steps, NoiseBank()], bbox_params=default_bbox_params())) is not None


@pytest.mark.parametrize("cache", [None, "ram"])
def test_dataset_samples_are_the_compose_paths(
    synth_root: Path, monkeypatch: pytest.MonkeyPatch, cache: str | None
) -> None:
    direct = FlirDetection(synth_root, transform=build_transform("thermal"), seed=3, cache=cache)
    direct.sample(0)  # this thread's pipeline and plan are made at the first sample, before the patch
    _compose_only(monkeypatch)
    compose = FlirDetection(synth_root, transform=build_transform("thermal"), seed=3, cache=cache)
    for epoch in (0, 1):
        for i in range(len(direct)):
            _same(direct.sample(i, epoch), compose.sample(i, epoch))
    assert direct._local.plan is not None and compose._local.plan is None


def test_rgb_frames_through_the_thermal_preset_are_the_compose_paths(
    rgb_root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    size = (48, 64)
    direct = FlirDetection(rgb_root, "rgb_train", transform=build_transform("thermal", size=size), seed=2)
    direct.sample(0)
    _compose_only(monkeypatch)
    compose = FlirDetection(rgb_root, "rgb_train", transform=build_transform("thermal", size=size), seed=2)
    for i in range(len(direct)):
        for epoch in (0, 5):
            _same(direct.sample(i, epoch), compose.sample(i, epoch))
    assert direct._local.plan is not None and compose._local.plan is None


def _hazard_boxes(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """COCO boxes of every kind the box maths must agree on: inside, across an edge, slivers, off frame."""
    xy = rng.uniform(-0.2, 1.1, (40, 2)) * (width, height)
    wh = np.concatenate([rng.uniform(0, 3, (10, 2)), rng.uniform(1, 0.6 * width, (30, 2))])
    edges = [[0, 0, 1, 1], [width - 1, height - 1, 1, 1], [width - 0.5, 10, 4, 4], [5, 5, 0, 7], [-3, -3, 2, 2]]
    return np.concatenate([np.concatenate([xy, wh], 1), edges]).astype(np.float32)


@pytest.mark.parametrize("size", [(80, 120), (96, 128)])  # a letterbox, and none (the frame's own size)
def test_plan_boxes_and_pixels_equal_compose_on_hazardous_boxes(size: tuple[int, int]) -> None:
    """Boxes across the frame's edges, slivers, boxes that vanish after the warp: the same bytes, the same rows."""
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (96, 128), dtype=np.uint8)
    compose = build_transform("thermal", size=size)
    plan = direct_plan(pickle.loads(pickle.dumps(compose)))
    for index in range(150):
        boxes = _hazard_boxes(rng, *image.shape)
        kept = boxes[np.all(boxes[:, 2:] > 0, axis=1)]  # albumentations refuses zero-size boxes on the way in
        seeds = sample_seed_sequence(1, 0, index)
        reseed_transform(compose, seeds)
        out = compose(image=image, bboxes=kept, labels=np.arange(len(kept)))
        got_image, got_boxes, got_rows = plan(image, kept, seeds)
        assert np.array_equal(np.asarray(out["image"]).reshape(got_image.shape), got_image)
        want = np.asarray(out["bboxes"], np.float64).reshape(-1, 4)
        assert want.tobytes() == got_boxes.tobytes()
        assert np.array_equal(np.asarray(out["labels"], np.int64), got_rows)
    assert plan(image, np.zeros((0, 4), np.float32), seeds)[1].shape == (0, 4)


@pytest.mark.parametrize("shape", [(40, 56), (40, 56, 3)])
def test_direct_blurs_are_the_transforms_calls(shape: tuple[int, ...]) -> None:
    """The direct path calls OpenCV for the preset's blurs: same draws, same kernel, same pixels."""
    from flirdata.direct import _BLURS

    rng = np.random.default_rng(5)
    blurs = [A.GaussianBlur(blur_limit=(3, 5)), A.MotionBlur(blur_limit=(3, 7)), A.MotionBlur(allow_shifted=False)]
    for seed in range(60):
        image = rng.integers(0, 256, shape, dtype=np.uint8)
        for blur in blurs:
            blur.py_random.seed(seed)
            want = blur(force_apply=True, image=image)["image"]
            after = blur.py_random.getstate()
            blur.py_random.seed(seed)
            got = _BLURS[type(blur)](blur, image)
            assert got.shape == want.shape and np.array_equal(got, want)
            assert blur.py_random.getstate() == after  # as many draws: the next node's draws are unchanged


def test_saved_and_loaded_preset_gives_the_same_samples(synth_root: Path, tmp_path: Path) -> None:
    """The preset stays an albumentations pipeline: A.save/A.load round-trips it to a plain Compose of the
    same transforms drawing the same samples. albumentations 2.0.8 does not save ``filter_invalid_bboxes``,
    so the loaded one runs through its Compose, its boxes kept in float32 on the way: equal to rounding."""
    path = tmp_path / "thermal.json"
    A.save(build_transform("thermal"), str(path), data_format="json")
    assert [type(t) for t in build_transform(path).transforms] == [
        type(t) for t in build_transform("thermal").transforms
    ]
    built = FlirDetection(synth_root, transform=build_transform("thermal"), seed=4)
    loaded = FlirDetection(synth_root, transform=build_transform(path), seed=4)
    for i in range(6):
        (image, target), (image_loaded, target_loaded) = built.sample(i, 2), loaded.sample(i, 2)
        assert torch.equal(image, image_loaded) and torch.equal(target["labels"], target_loaded["labels"])
        assert torch.allclose(target["boxes"], target_loaded["boxes"], atol=1e-3)
