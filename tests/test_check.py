"""``flirdata check`` on clean and broken datasets, and the dataset's own bad-file error paths.

One synthetic dataset is broken in every way a download can break: an image deleted,
truncated, emptied, overwritten with garbage or of the wrong size; a ``coco.json`` that is not
JSON in one split and JSON but not COCO in another.
"""

from __future__ import annotations

import functools
import json
import re
import shutil
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import cv2
import numpy as np
import pytest

from flirdata.cli import main
from flirdata.dataset import BadImageWarning, FlirDetection
from flirdata.errors import AnnotationError, ImageError
from flirdata.mapping import executor_map
from flirdata.synth import synthesize
from flirdata.tools.check import check_dataset

# Bad images sit at odd indices, so the replacement of each (the next index) is a good one.
BREAKS = {1: "missing", 3: "truncated", 5: "empty", 7: "garbage", 9: "wrong size"}
MESSAGES = {
    "missing": "image file not found",
    "truncated": "truncated JPEG",
    "empty": "image file is empty",
    "garbage": "cannot decode image",
    "wrong size": "image is 64x48 but coco.json declares 640x512",
}


def _break_image(path: Path, kind: str) -> None:
    if kind == "missing":
        path.unlink()
    elif kind == "truncated":
        data = path.read_bytes()
        path.write_bytes(data[: len(data) // 2])
    elif kind == "empty":
        path.write_bytes(b"")
    elif kind == "garbage":
        path.write_bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    else:
        path.write_bytes(cv2.imencode(".jpg", np.zeros((48, 64), dtype=np.uint8))[1].tobytes())


@pytest.fixture(scope="module")
def clean_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("clean")
    synthesize(root, train=12, val=4, seed=0, progress=False)
    return root


@pytest.fixture(scope="module")
def broken(clean_root: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The broken copy: ``root``, each bad image by kind, and the two bad coco.json files."""
    root = tmp_path_factory.mktemp("broken") / "dataset"
    shutil.copytree(clean_root, root)
    dataset = FlirDetection(root, "train")
    paths = {kind: dataset.image_path(i) for i, kind in BREAKS.items()}
    for kind, path in paths.items():
        _break_image(path, kind)
    paths["not json"] = root / "images_thermal_val" / "coco.json"
    paths["not json"].write_text('{"images": [{"id": 1, "file_name": ')
    paths["not coco"] = root / "video_thermal_test" / "coco.json"
    paths["not coco"].parent.mkdir()
    paths["not coco"].write_text(json.dumps({"images": [], "annotations": {}, "categories": []}))
    return {"root": root, **paths}


def test_clean_dataset_passes(clean_root: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["check", str(clean_root)]) == 0
    out, err = capsys.readouterr()
    assert "error" not in out and out.strip().splitlines()[-1].startswith("OK: 16 images in 2 split(s)")
    assert "checking images" in err and "checking images" not in out, "the progress bar goes to stderr"


def test_broken_dataset_fails_naming_every_bad_file(
    broken: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["check", str(broken["root"]), "--no-progress"]) == 1
    out, err = capsys.readouterr()
    assert err == ""
    lines = out.splitlines()
    for kind, message in {**MESSAGES, "not json": "not valid JSON", "not coco": "not a COCO file"}.items():
        line = next((x for x in lines if str(broken[kind]) in x), None)
        assert line is not None, f"{kind}: {broken[kind]} not named in\n{out}"
        assert line.startswith("error: ") and message in line, line
    assert lines[-1].startswith("FAILED: 5 bad image(s), 2 bad annotation file(s)")


@pytest.mark.parametrize("workers", [1, 3])
def test_check_dataset_report(broken: dict[str, Path], workers: int) -> None:
    seen = []
    report = check_dataset(broken["root"], progress=False, workers=workers, on_problem=seen.append)
    assert not report.ok and seen == report.problems
    assert {p.path for p in report.errors} == {str(broken[k]) for k in (*MESSAGES, "not json", "not coco")}
    assert report.warnings == []
    counts = report.counts
    assert (counts["images"], counts["bad_images"], counts["bad_annotation_files"]) == (12, 5, 2)
    train = report.splits[str(broken["root"] / "images_thermal_train")]
    assert train["boxes"] == FlirDetection(broken["root"], "train").index.stats["boxes"]


def test_split_option_checks_only_those_splits(broken: dict[str, Path], capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["check", str(broken["root"]), "--split", "val", "--no-progress"]) == 1
    out = capsys.readouterr().out
    assert str(broken["not json"]) in out and str(broken["truncated"]) not in out
    # a split folder given as the root is checked on its own
    report = check_dataset(broken["root"] / "images_thermal_train", progress=False)
    assert len(report.errors) == 5 and list(report.splits) == [str(broken["root"] / "images_thermal_train")]


def test_warnings_and_repaired_boxes_do_not_fail(
    clean_root: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root = tmp_path / "dataset"
    shutil.copytree(clean_root / "images_thermal_val", root / "images_thermal_val")
    split = root / "images_thermal_val"
    coco = json.loads((split / "coco.json").read_text())
    first = coco["images"][0]
    coco["images"].append({**first, "id": 999})  # the same file twice
    bad_boxes = [[10, 10, 0, 20], [600, 500, 100, 100]]  # zero width; reaching past the frame
    coco["annotations"] += [
        {"id": 9000 + k, "image_id": first["id"], "category_id": 1, "bbox": box} for k, box in enumerate(bad_boxes)
    ]
    (split / "coco.json").write_text(json.dumps(coco))
    shutil.copy(split / first["file_name"], split / "data" / "stray.jpg")
    assert main(["check", str(root), "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert f"warning: {split / first['file_name']}: referenced by 2 image entries" in out
    assert f"warning: {split / 'data' / 'stray.jpg'}: image file not referenced by coco.json" in out
    assert "1 degenerate boxes dropped, 1 boxes clipped to the frame" in out
    assert out.splitlines()[-1] == "OK: 5 images in 1 split(s), 2 warning(s)"


@pytest.mark.parametrize("field", ["id", "image_id"])
def test_malformed_annotation_values_are_reported(
    clean_root: Path, tmp_path: Path, field: str, capsys: pytest.CaptureFixture[str]
) -> None:
    split = tmp_path / "images_thermal_val"
    shutil.copytree(clean_root / "images_thermal_val", split)
    coco = json.loads((split / "coco.json").read_text())
    coco["annotations"][0][field] = "x1" if field == "id" else [1]
    (split / "coco.json").write_text(json.dumps(coco))
    assert main(["check", str(tmp_path), "--no-progress"]) == 1
    out = capsys.readouterr().out
    assert f"error: {split / 'coco.json'}: not a COCO file: annotations[0]" in out
    assert f"{field!r} must be an integer" in out


def test_missing_root_or_split_is_a_one_line_usage_error(
    clean_root: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["check", str(tmp_path / "nowhere")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and str(tmp_path / "nowhere") in err[0]
    assert main(["check", str(clean_root), "--split", "test"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "video_thermal_test" in err[0]


def test_stopping_a_bounded_map_leaves_no_thread() -> None:
    jobs = ((Path(f"{k}.jpg"), (1, 1)) for k in range(1000))
    pool = functools.partial(ThreadPoolExecutor, 3, thread_name_prefix="flirdata-check")
    results = executor_map(pool, lambda job: job[0].name, jobs, 12)
    assert next(results) == "0.jpg"
    results.close()
    assert not [t for t in threading.enumerate() if t.name.startswith("flirdata-check")]


# -- the dataset's error paths on the same broken files ------------------------------------


@pytest.mark.parametrize(("index", "kind"), sorted(BREAKS.items()))
def test_dataset_raises_image_error_naming_the_file(broken: dict[str, Path], index: int, kind: str) -> None:
    dataset = FlirDetection(broken["root"], "train")
    with pytest.raises(ImageError, match=re.escape(f"{broken[kind]}: {MESSAGES[kind]}")):
        dataset[index]


@pytest.mark.parametrize(("split", "kind"), [("val", "not json"), ("test", "not coco")])
def test_dataset_raises_annotation_error_naming_coco_json(broken: dict[str, Path], split: str, kind: str) -> None:
    with pytest.raises(AnnotationError, match=re.escape(str(broken[kind]))):
        FlirDetection(broken["root"], split)
    with pytest.raises(AnnotationError, match="coco.json"):
        FlirDetection(broken["root"], split)


def test_skip_replaces_bad_samples_with_one_warning_per_file(broken: dict[str, Path]) -> None:
    dataset = FlirDetection(broken["root"], "train", on_error="skip")
    with pytest.warns(BadImageWarning) as record:
        samples = [dataset[i] for i in range(len(dataset))]
    assert len(record) == len(BREAKS)
    for kind in BREAKS.values():
        assert sum(str(broken[kind]) in str(w.message) for w in record) == 1, kind
    ids = dataset.index.image_ids
    for i, (image, target) in enumerate(samples):
        assert target["image_id"] == ids[i + 1 if i in BREAKS else i]
        assert image.shape == (1, 512, 640)
    assert dataset.stats["skipped_images"] == len(BREAKS)
    # Seen files are not warned about again (filterwarnings=error would fail here), but counted.
    dataset[1]
    assert dataset.stats["skipped_images"] == len(BREAKS) + 1
