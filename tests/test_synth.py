"""Tests of ``flirdata synth``: FLIR v2 layout, thermal look, tight boxes, flaws, determinism, CLI."""

from __future__ import annotations

import hashlib
import json
import pickle
import re
from collections import defaultdict
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from flirdata import cli, synth
from flirdata.coco import load_coco
from flirdata.errors import DataError
from flirdata.synth import (
    SIZES,
    SPLIT_FOLDERS,
    FramePlan,
    RenderJob,
    default_val,
    parse_size,
    render_job,
    synthesize,
    thermal,
)

NAME = re.compile(r"^data/video-[A-Za-z0-9]{17}-frame-\d{6}-[A-Za-z0-9]{17}\.jpg$")
FLIR_IDS = {
    "person": 1,
    "bike": 2,
    "car": 3,
    "motor": 4,
    "bus": 6,
    "train": 7,
    "truck": 8,
    "light": 10,
    "hydrant": 11,
    "sign": 12,
    "dog": 17,
    "skateboard": 37,
    "stroller": 73,
    "scooter": 77,
    "other vehicle": 79,
}
W, H = 640, 512


def _make(root: Path, seed: int = 0, train: int = 20, val: int = 5, **kwargs: Any) -> dict[str, Any]:
    return synthesize(root, train=train, val=val, seed=seed, progress=False, **kwargs)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("tiny")
    _make(root)
    return root


