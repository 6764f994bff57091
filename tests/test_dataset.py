"""FlirDetection: the sample contract, the packed index, category mapping, splits."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from support import write_split

from flirdata import FLIR_CLASSES, FlirDetection, build_transform, collate_detection
from flirdata.coco import load_coco
from flirdata.errors import AnnotationError, DataError, ShmCapacityWarning


def _gray(value: int = 40) -> np.ndarray:
    return np.full((512, 640), value, np.uint8)


def test_sample_contract(synth_root: Path) -> None:
    ds = FlirDetection(synth_root, split="train", transform=build_transform("thermal"))
    for i in range(len(ds)):
        image, target = ds[i]
        assert image.dtype == torch.uint8 and image.shape == (1, 512, 640)
        assert target["boxes"].dtype == torch.float32 and target["boxes"].shape[1] == 4
        assert target["labels"].dtype == torch.int64
        assert len(target["labels"]) == len(target["boxes"])
        assert isinstance(target["image_id"], int)
        assert int(ds.index.image_ids[i]) == target["image_id"]
        boxes = target["boxes"]
        assert torch.all(boxes[:, 2:] > boxes[:, :2])
        assert torch.all(boxes >= 0) and torch.all(boxes[:, [0, 2]] <= 640) and torch.all(boxes[:, [1, 3]] <= 512)
        assert torch.all((target["labels"] >= 1) & (target["labels"] < len(ds.classes)))


def test_negative_index_and_out_of_range(synth_root: Path) -> None:
    ds = FlirDetection(synth_root, split="val")
    assert ds[-1][1]["image_id"] == ds[len(ds) - 1][1]["image_id"]
    with pytest.raises(IndexError, match=str(len(ds))):
        ds[len(ds)]


def test_index_is_packed_arrays(synth_root: Path) -> None:
    ds = FlirDetection(synth_root)
    index = ds.index
    for name, value in vars(index).items():
        assert not isinstance(value, (list, dict)) or name == "stats", name
    assert index.boxes.dtype == np.float32 and index.boxes.shape[1] == 4
    assert index.file_names.dtype.kind == "S"
    assert index.box_start[-1] == len(index.boxes) == len(index.labels)
    assert index.nbytes > 0


def test_categories_map_by_name_with_non_contiguous_ids(tmp_path: Path) -> None:
    # ids as in the real file, declared out of order, plus declared-but-unused categories
    categories = [(79, "other vehicle"), (1, "person"), (3, "car"), (5, "airplane"), (18, "deer")]
    folder = write_split(
        tmp_path / "s", [_gray(), _gray()], [[[1, 1, 5, 5], [10, 10, 5, 5]], [[2, 2, 4, 4]]], [[79, 1], [3]], categories
    )
    ds = FlirDetection(tmp_path, split=folder)
    assert ds.classes[0] == "__background__"
    assert ds.classes[1:] == FLIR_CLASSES
    _, target = ds[0]
    assert [ds.classes[label] for label in target["labels"].tolist()] == ["other vehicle", "person"]
    assert ds.classes[int(ds[1][1]["labels"][0])] == "car"
    assert ds.index.category_ids[FLIR_CLASSES.index("other vehicle") + 1] == 79


def test_unlisted_used_class_is_appended_or_dropped(tmp_path: Path) -> None:
    folder = write_split(
        tmp_path / "s", [_gray()], [[[1, 1, 5, 5], [9, 9, 5, 5]]], [[1, 90]], [(1, "person"), (90, "zebra")]
    )
    assert FlirDetection(tmp_path, split=folder).classes[-1] == "zebra"
    ds = FlirDetection(tmp_path, split=folder, classes=["person"])
    assert ds.classes == ("__background__", "person")
    assert ds[0][1]["labels"].tolist() == [1]
    assert ds.index.stats["unknown_category"] == 1


def test_degenerate_dropped_and_out_of_frame_clipped_are_counted(tmp_path: Path) -> None:
    # [640, 100, 5, 5] only touches the frame's right edge: degenerate once clipped, not corrupt
    boxes = [[10, 10, 30, 30], [50, 50, 0, 20], [620, 500, 40, 40], [-10, 5, 30, 30], [640, 100, 5, 5]]
    folder = write_split(tmp_path / "s", [_gray()], [boxes], [[1] * 5])
    ds = FlirDetection(tmp_path, split=folder)
    stats = ds.stats
    assert stats["degenerate_dropped"] == 2 and stats["clipped"] == 2 and stats["boxes"] == 3
    np.testing.assert_allclose(ds[0][1]["boxes"].numpy(), [[10, 10, 40, 40], [620, 500, 640, 512], [0, 5, 20, 35]])


def test_real_flir_layout_splits(synth_root: Path) -> None:
    assert len(FlirDetection(synth_root, "train")) == 24
    assert len(FlirDetection(synth_root, "val")) == 6
    folder = synth_root / "images_thermal_val"
    assert len(FlirDetection(synth_root, folder)) == 6  # a folder holding coco.json works too
    with pytest.raises(DataError, match=r"one of \['rgb_test', 'rgb_train', 'rgb_val', 'test', 'train', 'val'\]"):
        FlirDetection(synth_root, "training")
    with pytest.raises(DataError, match="video_thermal_test"):
        FlirDetection(synth_root, "test")
    with pytest.raises(DataError, match="nowhere"):
        FlirDetection(synth_root / "nowhere", "train")


def test_three_channel_jpeg_decodes_to_one_channel(tmp_path: Path) -> None:
    rgb = np.dstack([_gray(90)] * 3)
    folder = write_split(tmp_path / "s", [rgb], [[[5, 5, 10, 10]]], [[1]])
    image, _ = FlirDetection(tmp_path, split=folder)[0]
    assert image.shape == (1, 512, 640) and int(image[0, 0, 0]) == 90


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("{not json", "not valid JSON"),
        ("[]", "top level is list"),
        ('{"images": [], "annotations": []}', "missing list 'categories'"),
        ('{"images": [{"id": 1}], "annotations": [], "categories": []}', "images\\[0\\] needs"),
        (
            '{"images": [{"id": 1, "file_name": "a.jpg", "width": 4, "height": 4}], "categories": [],'
            ' "annotations": [{"id": 7, "image_id": 1, "category_id": 3, "bbox": [0, 0, 1, 1]}]}',
            "annotation id 7",
        ),
        (
            '{"images": [{"id": 1, "file_name": "a.jpg", "width": 4, "height": 4}],'
            ' "categories": [{"id": 3, "name": "car"}],'
            ' "annotations": [{"id": 8, "image_id": 1, "category_id": 3, "bbox": [0, 0, 1]}]}',
            "annotation id 8",
        ),
    ],
)
def test_bad_coco_json_names_the_file(tmp_path: Path, text: str, match: str) -> None:
    path = tmp_path / "coco.json"
    path.write_text(text)
    with pytest.raises(AnnotationError, match=match) as info:
        load_coco(path)
    assert str(path) in str(info.value)


def test_dataset_pickle_round_trip(synth_root: Path) -> None:
    ds = FlirDetection(synth_root, transform=build_transform("thermal"), seed=3)
    ds.set_epoch(2)
    ds[0]  # populate the per-thread pipeline cache, which must not travel
    clone = pickle.loads(pickle.dumps(ds))
    a, b = ds[5], clone[5]
    assert torch.equal(a[0], b[0]) and torch.equal(a[1]["boxes"], b[1]["boxes"])


def test_collate_stacks_images_and_keeps_empty_targets(tmp_path: Path) -> None:
    folder = write_split(tmp_path / "s", [_gray(), _gray()], [[[1, 1, 5, 5]], []], [[1], []])
    ds = FlirDetection(tmp_path, split=folder, transform=build_transform("none", size=(256, 320)))
    images, targets = collate_detection([ds[0], ds[1]])
    assert images.dtype == torch.uint8 and images.shape == (2, 1, 256, 320)
    assert targets[1]["boxes"].shape == (0, 4) and targets[1]["labels"].shape == (0,)
    np.testing.assert_allclose(targets[0]["boxes"].numpy(), [[0.5, 0.5, 3, 3]])
    with pytest.raises(ValueError, match="share a shape"):
        collate_detection([ds[0], (torch.zeros(1, 3, 3, dtype=torch.uint8), targets[0])])


def test_synth_annotation_file_is_json(synth_root: Path) -> None:
    data = json.loads((synth_root / "images_thermal_train" / "coco.json").read_text())
    assert {"images", "annotations", "categories"} <= set(data)


def test_an_epoch_dev_shm_cannot_hold_is_kept_in_this_process_with_one_warning(
    synth_root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def full(self: torch.Tensor) -> torch.Tensor:
        raise RuntimeError(
            "unable to allocate shared memory(shm) for file </torch_1_2_0>: No space left on device (28)"
        )

    monkeypatch.setattr(torch.Tensor, "share_memory_", full)  # before: that RuntimeError from FlirDetection()
    with pytest.warns(ShmCapacityWarning, match=r"/dev/shm cannot hold the dataset's epoch .*No space left") as caught:
        dataset = FlirDetection(synth_root, "train", transform=build_transform("thermal"), seed=0)
    assert len(caught) == 1
    dataset.set_epoch(2)
    monkeypatch.undo()
    shared = FlirDetection(synth_root, "train", transform=build_transform("thermal"), seed=0)
    shared.set_epoch(2)
    assert dataset.epoch == 2 and torch.equal(dataset[0][0], shared[0][0])  # the same samples either way
