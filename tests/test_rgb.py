"""RGB splits: colour frames of several sizes through the dataset, every backend and every tool."""

from __future__ import annotations

import hashlib
import json
import pickle
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest
import torch
from support import RGB_SIZES, backend_params, count_boxes_on_pixels, use_shared_ray_for, write_split

from flirdata import BACKENDS, FlirDetection, ImageError, build_transform, collate_detection, make_loader
from flirdata.cli import main
from flirdata.images import infer_modality
from flirdata.synth import FramePlan, RenderJob, synthesize
from flirdata.tools.check import check_dataset
from flirdata.tools.export import export_augmented
from flirdata.tools.preview import render_tile

RED = (slice(10, 20), slice(30, 50))  # rows, columns of the pure red patch


def _digest(images: torch.Tensor, targets: list[dict[str, Any]]) -> str:
    h = hashlib.sha256(images.numpy().tobytes())
    for target in targets:
        h.update(target["boxes"].numpy().tobytes())
        h.update(target["labels"].numpy().tobytes())
    return h.hexdigest()


def _red_patch_frame() -> np.ndarray:
    """``uint8 [40, 64, 3]`` R, G, B: blue-grey background, a pure red patch at ``RED``."""
    rgb = np.empty((40, 64, 3), np.uint8)
    rgb[:] = (60, 80, 100)
    rgb[RED] = (255, 0, 0)
    return rgb


@pytest.fixture(scope="module")
def red_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("red")
    bgr = np.ascontiguousarray(_red_patch_frame()[:, :, ::-1])
    write_split(root / "images_rgb_train", [bgr], [[[30, 10, 20, 10]]], [[1]])
    return root


def _grey_frame(channels: int) -> np.ndarray:
    grey = np.tile(np.arange(64, dtype=np.uint8) * 3, (40, 1))
    return grey if channels == 1 else np.repeat(grey[:, :, None], channels, axis=2)


# --- the sample contract ---------------------------------------------------------------------


def test_rgb_sample_is_uint8_3hw_in_rgb_order(red_root: Path) -> None:
    ds = FlirDetection(red_root, "rgb_train")
    assert ds.modality == "rgb" and ds.channels == 3
    image, target = ds[0]
    assert image.dtype == torch.uint8 and image.shape == (3, 40, 64) and image.is_contiguous()
    assert image[0][RED].min() == 255 and image[1][RED].max() == 0 and image[2][RED].max() == 0
    assert image[:, 0, 0].tolist() == [60, 80, 100]
    np.testing.assert_allclose(target["boxes"].numpy(), [[30, 10, 50, 20]])
    clone = pickle.loads(pickle.dumps(ds))  # crosses process boundaries with its modality
    assert clone.modality == "rgb" and torch.equal(clone[0][0], image)


def test_modality_is_inferred_from_the_folder_and_overridable(red_root: Path, synth_root: Path) -> None:
    assert [infer_modality(f) for f in ("images_rgb_val", "video_rgb_test", "images_thermal_train", "x")] == [
        "rgb",
        "rgb",
        "thermal",
        "thermal",
    ]
    thermal = FlirDetection(synth_root, "train")
    assert thermal.modality == "thermal" and thermal.channels == 1 and thermal[0][0].shape == (1, 512, 640)
    folder = red_root / "images_rgb_train"
    renamed = FlirDetection(red_root, folder, modality="rgb")
    assert renamed[0][0].shape == (3, 40, 64)
    with pytest.raises(ValueError, match=r"unknown modality 'colour'; expected one of \['rgb', 'thermal'\]"):
        FlirDetection(red_root, folder, modality="colour")


def test_frames_of_several_sizes_in_one_split(rgb_root: Path) -> None:
    raw = FlirDetection(rgb_root, "rgb_train")
    assert {tuple(raw[k][0].shape) for k in range(3)} == {(3, h, w) for h, w in RGB_SIZES}
    fitted = FlirDetection(rgb_root, "rgb_train", build_transform("rgb", size=(32, 40)), seed=1)
    images, targets = collate_detection([fitted[k] for k in range(4)])
    assert images.dtype == torch.uint8 and images.shape == (4, 3, 32, 40) and len(targets) == 4


def test_collating_frames_of_several_sizes_names_them_and_the_fix(rgb_root: Path) -> None:
    raw = FlirDetection(rgb_root, "rgb_train")
    expected = r"share a shape, got 40x40, 52x60, 64x48 \(width x height\); letterbox them .*build_transform\('rgb'"
    with pytest.raises(ValueError, match=expected) as info:
        collate_detection([raw[k] for k in range(4)])
    assert "\n" not in str(info.value)


# --- wrong channels --------------------------------------------------------------------------


