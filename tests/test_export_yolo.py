"""``flirdata export --format yolo``: one Ultralytics dataset holding train, val and test.

Ultralytics is not installed here: these tests check the layout contract it reads (data.yaml
keys and how it resolves them, label files next to image files, normalised label lines).
"""

from __future__ import annotations

import functools
import hashlib
import os
import pickle
import re
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest
import yaml

import flirdata.tools.export
from flirdata.cli import main
from flirdata.dataset import FlirDetection
from flirdata.synth import synthesize
from flirdata.tools.export import WORK_DIR, ExportError, ExportPlan, export_augmented, output_stem
from flirdata.tools.export.formats.yolo import parse_yolo_labels
from flirdata.transforms import build_transform

SEED = 7
COUNTS = {"train": 6, "val": 3, "test": 2}


def _digest(folder: Path) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def _args(source: Path, out: Path, split: str, *extra: str) -> list[str]:
    return [
        "export",
        "--data",
        str(source),
        "--out",
        str(out),
        "--format",
        "yolo",
        "--split",
        split,
        "--seed",
        str(SEED),
        "--batch-size",
        "4",
        "--no-progress",
        *extra,
    ]


def _ultralytics_folders(data_yaml: Path) -> dict[str, Path]:
    """Where Ultralytics' ``check_det_dataset`` looks for each split of ``data_yaml``.

    Its rule: the root is ``path`` if the file gives one (relative to the working directory),
    else the yaml's own folder; each split is resolved against that root.
    """
    data = yaml.safe_load(data_yaml.read_text())
    root = Path(data.get("path") or data_yaml.parent)
    return {split: (root / data[split]).resolve() for split in ("train", "val", "test") if data.get(split)}


def _label_path(image: Path) -> Path:
    """Ultralytics' ``img2label_paths``: the last ``/images/`` becomes ``/labels/``, suffix ``.txt``."""
    head, _, tail = str(image).rpartition(f"{os.sep}images{os.sep}")
    return Path(f"{head}{os.sep}labels{os.sep}{tail}").with_suffix(".txt")


