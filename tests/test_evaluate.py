"""``flirdata.evaluate`` and ``flirdata eval``: COCO metrics in the dataset's own ids, labels and frame."""

from __future__ import annotations

import contextlib
import io
import json
import re
import sys
from pathlib import Path

import albumentations as A
import numpy as np
import pytest
import torch
from support import write_split

from demo_model import TinyDetector, assign_targets
from flirdata import (
    DetectionError,
    FlirDetection,
    MissingExtraError,
    build_transform,
    evaluate,
    export_augmented,
    stats_table,
)
from flirdata.cli import main
from flirdata.evaluation import STATS
from flirdata.transforms import ensure_detection_compose

# pycocotools' compiled helpers warn under numpy 2 about their own __array__; nothing of ours
pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation doesn't accept:DeprecationWarning")


def _truth(ds: FlirDetection, shift: float = 0.0) -> list[dict]:
    """The dataset's targets as detections of score 1, boxes moved right by ``shift`` px."""
    found = []
    for i in range(len(ds)):
        _, target = ds[i]
        boxes = target["boxes"] + torch.tensor([shift, 0.0, shift, 0.0])
        scores = torch.ones(len(boxes))
        found.append({"image_id": target["image_id"], "boxes": boxes, "scores": scores, "labels": target["labels"]})
    return found


def _none(root: Path, split: str | Path = "val", **kwargs) -> FlirDetection:
    return FlirDetection(root, split, transform=build_transform("none", **kwargs))