def test_colour_file_in_a_thermal_split_is_an_error_but_three_equal_channels_are_grey(tmp_path: Path) -> None:
    bgr = np.ascontiguousarray(_red_patch_frame()[:, :, ::-1])
    images = [bgr, _grey_frame(3), _grey_frame(1)]
    folder = write_split(tmp_path / "images_thermal_train", images, [[], [], []], [[], [], []])
    ds = FlirDetection(tmp_path, "train")
    name = folder / "data" / "image-0000.png"
    with pytest.raises(ImageError, match=rf"{name}: colour image .* in a thermal split; expected a grey frame"):
        ds[0]
    assert ds[1][0].shape == (1, 40, 64) and torch.equal(ds[1][0], ds[2][0])


def test_grey_file_in_an_rgb_split_is_an_error(tmp_path: Path) -> None:
    folder = write_split(tmp_path / "images_rgb_val", [_grey_frame(1), _grey_frame(3)], [[], []], [[], []])
    ds = FlirDetection(tmp_path, "rgb_val")
    with pytest.raises(ImageError, match=rf"{folder / 'data' / 'image-0000.png'}: grey image \(1 channel\) in an RGB"):
        ds[0]
    with pytest.raises(ImageError, match=r"image-0001.png: grey image \(3 equal channels\) in an RGB split"):
        ds[1]


# --- every backend ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def rgb_sequential(rgb_root: Path) -> list[str]:
    ds = FlirDetection(rgb_root, "rgb_train", build_transform("rgb", size=(32, 40)), seed=3)
    with make_loader(ds, "sequential", batch_size=4, shuffle=True, seed=2) as loader:
        loader.set_epoch(1)
        return [_digest(*batch) for batch in loader]


@pytest.mark.parametrize("backend", backend_params(sorted(set(BACKENDS) - {"sequential"})))
def test_every_backend_gives_the_sequential_rgb_batches(
    rgb_root: Path, rgb_sequential: list[str], backend: str, request: pytest.FixtureRequest
) -> None:
    use_shared_ray_for(backend, request)
    ds = FlirDetection(rgb_root, "rgb_train", build_transform("rgb", size=(32, 40)), seed=3)
    with make_loader(ds, backend, workers=2, batch_size=4, shuffle=True, seed=2) as loader:
        loader.set_epoch(1)
        batches = list(loader)
        ring = getattr(loader.backend, "ring", None)
    assert [_digest(*batch) for batch in batches] == rgb_sequential
    assert all(images.shape[1:] == (3, 32, 40) and images.dtype == torch.uint8 for images, _ in batches)
    if backend in ("loky", "process"):  # RGB batches went through the shared-memory ring
        assert ring is not None and ring.slot_bytes >= 4 * 3 * 32 * 40


# --- the tools -------------------------------------------------------------------------------


def test_check_reads_an_rgb_split_as_rgb(rgb_root: Path, capsys: pytest.CaptureFixture[str]) -> None:
    report = check_dataset(rgb_root, progress=False, workers=1)
    folder = str(rgb_root / "images_rgb_train")
    assert report.ok and report.modalities == {folder: "rgb"} and report.counts["images"] == 9
    assert main(["check", str(rgb_root), "--split", "rgb_train", "--no-progress"]) == 0
    assert f"{folder} (rgb): 9 images (0 bad)" in capsys.readouterr().out
    assert main(["check", str(rgb_root), "--modality", "thermal", "--no-progress"]) == 1
    out = capsys.readouterr().out
    assert "image-0000.png: colour image (3 different channels) in a thermal split" in out
    assert "FAILED: 9 bad image(s)" in out


def test_check_finds_a_grey_file_among_colour_ones(tmp_path: Path) -> None:
    bgr = np.ascontiguousarray(_red_patch_frame()[:, :, ::-1])
    write_split(tmp_path / "images_rgb_train", [bgr, _grey_frame(1)], [[], []], [[], []])
    report = check_dataset(tmp_path, progress=False, workers=1)
    assert [(p.path.endswith("image-0001.png"), p.message) for p in report.errors] == [
        (
            True,
            "grey image (1 channel) in an RGB split; expected a colour frame "
            "(for a thermal split: modality='thermal', --modality thermal)",
        )
    ]


def test_preview_draws_rgb_samples_in_colour(red_root: Path, tmp_path: Path) -> None:
    tile = render_tile(FlirDetection(red_root, "rgb_train"), 0, tile_width=640)  # 10x: the name tag stays small
    assert tuple(tile[-400:][160, 400]) == (255, 0, 0)  # in the patch, under the title bar
    assert tuple(tile[-400:][300, 100]) == (60, 80, 100)
    out = tmp_path / "preview.png"
    args = ["preview", "--data", str(red_root), "--split", "rgb_train", "--out", str(out), "--n", "1"]
    assert main([*args, "--preset", "none"]) == 0  # colour as decoded: no jitter to move the red off
    grid = cv2.imread(str(out))[:, :, ::-1]
    assert (np.abs(grid.astype(int) - (255, 0, 0)).max(axis=2) < 40).sum() > 50  # the patch, scaled up
    assert main(args) == 0  # the rgb training preset: still colour, red above green and blue in the patch
    grid = cv2.imread(str(out))[:, :, ::-1].astype(int)
    assert ((grid[:, :, 0] > 150) & (grid[:, :, 0] - grid[:, :, 1:].max(axis=2) > 100)).sum() > 50