@pytest.fixture(scope="module")
def sixty(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Enough boxes for statistics on how warm objects are."""
    root = tmp_path_factory.mktemp("sixty")
    _make(root, seed=3, train=60, val=0)
    return root


def _coco(root: Path, split: str = "train") -> dict[str, Any]:
    return json.loads((root / SPLIT_FOLDERS[split][0] / "coco.json").read_text())


def _digests(root: Path) -> dict[str, str]:
    return {
        p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def _images(root: Path, split: str = "train") -> dict[int, np.ndarray]:
    folder = root / SPLIT_FOLDERS[split][0]
    return {
        im["id"]: cv2.imread(str(folder / im["file_name"]), cv2.IMREAD_UNCHANGED) for im in _coco(root, split)["images"]
    }


def _degenerate(box: list[float]) -> bool:
    return box[2] <= 0 or box[3] <= 0


def _outside(box: list[float]) -> bool:
    x, y, w, h = box
    return x < 0 or y < 0 or x + w > W or y + h > H


# --- layout -------------------------------------------------------------------------------------


def test_layout_matches_flir_v2(tiny: Path) -> None:
    assert sorted(p.name for p in tiny.iterdir()) == ["images_thermal_train", "images_thermal_val"]
    for split, n in (("train", 20), ("val", 5)):
        folder = tiny / SPLIT_FOLDERS[split][0]
        assert sorted(p.name for p in folder.iterdir()) == ["coco.json", "data"]
        coco = _coco(tiny, split)
        assert list(coco) == ["info", "licenses", "categories", "images", "annotations"]
        names = [im["file_name"] for im in coco["images"]]
        assert len(names) == n and len(set(names)) == n
        assert all(NAME.match(name) for name in names), names
        assert sorted(names) == sorted(f"data/{p.name}" for p in (folder / "data").iterdir())  # no orphans
        assert sorted(im["id"] for im in coco["images"]) == list(range(n))


def test_images_group_into_videos_with_consecutive_frames(tiny: Path) -> None:
    videos: dict[str, list[int]] = defaultdict(list)
    for im in _coco(tiny)["images"]:
        assert {"id", "width", "height", "file_name", "date_captured", "extra_info"} <= set(im)
        video, frame = im["extra_info"]["video_id"], im["extra_info"]["frame_index"]
        assert im["file_name"].startswith(f"data/video-{video}-frame-{frame:06d}-")
        assert (im["width"], im["height"]) == (W, H)
        videos[video].append(frame)
    assert len(videos) >= 1
    for frames in videos.values():
        assert frames == list(range(frames[0], frames[0] + len(frames)))


def test_images_are_640x512_single_channel_uint8_jpegs(tiny: Path) -> None:
    for split in ("train", "val"):
        for im in _coco(tiny, split)["images"]:
            path = tiny / SPLIT_FOLDERS[split][0] / im["file_name"]
            assert path.read_bytes()[:3] == b"\xff\xd8\xff"
            pixels = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
            assert pixels.ndim == 2 and pixels.shape == (H, W) and pixels.dtype == np.uint8


def test_categories_carry_flir_ids(tiny: Path) -> None:
    coco = _coco(tiny)
    declared = {c["name"]: c["id"] for c in coco["categories"]}
    assert len(declared) == len(coco["categories"])
    assert FLIR_IDS.items() <= declared.items()
    assert {a["category_id"] for a in coco["annotations"]} <= set(FLIR_IDS.values())
    assert synth.CATEGORIES == coco["categories"]


def test_annotations_have_coco_fields(tiny: Path) -> None:
    coco = _coco(tiny)
    image_ids = {im["id"] for im in coco["images"]}
    anns = coco["annotations"]
    assert [a["id"] for a in anns] == list(range(1, len(anns) + 1))
    for a in anns:
        assert {"id", "image_id", "category_id", "bbox", "area", "iscrowd", "segmentation"} <= set(a)
        assert a["image_id"] in image_ids and a["iscrowd"] == 0
        assert len(a["bbox"]) == 4 and all(isinstance(v, (int, float)) for v in a["bbox"])
        assert a["area"] == a["bbox"][2] * a["bbox"][3]


def test_flaws_like_real_flir_even_in_a_tiny_dataset(tiny: Path) -> None:
    coco = _coco(tiny)
    anns = coco["annotations"]
    annotated = {a["image_id"] for a in anns}
    assert any(im["id"] not in annotated for im in coco["images"])  # frames without boxes
    degenerate = [a for a in anns if _degenerate(a["bbox"])]
    outside = [a for a in anns if _outside(a["bbox"]) and not _degenerate(a["bbox"])]
    assert degenerate and outside
    assert len(degenerate) + len(outside) <= max(4, 0.03 * len(anns))  # a few, as in FLIR
    for a in outside:  # clipped, they touch the frame edge: the object was cut by it
        x, y, w, h = a["bbox"]
        x0, y0, x1, y1 = max(x, 0), max(y, 0), min(x + w, W), min(y + h, H)
        assert x0 == 0 or y0 == 0 or x1 == W or y1 == H
    stats = load_coco(tiny / "images_thermal_train" / "coco.json").stats
    assert stats["degenerate_dropped"] == len(degenerate) and stats["clipped"] == len(outside)


def test_small_val_split_has_no_forced_flaws(tiny: Path) -> None:
    anns = _coco(tiny, "val")["annotations"]
    assert not any(_degenerate(a["bbox"]) for a in anns)


def test_pycocotools_loads_it(tiny: Path) -> None:
    from pycocotools.coco import COCO

    api = COCO(str(tiny / "images_thermal_train" / "coco.json"))
    assert len(api.getImgIds()) == 20 and FLIR_IDS["car"] in api.getCatIds()


# --- thermal look and tight boxes ---------------------------------------------------------------


def test_sky_is_colder_than_the_road(sixty: Path) -> None:
    coco = _coco(sixty)
    annotated = {a["image_id"] for a in coco["annotations"]}
    warmer_below = {k: img[-40:].mean() > img[:40].mean() + 10 for k, img in _images(sixty).items()}
    assert all(warmer_below[k] for k in warmer_below if k not in annotated)  # background alone
    assert np.mean(list(warmer_below.values())) >= 0.9  # a near truck may fill the sky


def _fully_visible(coco: dict[str, Any], category: int, min_side: int) -> list[dict[str, Any]]:
    return [
        a
        for a in coco["annotations"]
        if a["category_id"] == category
        and a["extra_info"]["occluded"] == "no_(fully_visible)"
        and min(a["bbox"][2:]) >= min_side
        and _clear_of_the_edge(a["bbox"])
    ]


def _clear_of_the_edge(box: list[float], margin: int = 3) -> bool:
    x, y, w, h = box
    return x >= margin and y >= margin and x + w <= W - margin and y + h <= H - margin


@pytest.mark.parametrize("category", [FLIR_IDS["person"], FLIR_IDS["car"]])
def test_objects_are_warmer_than_their_surroundings(sixty: Path, category: int) -> None:
    coco, images = _coco(sixty), _images(sixty)
    anns = _fully_visible(coco, category, min_side=6)
    assert len(anns) >= 10
    for a in anns:
        img = images[a["image_id"]].astype(np.float32)
        x, y, w, h = a["bbox"]
        ring = img[y - 3 : y + h + 3, x - 3 : x + w + 3].copy()
        ring[3:-3, 3:-3] = np.nan
        assert img[y : y + h, x : x + w].mean() > np.nanmedian(ring), a


@pytest.mark.parametrize("category", [FLIR_IDS["person"], FLIR_IDS["car"]])
def test_box_edges_touch_the_warm_object(sixty: Path, category: int) -> None:
    """Each side of a box holds pixels warmer than the line just outside it: the box is tight."""
    coco, images = _coco(sixty), _images(sixty)
    results = []
    for a in _fully_visible(coco, category, min_side=12):
        img = images[a["image_id"]].astype(np.float32)
        x, y, w, h = a["bbox"]
        sides = [
            (img[y, x : x + w], img[y - 2, x : x + w]),
            (img[y + h - 1, x : x + w], img[y + h + 1, x : x + w]),
            (img[y : y + h, x], img[y : y + h, x - 2]),
            (img[y : y + h, x + w - 1], img[y : y + h, x + w + 1]),
        ]
        results += [edge.max() > np.median(out) + 4 for edge, out in sides]
    assert len(results) >= 40 and np.mean(results) >= 0.95


@given(st.integers(0, 2**32 - 1))
def test_every_scene_has_a_cold_sky_over_a_warm_road(seed: int) -> None:
    scene = thermal.make_scene(np.random.default_rng(seed))
    assert scene.sky[0] < scene.sky[1] < scene.road[0] < scene.road[1] <= 255
    heat = scene.skyline[1]
    assert np.all(heat >= scene.sky[1] - 5) and np.all(heat <= scene.road[0])
    assert 0 < scene.horizon < H and scene.density > 0


@settings(max_examples=15, deadline=None)
@given(st.integers(0, 2**32 - 1), st.integers(0, 500))
def test_every_frame_is_gray_640x512_with_boxes_inside(seed: int, frame_pos: int) -> None:
    rng = np.random.default_rng(seed)
    img, objects = thermal.render_frame(rng, thermal.make_scene(rng), frame_pos)
    assert img.shape == (H, W) and img.dtype == np.uint8
    for obj in objects:
        x, y, w, h = obj.box
        assert x >= 0 and y >= 0 and w >= 1 and h >= 1 and x + w <= W and y + h <= H
        assert obj.category_id in FLIR_IDS.values() and 0.0 <= obj.visible <= 1.0


def test_paste_boxes_the_mask_clipped_to_the_frame() -> None:
    lab = np.zeros((10, 8), np.uint8)
    lab[2:9, 1:6] = 1  # mask spans rows 2..8, columns 1..5 of the patch
    img, ids = np.zeros((H, W), np.float32), np.zeros((H, W), np.int16)
    values = np.array([0, 200], np.float32)
    inside = thermal._Placed(3, 10.0, 100, 50, 8, 10)
    assert thermal._paste(img, ids, inside, lab, values, 1) == ((101, 52, 5, 7), 35)
    cut = thermal._Placed(3, 10.0, -3, 505, 8, 10)  # 3 columns left of, 3 rows below the frame
    assert thermal._paste(img, ids, cut, lab, values, 2) == ((0, 507, 3, 5), 15)
    assert (ids == 2).sum() == 15 and img[507:512, 0:3].min() == 200


# --- determinism, caching, interruption ---------------------------------------------------------


def test_same_seed_gives_byte_identical_files(tiny: Path, tmp_path: Path) -> None:
    _make(tmp_path / "again")
    assert _digests(tmp_path / "again") == _digests(tiny)


def test_another_seed_gives_other_files(tiny: Path, tmp_path: Path) -> None:
    _make(tmp_path / "other", seed=1)
    first, other = _digests(tiny), _digests(tmp_path / "other")
    assert set(first.values()).isdisjoint(other.values())


@pytest.mark.slow
def test_worker_processes_write_the_same_bytes(tiny: Path, tmp_path: Path) -> None:
    summary = _make(tmp_path / "pool", workers=2)
    assert summary["images"] == 25 and _digests(tmp_path / "pool") == _digests(tiny)


def test_render_job_pickles() -> None:
    job = RenderJob("/x", 0, 1, (FramePlan(0, 0, 0, "A" * 17, 5, "data/a.jpg", False),))
    assert pickle.loads(pickle.dumps(job)) == job and pickle.loads(pickle.dumps(render_job)) is render_job


def test_same_arguments_skip_and_others_need_force(tmp_path: Path) -> None:
    first = _make(tmp_path, train=3, val=1)
    before = _digests(tmp_path)
    again = _make(tmp_path, train=3, val=1)
    assert again["images"] == 0 and all(s["skipped"] for s in again["splits"].values())
    assert again["splits"]["train"]["annotations"] == first["splits"]["train"]["annotations"]
    with pytest.raises(DataError, match=r"images_thermal_train .*'seed': 0.*--force"):
        _make(tmp_path, seed=7, train=3, val=1)
    assert _digests(tmp_path) == before  # a refused run changes nothing
    redone = _make(tmp_path, seed=7, train=3, val=1, force=True)
    assert redone["images"] == 4 and _digests(tmp_path) != before


def test_folder_with_other_data_is_refused(tmp_path: Path) -> None:
    (tmp_path / "images_thermal_val" / "data").mkdir(parents=True)
    (tmp_path / "images_thermal_val" / "data" / "mine.jpg").write_bytes(b"x")
    with pytest.raises(DataError, match="images_thermal_val holds other data"):
        _make(tmp_path, train=2, val=1)
    assert not (tmp_path / "images_thermal_train").exists()  # checked before anything is written


def test_interrupted_run_leaves_no_coco_json(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def interrupt(*args: Any) -> None:
        raise KeyboardInterrupt

    with monkeypatch.context() as patch:
        patch.setattr(synth, "_build_coco", interrupt)
        with pytest.raises(KeyboardInterrupt):
            _make(tmp_path, train=2, val=0)
    assert not (tmp_path / "images_thermal_train").exists()
    assert any((tmp_path / ".images_thermal_train.partial" / "data").iterdir())
    _make(tmp_path, train=2, val=0)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["images_thermal_train"]


def test_test_split_is_one_video(tmp_path: Path) -> None:
    summary = _make(tmp_path, train=1, val=0, test=4)
    assert summary["splits"]["test"]["images"] == 4
    coco = _coco(tmp_path, "test")
    assert len({im["extra_info"]["video_id"] for im in coco["images"]}) == 1


def test_progress_bar_goes_to_stderr(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    synthesize(tmp_path, train=1, val=0, progress=True)
    assert "images_thermal_train" in capsys.readouterr().err


# --- arguments and CLI --------------------------------------------------------------------------


@pytest.mark.parametrize(("text", "n"), [("small", 500), ("medium", 2000), (" Big ", 10000), ("7", 7), (3, 3)])
def test_parse_size(text: str | int, n: int) -> None:
    assert parse_size(text) == n and SIZES["big"] == 10000


@pytest.mark.parametrize("text", ["huge", "0", "-3", "1.5", "", "1e3"])
def test_parse_size_rejects(text: str) -> None:
    with pytest.raises(DataError, match=re.escape(repr(text)) + r".*\['big', 'medium', 'small'\]"):
        parse_size(text)


def test_default_val() -> None:
    assert [default_val(n) for n in (500, 2000, 10000, 20, 100)] == [50, 200, 1000, 20, 50]


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"train": 0}, "train=0"),
        ({"val": -1}, "val=-1"),
        ({"test": 2.5}, "test=2.5"),
        ({"seed": -1}, "seed=-1"),
        ({"seed": 2**32}, "seed=4294967296"),
        ({"workers": 0}, "workers=0"),
        ({"train": True}, "train=True"),
    ],
)
def test_bad_arguments_name_the_value(tmp_path: Path, kwargs: dict[str, Any], match: str) -> None:
    with pytest.raises(DataError, match=re.escape(match)):
        synthesize(tmp_path, **{"progress": False, **kwargs})
    assert not any(tmp_path.iterdir())


def test_root_that_is_a_file(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("")
    with pytest.raises(DataError, match="not a directory"):
        _make(tmp_path / "file")


@pytest.fixture
def synth_only(monkeypatch: pytest.MonkeyPatch) -> None:
    """The CLI with only this subcommand, so other modules' imports do not matter here."""
    monkeypatch.setattr(cli, "COMMANDS", {"synth": cli.COMMANDS["synth"]})


@pytest.mark.usefixtures("synth_only")
def test_cli_writes_a_dataset(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["synth", str(tmp_path), "--size", "20", "--val", "5", "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "images_thermal_train: 20 images" in out and "images/s" in out
    assert len(_coco(tmp_path, "val")["images"]) == 5
    assert cli.main(["synth", str(tmp_path), "--size", "20", "--val", "5", "--quiet"]) == 0
    assert "up to date, skipped" in capsys.readouterr().out


@pytest.mark.usefixtures("synth_only")
def test_cli_bad_size_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["synth", str(tmp_path), "--size", "huge"]) != 0
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "'huge'" in err[0] and "small" in err[0]
    assert not any(tmp_path.iterdir())