@pytest.fixture(scope="module")
def val_export(synth_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The val split exported as ``flirdata export --split val --format coco`` writes it (in process)."""
    out = tmp_path_factory.mktemp("export") / "val"
    export_augmented(FlirDetection(synth_root, "val"), out, progress=False)
    return out


def test_ground_truth_scores_one_on_the_split(synth_root: Path) -> None:
    ds = _none(synth_root)
    stats = evaluate(ds, _truth(ds))
    assert list(stats) == list(STATS)
    assert stats["AP"] == stats["AP50"] == stats["AP75"] == stats["AR100"] == pytest.approx(1.0)


def test_ground_truth_scores_one_on_its_coco_export(synth_root: Path, val_export: Path) -> None:
    back = _none(val_export, val_export)
    assert evaluate(back, _truth(back))["AP"] == pytest.approx(1.0)
    # the export of the original frames keeps the split's image and category ids: predictions tagged
    # with the split's image_id score against the export as against the split
    source = _none(synth_root)
    assert back.index.image_ids.tolist() == source.index.image_ids.tolist()
    assert back.index.category_ids.tolist() == source.index.category_ids.tolist()
    assert evaluate(back, _truth(source))["AP"] == pytest.approx(1.0)


def test_augmented_export_numbers_its_images_and_names_the_source(synth_root: Path, tmp_path: Path) -> None:
    ds = FlirDetection(synth_root, "val", transform=build_transform("thermal"), seed=3)
    export_augmented(ds, tmp_path / "out", copies=2, progress=False)
    coco = json.loads((tmp_path / "out" / "coco.json").read_text())
    n = len(ds)
    assert [im["id"] for im in coco["images"]] == list(range(1, 2 * n + 1))
    sources = [im["extra_info"]["source_image_id"] for im in coco["images"]]
    assert sources == ds.index.image_ids.tolist() * 2
    back = _none(tmp_path / "out", tmp_path / "out")
    assert evaluate(back, _truth(back))["AP"] == pytest.approx(1.0)


def test_shifted_or_missing_detections_score_lower(synth_root: Path) -> None:
    ds = _none(synth_root)
    shifted = evaluate(ds, _truth(ds, shift=3.0))
    assert 0.0 < shifted["AP"] < 1.0 and shifted["AP50"] > shifted["AP75"]
    truth = _truth(ds)
    half = [{**d, **{k: d[k][::2] for k in ("boxes", "scores", "labels")}} for d in truth]
    partial = evaluate(ds, half)
    assert partial["AR100"] < 1.0 and partial["AP"] < 1.0
    assert evaluate(ds, truth[: len(truth) // 2])["AR100"] < 1.0  # images left out found nothing


def _swapped_ids(tmp_path: Path) -> FlirDetection:
    """Category id 3 is "person" (label 1), id 1 is "car" (label 3): labels used as ids swap them."""
    image = np.full((64, 96), 80, np.uint8)
    boxes = [[[4, 4, 20, 30], [40, 10, 30, 20]], [[10, 20, 40, 30]]]
    folder = write_split(
        tmp_path / "s", [image, image], boxes, [[3, 1], [79]], ((3, "person"), (1, "car"), (79, "dog"))
    )
    return FlirDetection(tmp_path, folder)


def test_labels_map_to_the_files_category_ids_by_name(tmp_path: Path) -> None:
    ds = _swapped_ids(tmp_path)
    assert ds.index.category_ids[[1, 3, 11]].tolist() == [3, 1, 79]
    truth = _truth(ds)
    assert evaluate(ds, truth)["AP"] == pytest.approx(1.0)
    as_ids = [{**d, "labels": torch.as_tensor(ds.index.category_ids)[d["labels"]].clamp(max=16)} for d in truth]
    assert evaluate(ds, as_ids)["AP"] == 0.0  # category ids given as labels: scored as what they name


def test_tensors_arrays_and_lists_are_all_detections(tmp_path: Path) -> None:
    ds = _swapped_ids(tmp_path)
    for convert in (np.asarray, lambda t: t.tolist()):
        found = [{k: (v if k == "image_id" else convert(v)) for k, v in d.items()} for d in _truth(ds)]
        assert evaluate(ds, found)["AP"] == pytest.approx(1.0)
    empty = [{"image_id": 100, "boxes": torch.zeros(0, 4), "scores": [], "labels": torch.zeros(0, dtype=torch.int64)}]
    assert evaluate(ds, empty)["AP"] == 0.0


def test_letterboxed_predictions_are_mapped_back_to_the_image(tmp_path: Path) -> None:
    # 200 x 100 frames letterboxed into 64 x 64 (scale 0.32, 16 px of padding above and below);
    # the 2-px box is 0.64 px in the sample: the resize keeps it, as the split and the export do
    image = np.full((100, 200), 60, np.uint8)
    boxes = [[10, 10, 50, 40], [120, 30, 70, 60], [198, 40, 2, 20]]
    folder = write_split(tmp_path / "s", [image], [boxes], [[1, 3, 3]])
    ds = _none(tmp_path, folder, size=(64, 64))
    _, target = ds[0]
    assert len(target["boxes"]) == 3
    np.testing.assert_allclose(target["boxes"][0], [3.2, 19.2, 19.2, 32.0], atol=1e-3)
    assert evaluate(ds, _truth(ds))["AP"] == pytest.approx(1.0)
    original = FlirDetection(tmp_path, folder)
    assert evaluate(ds, _truth(original))["AP"] < 1.0  # boxes of the original frame are in the wrong frame


def test_the_eval_transform_and_the_export_keep_the_same_boxes(tmp_path: Path) -> None:
    # a 1-px box at the right edge, one at the left, a half-pixel sliver past the edge, a normal box
    boxes = [[639, 100, 1, 40], [0, 200, 1, 30], [639.5, 50, 3, 20], [100, 100, 40, 40]]
    folder = write_split(tmp_path / "s", [np.full((512, 640), 90, np.uint8)], [boxes], [[1] * 4])
    plain = FlirDetection(tmp_path, folder)
    export_augmented(plain, tmp_path / "out", progress=False)
    exported = json.loads((tmp_path / "out" / "coco.json").read_text())["annotations"]
    kept = _none(tmp_path, folder)[0][1]["boxes"]
    assert len(kept) == len(exported) == len(plain.index.boxes) == 3  # the sliver is under a pixel
    np.testing.assert_allclose(kept[0], [639, 100, 640, 140])


def test_a_random_transform_is_refused(synth_root: Path) -> None:
    ds = FlirDetection(synth_root, "val", transform=build_transform("thermal"))
    with pytest.raises(ValueError, match=r"moves boxes differently from sample to sample .*build_transform\('none'\)"):
        evaluate(ds, [])


@pytest.mark.parametrize("transform", [A.HorizontalFlip(p=1.0), A.CenterCrop(32, 32)])
def test_a_transform_that_is_not_a_resize_is_refused(tmp_path: Path, transform) -> None:
    ds = _swapped_ids(tmp_path)
    ds.transform = ensure_detection_compose(transform)
    with pytest.raises(ValueError, match=r"does more than resize and pad a 96x64 frame"):
        evaluate(ds, [])


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (
            {"image_id": 999},
            r"detections\[0\]: image_id 999 is not an image of .*coco.json \(its 2 image ids span 100..101\)",
        ),
        ({"labels": [17, 1]}, r"detections\[0\] \(image_id 100\): label 17 is out of range; expected 1..16"),
        ({"labels": [0, 1]}, r"label 0 is out of range; expected 1..16"),
        ({"labels": [1.0, 3.0]}, r"labels must be integers 1..16, got dtype float64"),
        ({"scores": [1.0, 1.0, 1.0]}, r"boxes \(2, 4\), scores \(3,\), labels \(2,\); expected boxes \[N, 4\]"),
        ({"boxes": [[4, 4, 20, 30]] * 2 + [[0, 0, 1, 1]]}, r"boxes \(3, 4\), scores \(2,\)"),
        ({"boxes": [[40, 10, 30, 20], [4, 4, 20, 30]]}, r"box \[40.0, 10.0, 30.0, 20.0\] has x2 < x1 .*not COCO xywh"),
        ({"scores": [float("nan"), 1.0]}, r"boxes and scores must be finite"),
        ({"category_id": 3}, r"has 'category_id'; give 'labels' \(1..16"),
        ({"image_id": "a"}, r"image_id must be one integer, got 'a'"),
        ({"scores": [None, 1.0]}, r"boxes, scores and labels must be arrays of numbers"),  # JSON null
        ({"scores": ["a", 1.0]}, r"boxes, scores and labels must be arrays of numbers"),
        ({"boxes": [[4, 4, 24, 34], [5, 6]]}, r"boxes, scores and labels must be arrays of numbers"),
    ],
)
def test_bad_detections_are_one_line_errors(tmp_path: Path, change: dict, message: str) -> None:
    ds = _swapped_ids(tmp_path)
    det = {"image_id": 100, "boxes": [[4, 4, 24, 34], [40, 10, 70, 30]], "scores": [1.0, 0.5], "labels": [1, 3]}
    with pytest.raises(DetectionError, match=message) as info:
        evaluate(ds, [{**det, **change}])
    assert "\n" not in str(info.value)


def test_missing_keys_and_repeated_images_are_refused(tmp_path: Path) -> None:
    ds = _swapped_ids(tmp_path)
    det = {"image_id": 100, "boxes": [[4, 4, 24, 34]], "scores": [1.0], "labels": [1]}
    with pytest.raises(DetectionError, match=r"detections\[0\]: missing \['scores'\]; expected keys"):
        evaluate(ds, [{k: v for k, v in det.items() if k != "scores"}])
    with pytest.raises(DetectionError, match=r"detections\[1\]: image_id 100 again; give one mapping per image"):
        evaluate(ds, [det, det])
    with pytest.raises(DetectionError, match=r"detections\[0\]: expected a mapping .* got list"):
        evaluate(ds, [[1, 2]])


def test_without_pycocotools_the_error_names_the_install_command(tmp_path: Path, monkeypatch) -> None:
    for name in ("pycocotools", "pycocotools.coco", "pycocotools.cocoeval"):
        monkeypatch.setitem(sys.modules, name, None)  # import raises ImportError
    with pytest.raises(MissingExtraError, match=r"pip install 'flirdata\[eval\]'"):
        evaluate(_swapped_ids(tmp_path), [])


def test_stats_table_is_what_cocoeval_prints(val_export: Path) -> None:
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    ds = _none(val_export, val_export)
    stats = evaluate(ds, _truth(ds, shift=2.0))
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO(str(val_export / "coco.json"))
    shifted = [
        {"image_id": d["image_id"], "category_id": int(ds.index.category_ids[label]), "bbox": bbox, "score": 1.0}
        for d in _truth(ds, shift=2.0)
        for label, bbox in zip(d["labels"].tolist(), _xywh(d["boxes"].clamp(max=640)), strict=True)  # clipped
    ]
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        run = COCOeval(gt, gt.loadRes(shifted), "bbox")
        run.evaluate(), run.accumulate(), run.summarize()
    lines = [line for line in printed.getvalue().splitlines() if line.startswith(" Average")]
    assert len(lines) == 12 and stats_table(stats).splitlines() == lines


def _xywh(boxes: torch.Tensor) -> list[list[float]]:
    b = boxes.tolist()
    return [[x1, y1, x2 - x1, y2 - y1] for x1, y1, x2, y2 in b]


def test_eval_command_prints_the_table_and_writes_json(synth_root: Path, val_export: Path, tmp_path, capsys) -> None:
    ds = _none(synth_root)
    found = [{k: (v.tolist() if hasattr(v, "tolist") else v) for k, v in d.items()} for d in _truth(ds)]
    (tmp_path / "dets.json").write_text(json.dumps(found))
    for where in ([str(synth_root)], [str(val_export), "--split", str(val_export)]):
        argv = ["eval", *where, "--detections", str(tmp_path / "dets.json"), "--json", str(tmp_path / "m.json")]
        assert main(argv) == 0
        out = capsys.readouterr().out
        assert out.count("Average Precision  (AP) @[") == 6 and out.count("Average Recall     (AR) @[") == 6
        assert " Average Precision  (AP) @[ IoU=0.50:0.95 | area=   all | maxDets=100 ] = 1.000" in out
        assert json.loads((tmp_path / "m.json").read_text())["AP"] == pytest.approx(1.0)


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("{", r"dets.json: not valid JSON"),
        ('{"image_id": 0}', r"dets.json: expected a JSON list of detections, one object per image; got dict"),
        ('[{"image_id": 0, "boxes": [[0, 0, 5, 5]], "scores": [1], "labels": [40]}]', r"dets.json: detections\[0\] "),
    ],
)
def test_eval_command_errors_are_one_line(synth_root: Path, tmp_path, capsys, content: str, message: str) -> None:
    (tmp_path / "dets.json").write_text(content)
    assert main(["eval", str(synth_root), "--detections", str(tmp_path / "dets.json")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("flirdata eval: error: ")
    assert re.search(message, err), err


def test_tiny_detector_predicts_what_it_was_taught(synth_root: Path) -> None:
    """Outputs made from a batch's own targets decode back to its boxes (``predict`` inverts ``assign_targets``)."""
    ds = _none(synth_root)
    images = torch.stack([ds[i][0] for i in range(2)])
    targets = [ds[i][1] for i in range(2)]

    class Taught(TinyDetector):
        def forward(self, x):
            shape = (len(x), self.num_classes, x.shape[2] // self.stride, x.shape[3] // self.stride)
            heat, box, _ = assign_targets(targets, shape, self.stride)
            return heat * 20 - 10, box

    found = Taught(num_classes=len(ds.classes) - 1).predict(images, max_detections=100)
    assert len(found) == 2 and all(set(d) == {"boxes", "scores", "labels"} for d in found)
    for target, det in zip(targets, found, strict=True):
        confident = det["scores"] > 0.5
        cells = (target["boxes"][:, :2] + target["boxes"][:, 2:]) / (2 * TinyDetector.stride)
        owners = {(int(label), *cell) for label, cell in zip(target["labels"], cells.long().tolist(), strict=True)}
        assert int(confident.sum()) == len(owners) > 0  # one detection per (class, centre cell)
        for box, label in zip(det["boxes"][confident], det["labels"][confident], strict=True):
            same = target["boxes"][target["labels"] == label]
            assert (same - box).abs().max(dim=1).values.min() < 1e-3  # decoded exactly to a taught box
    stats = evaluate(ds.subset([0, 1]), [{"image_id": t["image_id"], **d} for t, d in zip(targets, found, strict=True)])
    assert stats["AP50"] > 0.5


def test_demo_reports_val_map(synth_root: Path) -> None:
    import train_demo

    line = train_demo.val_map(TinyDetector(num_classes=16), synth_root, batch_size=4)
    assert re.fullmatch(r"val mAP   : AP [\d.]+, AP50 [\d.]+, AR100 [\d.]+ on 6 val images .*", line)
