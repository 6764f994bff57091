"""``flirdata export``: round trips, identical bytes on every backend, resume, clear failures."""

from __future__ import annotations

import functools
import hashlib
import json
import os
import pickle
import signal
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import pytest
import yaml
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval
from support import export_argv

import flirdata.files
import flirdata.tools.export
from flirdata.cli import main
from flirdata.dataset import FlirDetection
from flirdata.errors import AnnotationError
from flirdata.synth import synthesize
from flirdata.tools.export import (
    WORK_DIR,
    BatchResult,
    BatchWriter,
    ExportError,
    ExportPlan,
    ExportSummary,
    export_augmented,
    export_item,
    output_stem,
)
from flirdata.tools.export.formats.yolo import parse_yolo_labels
from flirdata.transforms import build_transform

REPO = Path(__file__).resolve().parent.parent
SIZE = (128, 160)  # small frames keep the tests fast; the CLI test uses the full 512x640
SEED = 7
Exported = tuple[Path, ExportSummary]


def _digest(folder: Path) -> dict[str, str]:
    """sha256 of every file under ``folder``, by relative path (hidden files included)."""
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def _dataset(root: Path, size: tuple[int, int] = SIZE) -> FlirDetection:
    return FlirDetection(root, "train", transform=build_transform("thermal", size=size), seed=SEED)