@pytest.fixture(scope="module")
def source(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("yolo-source")
    synthesize(root, train=COUNTS["train"], val=COUNTS["val"], test=COUNTS["test"], seed=5, progress=False)
    return root


@pytest.fixture(scope="module")
def dataset(source: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One CLI call: two augmented copies of train, val and test once each, un-augmented."""
    out = tmp_path_factory.mktemp("yolo") / "out"
    assert main(_args(source, out, "train,val,test", "--copies", "2")) == 0
    return out


def test_data_yaml_points_every_split_at_its_own_images(
    source: Path, dataset: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert sorted(p.name for p in dataset.iterdir()) == ["data.yaml", "images", "labels"]  # work folder gone
    data = yaml.safe_load((dataset / "data.yaml").read_text())
    names = FlirDetection(source, "train").index.classes
    assert "path" not in data  # Ultralytics then resolves the splits against the yaml's folder
    assert (data["train"], data["val"], data["test"]) == ("images/train", "images/val", "images/test")
    assert data["names"] == dict(enumerate(names)) and data["nc"] == len(names)
    moved = shutil.copytree(dataset, tmp_path / "moved" / "out")  # still trains after a move or copy,
    monkeypatch.chdir(tmp_path)  # from any working directory
    folders = _ultralytics_folders(Path("moved/out/data.yaml"))
    assert folders == {split: (moved / "images" / split).resolve() for split in COUNTS}


def test_label_files_match_image_files(dataset: Path) -> None:
    nc = yaml.safe_load((dataset / "data.yaml").read_text())["nc"]
    for split, n in COUNTS.items():
        images = sorted((dataset / "images" / split).iterdir())
        copies = 2 if split == "train" else 1
        assert len(images) == n * copies and all(p.suffix == ".jpg" for p in images)
        labels = sorted((dataset / "labels" / split).iterdir())
        assert labels == sorted(_label_path(p) for p in images)
        lines = [line.split() for p in labels for line in p.read_text().splitlines()]
        assert lines and all(len(fields) == 5 for fields in lines)  # 'cls cx cy w h'
        for path in labels:  # raises unless every value is in [0, 1]
            classes, boxes = parse_yolo_labels(path)
            assert ((classes >= 0) & (classes < nc)).all() and (boxes[:, 2:] > 0).all()


def test_val_and_test_are_the_original_frames_and_boxes(source: Path, dataset: Path) -> None:
    for split in ("val", "test"):
        plain = FlirDetection(source, split)  # no transform: the frames and boxes as annotated
        for i in range(len(plain)):
            image, target = plain[i]
            stem = output_stem(plain.index.file_name(i), 0)
            written = cv2.imread(str(dataset / "images" / split / f"{stem}.jpg"), cv2.IMREAD_GRAYSCALE)
            assert written.shape == image.shape[1:]  # not letterboxed, not resized
            assert np.abs(written.astype(float) - image[0].numpy()).mean() < 2.0  # JPEG at quality 95
            classes, boxes = parse_yolo_labels(dataset / "labels" / split / f"{stem}.txt")
            height, width = written.shape
            xyxy = np.concatenate([boxes[:, :2] - boxes[:, 2:] / 2, boxes[:, :2] + boxes[:, 2:] / 2], axis=1)
            np.testing.assert_allclose(xyxy * ([width, height] * 2), target["boxes"], atol=0.011)
            assert classes.tolist() == (target["labels"] - 1).tolist()


def _train_files(out: Path) -> dict[Path, tuple[bytes, int]]:
    files = [p for p in out.rglob("*") if p.is_file() and "train" in p.relative_to(out).parts]
    return {p: (p.read_bytes(), p.stat().st_mtime_ns) for p in files}


def test_exporting_val_never_touches_train(source: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    train = FlirDetection(source, "train", transform=build_transform("thermal", size=(128, 160)), seed=SEED)
    export_augmented(train, out, fmt="yolo", split="train", batch_size=4, progress=False)
    before = _train_files(out)
    assert before and yaml.safe_load((out / "data.yaml").read_text())["train"] == "images/train"
    summary = export_augmented(FlirDetection(source, "val"), out, fmt="yolo", split="val", progress=False)
    assert summary.split == "val" and summary.images == COUNTS["val"]
    assert _train_files(out) == before
    data = yaml.safe_load((out / "data.yaml").read_text())
    assert (data["train"], data["val"]) == ("images/train", "images/val") and "test" not in data
    assert sorted(data["flirdata_export"]["splits"]) == ["train", "val"]


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_splits_one_by_one_on_any_backend_give_the_same_bytes(source: Path, dataset: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    thermal = build_transform("thermal")
    for split in ("test", "val", "train"):  # reverse order, another backend: the same dataset
        ds = FlirDetection(source, split, transform=thermal if split == "train" else None, seed=SEED)
        export_augmented(
            ds,
            out,
            copies=2 if split == "train" else 1,
            fmt="yolo",
            split=split,
            backend="threads",
            workers=2,
            batch_size=3,
            progress=False,
        )
    assert _digest(out) == _digest(dataset)


def test_each_split_resumes_on_its_own(
    source: Path, dataset: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    out = tmp_path / "out"
    assert main(_args(source, out, "train", "--copies", "2")) == 0
    assert "has no val split yet" in capsys.readouterr().out
    with monkeypatch.context() as patch:  # val interrupted after its batches, before data.yaml lists it
        patch.setattr(flirdata.tools.export, "finish_output", functools.partial(_raise, KeyboardInterrupt))
        assert main(_args(source, out, "val")) == 130
    assert (out / WORK_DIR / "val" / "params.json").is_file() and "val" not in (out / "data.yaml").read_text()
    assert main(_args(source, out, "val,test")) == 2
    assert "split 'val' is already there; pass --resume" in capsys.readouterr().err
    assert main(_args(source, out, "test,val", "--resume")) == 0
    assert "wrote 0 of 3 images (3 already there)" in capsys.readouterr().out  # val's batches were all done
    assert main(_args(source, out, "train,val,test", "--copies", "2", "--resume")) == 0
    printed = capsys.readouterr().out
    assert printed.count("already there") == 3 and "train with: yolo detect train data=" in printed
    assert _digest(out) == _digest(dataset)


def _raise(exc_type: type[BaseException], *args: object) -> None:
    raise exc_type()


@pytest.mark.parametrize(
    ("split", "extra", "match"),
    [
        ("train,val", ("--format", "coco"), r"a coco export holds one split per --out"),
        ("train,valid", (), r"--split 'valid': a yolo export takes split names from \['rgb_test', .*'val'\]"),
        ("train,rgb_train", (), r"two splits would fill the same YOLO split"),
        ("val", ("--copies", "3"), r"--copies 3: val and test are written once, un-augmented; pass --augment-all"),
    ],
)
def test_bad_splits_are_one_line(
    source: Path, tmp_path: Path, capsys: pytest.CaptureFixture, split: str, extra: tuple[str, ...], match: str
) -> None:
    assert main([*_args(source, tmp_path / "out", split), *extra]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and re.search(match, err) and not any(tmp_path.iterdir()), err


def test_refuses_a_foreign_folder_other_classes_and_bad_split_values(source: Path, tmp_path: Path) -> None:
    val = FlirDetection(source, "val")
    with pytest.raises(ExportError, match=r"split must be one of \('train', 'val', 'test'\) .* got 'valid'"):
        export_augmented(val, tmp_path / "a", fmt="yolo", split="valid", progress=False)
    with pytest.raises(ExportError, match=r"split is for the yolo format .* got split='val'"):
        export_augmented(val, tmp_path / "a", fmt="coco", split="val", progress=False)
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "notes.txt").write_text("keep me")
    with pytest.raises(ExportError, match=r"not empty and not a YOLO dataset written by this flirdata export"):
        export_augmented(val, tmp_path / "b", fmt="yolo", split="val", progress=False)
    export_augmented(FlirDetection(source, "train"), tmp_path / "c", fmt="yolo", limit=2, progress=False)
    other = FlirDetection(source, "val", classes=("car", "person"))
    with pytest.raises(ExportError, match=r"data.yaml names the classes \['person', .*this split has \['car'"):
        export_augmented(other, tmp_path / "c", fmt="yolo", split="val", progress=False)
    assert not (tmp_path / "a").exists() and not (tmp_path / "c" / "images" / "val").exists()


def test_plan_of_a_split_pickles_and_names_its_folders(tmp_path: Path) -> None:
    plan = ExportPlan(str(tmp_path), "yolo", 95, 4, (0, 1), split="val")
    assert pickle.loads(pickle.dumps(plan)) == plan
    assert (plan.images, plan.labels, plan.work) == ("images/val", "labels/val", f"{WORK_DIR}/val")
    coco = ExportPlan(str(tmp_path), "coco", 95, 4, (0, 1))
    assert (coco.images, coco.labels, coco.work) == ("data", None, WORK_DIR)


def test_rgb_splits_keep_their_colours(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    source = tmp_path / "src"
    synthesize(source, train=2, val=1, seed=3, progress=False, rgb=True)
    assert main(_args(source, tmp_path / "mixed", "train,rgb_val")) == 2
    assert "mixes thermal and rgb splits" in capsys.readouterr().err
    out = tmp_path / "out"
    assert main(_args(source, out, "rgb_train,rgb_val")) == 0
    data = yaml.safe_load((out / "data.yaml").read_text())
    assert (data["train"], data["val"]) == ("images/train", "images/val")
    val = FlirDetection(source, "rgb_val")
    original = cv2.imread(str(val.image_path(0)), cv2.IMREAD_COLOR)  # B, G, R on both sides
    written = cv2.imread(str(out / "images/val" / f"{output_stem(val.index.file_name(0), 0)}.jpg"), cv2.IMREAD_COLOR)
    assert written.shape == original.shape and np.abs(written.astype(float) - original).mean() < 2.0