@pytest.mark.parametrize("fmt", ["coco", "yolo"])
def test_export_writes_colour_frames(red_root: Path, tmp_path: Path, fmt: str) -> None:
    ds = FlirDetection(red_root, "rgb_train", build_transform("none", size=(40, 64)))
    export_augmented(ds, tmp_path / fmt, fmt=fmt, progress=False)
    (jpeg,) = (tmp_path / fmt).rglob("*.jpg")
    rgb = cv2.imread(str(jpeg), cv2.IMREAD_UNCHANGED)[:, :, ::-1]
    assert rgb.shape == (40, 64, 3)
    np.testing.assert_allclose(rgb[12:18, 33:47].mean(axis=(0, 1)), (255, 0, 0), atol=25)
    if fmt == "coco":
        again = FlirDetection(tmp_path / fmt, tmp_path / fmt, modality="rgb")
        assert again[0][0].shape == (3, 40, 64)


# --- augmentation ----------------------------------------------------------------------------


def test_rgb_preset_keeps_boxes_on_objects(tmp_path: Path) -> None:
    """A saturated object on a black 600x800 frame, letterboxed to 480x640 in every epoch."""
    rgb = np.zeros((600, 800, 3), np.uint8)
    rgb[200:390, 300:440] = (230, 60, 40)
    write_split(tmp_path / "s", [np.ascontiguousarray(rgb[:, :, ::-1])], [[[300, 200, 140, 190]]], [[1]])
    ds = FlirDetection(tmp_path, tmp_path / "s", build_transform("rgb"), seed=11, modality="rgb")

    def red(image: torch.Tensor) -> np.ndarray:
        assert image.shape == (3, 480, 640)
        r, g, b = image.numpy().astype(int)
        return (r > 128) & (r - g > 50) & (r - b > 50)  # the object's colour, not a grey noise speck

    assert count_boxes_on_pixels((ds.sample(0, epoch) for epoch in range(40)), red) >= 30


def test_rgb_preset_changes_colours_and_is_reproducible(red_root: Path) -> None:
    ds = FlirDetection(red_root, "rgb_train", build_transform("rgb", size=(40, 64)), seed=0)
    outs = [ds.sample(0, epoch)[0] for epoch in range(8)]
    assert all(torch.equal(out, ds.sample(0, epoch)[0]) for epoch, out in enumerate(outs))
    ratios = {round(float(out[1].float().mean() / out[2].float().mean().clamp(min=1)), 2) for out in outs}
    assert len(ratios) > 3  # green/blue balance moves: colour transforms, not just brightness


# --- synth -----------------------------------------------------------------------------------


def _files(root: Path, pattern: str = "*") -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.glob(pattern)) if p.is_file()}


@pytest.fixture(scope="module")
def synth_rgb(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("synth_rgb")
    synthesize(root, train=4, val=2, seed=5, progress=False, rgb=True)
    return root


def test_synth_rgb_splits_hold_colour_frames_of_several_sizes(synth_rgb: Path) -> None:
    assert sorted(p.name for p in synth_rgb.iterdir()) == [
        "images_rgb_train",
        "images_rgb_val",
        "images_thermal_train",
        "images_thermal_val",
    ]
    coco = json.loads((synth_rgb / "images_rgb_train" / "coco.json").read_text())
    assert len({(im["width"], im["height"]) for im in coco["images"]}) == 3 and coco["annotations"]
    ds = FlirDetection(synth_rgb, "rgb_train")
    for k in range(len(ds)):
        image, target = ds[k]
        entry = coco["images"][k]
        assert image.shape == (3, entry["height"], entry["width"])
        assert not torch.equal(image[0], image[1])
        boxes = target["boxes"]
        assert torch.all(boxes[:, 2] <= entry["width"]) and torch.all(boxes[:, 3] <= entry["height"])


def test_synth_rgb_same_seed_same_bytes_and_thermal_untouched(synth_rgb: Path, tmp_path: Path) -> None:
    synthesize(tmp_path / "again", train=4, val=2, seed=5, progress=False, rgb=True)
    assert _files(tmp_path / "again", "**/*") == _files(synth_rgb, "**/*")
    synthesize(tmp_path / "thermal", train=4, val=2, seed=5, progress=False)
    assert _files(tmp_path / "thermal", "images_thermal_*/**/*") == _files(synth_rgb, "images_thermal_*/**/*")


def test_synth_rgb_cli_and_render_job_pickles(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["synth", str(tmp_path), "--size", "3", "--val", "0", "--rgb", "--quiet"]) == 0
    assert f"{tmp_path / 'images_rgb_train'}: 3 images" in capsys.readouterr().out
    job = RenderJob("x", 0, 3, (FramePlan(0, 0, 0, "A" * 17, 5, "data/a.jpg", False, 1224, 1024),), rgb=True)
    assert pickle.loads(pickle.dumps(job)) == job