@pytest.fixture(scope="module")
def source(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("export-source")
    synthesize(root, train=12, val=0, seed=3, progress=False)
    return root


@pytest.fixture(scope="module")
def coco_export(source: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, ExportSummary]:
    out = tmp_path_factory.mktemp("coco") / "out"
    return out, export_augmented(_dataset(source), out, copies=2, batch_size=5, progress=False)


def test_coco_round_trip(source: Path, coco_export: Exported) -> None:
    out, summary = coco_export
    assert sorted(p.name for p in out.iterdir()) == ["coco.json", "data"]  # work folder gone
    ds = _dataset(source)
    back = FlirDetection(out, split=out)
    assert len(back) == summary.images == summary.written == 24
    coco = COCO(str(out / "coco.json"))
    assert len(coco.getAnnIds()) == summary.boxes_kept > 0
    for image_id, entry in coco.imgs.items():
        for ann in coco.loadAnns(coco.getAnnIds(imgIds=image_id)):
            x, y, w, h = ann["bbox"]
            assert w > 0 and h > 0 and x >= 0 and y >= 0
            assert x + w <= entry["width"] + 1e-6 and y + h <= entry["height"] + 1e-6
            # the dataset's target["area"] is the unrounded box's: within the 0.01 px rounding of w and h
            assert ann["area"] == pytest.approx(w * h, abs=0.01 * (w + h)) and ann["iscrowd"] == 0
    for j in (0, 13, 23):  # image j is copy j // 12 of image j % 12: ds.sample(i, epoch=k)
        entry = coco.imgs[j + 1]
        i, k = j % 12, j // 12
        assert entry["extra_info"] == {
            "source_file_name": ds.index.file_name(i),
            "source_image_id": int(ds.index.image_ids[i]),
            "copy": k,
        }
        image, target = ds.sample(i, epoch=k)
        decoded, back_target = back[j]
        assert decoded.shape == image.shape == (1, *SIZE)
        assert (decoded.float() - image.float()).abs().mean() < 2.0  # JPEG at quality 95
        np.testing.assert_allclose(back_target["boxes"], target["boxes"], atol=0.011)
        assert back_target["labels"].tolist() == target["labels"].tolist()


# pycocotools' compiled decode warns under numpy 2 about its own __array__; nothing of ours
@pytest.mark.filterwarnings("ignore:__array__ implementation doesn't accept a copy keyword:DeprecationWarning")
def test_pycocotools_reads_masks_and_evaluates_the_export(coco_export: Exported) -> None:
    out, _ = coco_export
    coco = COCO(str(out / "coco.json"))
    assert all(isinstance(i["height"], int) and isinstance(i["width"], int) for i in coco.imgs.values())
    anns = coco.loadAnns(coco.getAnnIds())
    for ann in anns:
        x, y, w, h = ann["bbox"]
        assert isinstance(ann["area"], float) and ann["iscrowd"] == 0 and isinstance(ann["iscrowd"], int)
        np.testing.assert_allclose(ann["segmentation"], [[x, y, x + w, y, x + w, y + h, x, y + h]], atol=0.011)
        mask = coco.annToMask(ann)
        entry = coco.imgs[ann["image_id"]]
        assert mask.shape == (entry["height"], entry["width"])
        ys, xs = np.nonzero(mask)
        assert len(xs), ann
        mask_box = [xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]
        np.testing.assert_allclose(mask_box, [x, y, x + w, y + h], atol=1.0)
    for iou_type in ("bbox", "segm"):  # the ground truth as detections scores AP 1.0
        key = "bbox" if iou_type == "bbox" else "segmentation"
        dets = [
            {
                "image_id": a["image_id"],
                "category_id": a["category_id"],
                "score": 1.0,
                key: a["bbox"] if iou_type == "bbox" else coco.annToRLE(a),
            }
            for a in anns
        ]
        evaluation = COCOeval(coco, coco.loadRes(dets), iou_type)
        evaluation.evaluate()
        evaluation.accumulate()
        evaluation.summarize()
        assert evaluation.stats[0] == pytest.approx(1.0), iou_type


def test_coco_categories_keep_their_ids_and_names(source: Path, coco_export: Exported) -> None:
    out, _ = coco_export
    source_coco = json.loads((source / "images_thermal_train/coco.json").read_text())
    original = {c["id"]: c["name"] for c in source_coco["categories"]}
    written = {c["id"]: c["name"] for c in json.loads((out / "coco.json").read_text())["categories"]}
    assert written and all(original[cid] == name for cid, name in written.items())
    used = {a["category_id"] for a in json.loads((out / "coco.json").read_text())["annotations"]}
    assert used <= written.keys()
    assert FlirDetection(out, split=out).classes == _dataset(source).classes


def test_yolo_agrees_with_coco(source: Path, coco_export: Exported, tmp_path: Path) -> None:
    coco_out, _ = coco_export
    out = tmp_path / "yolo"
    summary = export_augmented(_dataset(source), out, copies=2, fmt="yolo", batch_size=5, progress=False)
    assert summary.boxes_kept == coco_export[1].boxes_kept and summary.split == "train"
    data = yaml.safe_load((out / "data.yaml").read_text())
    names = list(_dataset(source).index.classes)
    assert data["train"] == "images/train" and "val" not in data and data["nc"] == len(names)
    assert data["names"] == dict(enumerate(names))
    coco = json.loads((coco_out / "coco.json").read_text())
    label_of = {cid: names.index(name) for cid, name in ((c["id"], c["name"]) for c in coco["categories"])}
    for entry in coco["images"]:
        stem = Path(entry["file_name"]).stem
        assert (out / "images/train" / f"{stem}.jpg").read_bytes() == (coco_out / entry["file_name"]).read_bytes()
        classes, boxes = parse_yolo_labels(out / "labels/train" / f"{stem}.txt")
        anns = [a for a in coco["annotations"] if a["image_id"] == entry["id"]]
        assert classes.tolist() == [label_of[a["category_id"]] for a in anns]
        scale = np.array([entry["width"], entry["height"]] * 2)
        xywh = np.concatenate([boxes[:, :2] - boxes[:, 2:] / 2, boxes[:, 2:]], axis=1) * scale
        np.testing.assert_allclose(xywh, np.array([a["bbox"] for a in anns]).reshape(-1, 4), atol=1e-3)


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_same_bytes_on_every_backend(source: Path, coco_export: Exported, tmp_path: Path) -> None:
    expected = _digest(coco_export[0])
    runs = [("threads", 2, 3), ("process", 2, 5), ("sequential", 1, 24)]  # batch size changes nothing
    for backend, workers, batch_size in runs:
        out = tmp_path / backend
        export_augmented(
            _dataset(source), out, copies=2, backend=backend, workers=workers, batch_size=batch_size, progress=False
        )
        assert _digest(out) == expected, backend


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_killed_export_resumes_to_the_same_bytes(source: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "killed"
    cmd = [sys.executable, "-m", "flirdata", *export_argv(source, out, "threads", seed=SEED)]
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    shards = out / WORK_DIR / "shards"
    while proc.poll() is None:  # (the hang guard bounds it)
        if shards.is_dir() and len(list(shards.glob("*.json"))) >= 2:
            proc.send_signal(signal.SIGKILL)
            break
        time.sleep(0.005)
    _, err = proc.communicate()
    assert proc.returncode == -signal.SIGKILL, f"export was not killed mid-way: {err.decode()}"
    assert (out / WORK_DIR).is_dir() and not (out / "coco.json").exists()
    assert main(export_argv(source, out, "threads", seed=SEED)) == 2  # not empty, no --resume
    capsys.readouterr()
    assert main(export_argv(source, out, "threads", "--resume", seed=SEED)) == 0, capsys.readouterr().err
    assert "already there" in capsys.readouterr().out
    clean = tmp_path / "clean"
    export_augmented(_dataset(source, (512, 640)), clean, copies=8, batch_size=4, progress=False)
    assert _digest(out) == _digest(clean)


def test_interrupted_export_resumes_and_refuses_other_settings(
    source: Path, coco_export: Exported, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "out"
    with monkeypatch.context() as patch:  # interrupted after every batch was written, before the merge
        patch.setattr(flirdata.tools.export, "finish_output", functools.partial(_raise, KeyboardInterrupt))
        with pytest.raises(KeyboardInterrupt):
            export_augmented(_dataset(source), out, copies=2, batch_size=5, progress=False)
    (out / "data" / output_stem(_dataset(source).index.file_name(3), 1)).with_suffix(".jpg").unlink()
    (out / "data" / ".half-written.jpg.123-456.tmp").write_bytes(b"\xff\xd8")  # what kill -9 leaves
    with pytest.raises(ExportError, match=r"not empty; pass --resume"):
        export_augmented(_dataset(source), out, copies=2, batch_size=5, progress=False)
    with pytest.raises(ExportError, match=r"other settings \(batch_size 5, now 4; copies 2, now 3"):
        export_augmented(_dataset(source), out, copies=3, batch_size=4, resume=True, progress=False)
    summary = export_augmented(_dataset(source), out, copies=2, batch_size=5, resume=True, progress=False)
    assert summary.written == 5 and summary.images == 24  # only the batch that lost a file
    assert _digest(out) == _digest(coco_export[0])
    (out / WORK_DIR / "shards").mkdir(parents=True)  # as if killed while deleting the work folder
    (out / WORK_DIR / "shards" / "00000000.json").write_text("{}")
    again = export_augmented(_dataset(source), out, copies=2, batch_size=5, resume=True, progress=False)
    assert again.written == 0 and again.boxes_kept == summary.boxes_kept
    assert _digest(out) == _digest(coco_export[0])
    with pytest.raises(ExportError, match=r"other settings \(quality 95, now 90\)"):
        export_augmented(_dataset(source), out, copies=2, quality=90, resume=True, progress=False)


def _raise(exc_type: type[BaseException], *args: object) -> None:
    raise exc_type()


def test_limit_saves_the_first_augmented_images(source: Path, tmp_path: Path) -> None:
    ds = _dataset(source)
    summary = export_augmented(ds, tmp_path / "samples", copies=3, limit=5, progress=False)
    back = FlirDetection(tmp_path / "samples", split=tmp_path / "samples")
    assert summary.images == len(back) == 5
    for i in range(5):  # what training sees in epoch 0
        np.testing.assert_allclose(back[i][1]["boxes"], ds.sample(i, epoch=0)[1]["boxes"], atol=0.011)


def test_refuses_a_non_empty_out(source: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    (tmp_path / "notes.txt").write_text("keep me")
    assert main(["export", "--data", str(source), "--out", str(tmp_path), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "not empty; pass --resume" in err and str(tmp_path) in err
    assert [p.name for p in tmp_path.iterdir()] == ["notes.txt"]


def test_unwritable_out_is_one_line(source: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    (tmp_path / "file").write_text("")  # a path under a regular file: unwritable even for root
    assert main(["export", "--data", str(source), "--out", str(tmp_path / "file/out"), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "cannot write the output folder (Not a directory)" in err


@pytest.mark.skipif(not Path("/dev/full").exists(), reason="needs /dev/full to fill a 'disk'")
def test_disk_full_is_one_line_and_leaves_no_temporary(
    source: Path, tmp_path: Path, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    def full_disk_open(fd: int, mode: str = "r", **kwargs: object) -> object:
        if "/data/" in os.readlink(f"/proc/self/fd/{fd}"):  # the temporary exists, then the write fails: ENOSPC
            full = os.open("/dev/full", os.O_WRONLY)
            os.dup2(full, fd)
            os.close(full)
        return open(fd, mode, **kwargs)

    monkeypatch.setattr(flirdata.files, "open", full_disk_open, raising=False)
    out = tmp_path / "out"
    assert main(["export", "--data", str(source), "--out", str(out), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "No space left on device" in err and str(out / "data") in err
    assert not [p for p in (out / "data").iterdir() if p.name.endswith(".tmp")]


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"copies": 0}, r"copies must be an integer in \[1, inf\], got 0"),
        ({"quality": 101}, r"quality must be an integer in \[0, 100\], got 101"),
        ({"fmt": "voc"}, r"format must be one of \('coco', 'yolo'\), got 'voc'"),
        ({"batch_size": 0}, r"batch_size must be .* got 0"),
        ({"limit": 0}, r"limit must be .* got 0"),
        ({"workers": -1}, r"workers must be an integer in \[0, inf\], got -1"),
    ],
)
def test_bad_arguments_name_the_value(source: Path, tmp_path: Path, kwargs: dict, match: str) -> None:
    with pytest.raises(ExportError, match=match):
        export_augmented(_dataset(source), tmp_path / "out", progress=False, **kwargs)
    assert not (tmp_path / "out").exists()


def test_what_crosses_the_process_boundary_pickles(source: Path, tmp_path: Path) -> None:
    ds = _dataset(source)
    plan = ExportPlan(str(tmp_path), "coco", 95, 5, tuple(int(c) for c in ds.index.category_ids))
    writer = BatchWriter(ds, plan, total=24)
    assert [list(writer.items(b)) for b in (1, 4)] == [[5, 6, 7, 8, 9], [20, 21, 22, 23]]
    for obj in (plan, BatchResult(0, 1, 2, 3), ExportSummary(str(tmp_path), "coco", 1, 1, 0, 0, 0.5)):
        assert pickle.loads(pickle.dumps(obj)) == obj
    copied = pickle.loads(pickle.dumps(writer))
    assert copied.plan == plan and copied.total == 24
    item, again = export_item(ds, 21), export_item(copied.dataset, 21)
    assert (
        (item.index, item.copy, item.stem)
        == (again.index, again.copy, again.stem)
        == (21, 1, output_stem(ds.index.file_name(9), 1))
    )
    assert np.array_equal(item.image, again.image) and np.array_equal(item.xyxy, again.xyxy)
    for folder in (tmp_path / "data", tmp_path / WORK_DIR / "shards"):
        folder.mkdir(parents=True)
    result = copied(4)  # in this process, as a worker runs it: files on disk, counts back
    assert (result.batch, result.images) == (4, 4)
    assert sorted(p.name for p in (tmp_path / "data").iterdir()) == sorted(
        f"{output_stem(ds.index.file_name(j % 12), j // 12)}.jpg" for j in range(20, 24)
    )
    assert json.loads((tmp_path / WORK_DIR / "shards" / "00000004.json").read_text())["kept"] == result.kept


def test_output_names_keep_sub_folders() -> None:
    assert output_stem("data/video-1-frame-2.jpg", 0) == "video-1-frame-2_c0"
    assert output_stem("data/a/b.png", 2) == "a__b_c2"
    assert output_stem("frame.jpeg", 1) == "frame_c1"


def test_yolo_label_file_errors_name_the_line(tmp_path: Path) -> None:
    path = tmp_path / "x.txt"
    path.write_text("0 0.5 0.5 0.1 0.1\n3 0.5 1.5 0.1 0.1\n")
    with pytest.raises(AnnotationError, match=r"x.txt:2: expected 'class cx cy w h' in \[0, 1\]"):
        parse_yolo_labels(path)


def test_jpeg_quality_is_applied(source: Path, tmp_path: Path) -> None:
    export_augmented(_dataset(source), tmp_path / "q", limit=2, quality=40, progress=False)
    export_augmented(_dataset(source), tmp_path / "r", limit=2, quality=95, progress=False)
    low, high = (sum(os.path.getsize(p) for p in (tmp_path / d / "data").iterdir()) for d in "qr")
    assert low < high
    assert cv2.imread(str(next((tmp_path / "q" / "data").iterdir())), cv2.IMREAD_UNCHANGED).ndim == 2
