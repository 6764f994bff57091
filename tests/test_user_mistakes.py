"""Careless use met with one clear error: shared category ids, a transform changing the channels,
an epoch past int64, a float index, a collate lambda for worker processes, a failing transform."""

from __future__ import annotations

import json
import pickle
import re
from pathlib import Path
from typing import Any

import albumentations as A
import numpy as np
import pytest
from support import our_children, write_split

from flirdata import AnnotationError, FlirDetection, build_transform, make_loader
from flirdata.backends import Fetcher
from flirdata.backends._spawning import plan_worker_start
from flirdata.collate import collate_detection
from flirdata.tools.check import check_dataset


def _grey(seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 255, (40, 64), dtype=np.uint8)


@pytest.fixture
def thermal_root(tmp_path: Path) -> Path:
    write_split(tmp_path / "images_thermal_train", [_grey(0), _grey(1)], [[[4, 4, 10, 10]], [[5, 5, 8, 8]]], [[3], [1]])
    return tmp_path


# -- row 4: two categories sharing an id ------------------------------------------------------
def _share_id(root: Path, categories: list[dict[str, Any]]) -> Path:
    path = root / "images_thermal_train" / "coco.json"
    coco = json.loads(path.read_text())
    coco["categories"] = categories
    path.write_text(json.dumps(coco))
    return path


def test_two_categories_sharing_an_id_are_an_annotation_error_naming_both(thermal_root: Path) -> None:
    cats = [{"id": 1, "name": "person"}, {"id": 3, "name": "car"}, {"id": 3, "name": "person"}]
    path = _share_id(thermal_root, cats)
    both = re.escape("categories[1] {'id': 3, 'name': 'car'} and categories[2] {'id': 3, 'name': 'person'} share id 3")
    with pytest.raises(AnnotationError, match=f"^{re.escape(str(path))}: duplicate category id: {both}"):
        FlirDetection(thermal_root, "train")
    report = check_dataset(thermal_root, progress=False)
    (error,) = report.errors
    assert error.path == str(path) and error.message.startswith("duplicate category id: categories[1]")


def test_a_category_repeated_with_its_own_name_is_harmless(thermal_root: Path) -> None:
    _share_id(thermal_root, [{"id": 1, "name": "person"}, {"id": 3, "name": "car"}, {"id": 3, "name": "car"}])
    assert FlirDetection(thermal_root, "train")[0][1]["labels"].tolist() == [3]  # car


# -- row 5: a transform that changes the channels ----------------------------------------------
class _Colourise(A.ImageOnlyTransform):
    """Grey [H, W] -> [H, W, 3], or colour -> grey [H, W]: what a careless user transform does."""

    def __init__(self, to: int) -> None:
        super().__init__(p=1.0)
        self.to = to

    def apply(self, img: np.ndarray, **params: Any) -> np.ndarray:
        grey = img if img.ndim == 2 else img[:, :, 0]
        return grey if self.to == 1 else np.stack([grey, grey // 2, grey // 3], axis=-1)


def _pipeline(to: int) -> A.Compose:
    return A.Compose(
        [A.HorizontalFlip(p=1.0), _Colourise(to)], bbox_params=A.BboxParams(format="coco", label_fields=["labels"])
    )


def test_a_transform_returning_colour_on_a_thermal_split_is_an_error(thermal_root: Path) -> None:
    ds = FlirDetection(thermal_root, "train", _pipeline(3))
    message = r"the transform returned an image of shape \[40, 64, 3\], but split .* is thermal \(1 channel\)"
    with pytest.raises(ValueError, match=message + r": expected \[H, W\] or \[H, W, 1\]"):
        ds[0]


def test_a_transform_returning_grey_on_an_rgb_split_is_an_error(rgb_root: Path) -> None:
    ds = FlirDetection(rgb_root, "rgb_train", _pipeline(1))
    with pytest.raises(ValueError, match=r"shape \[48, 64\], but split .* is rgb \(3 channels\): expected \[H, W, 3\]"):
        ds[0]


# -- row 12: epoch range, index type, collate function, the note of a failing transform ---------
@pytest.mark.parametrize("epoch", [2**63, 2**70])
def test_an_epoch_past_int64_is_a_value_error_naming_the_range(thermal_root: Path, epoch: int) -> None:
    ds = FlirDetection(thermal_root, "train", build_transform("thermal"))
    message = f"epoch must be an integer in 0..{2**63 - 1}, got {epoch}"
    with pytest.raises(ValueError, match=message):
        ds.set_epoch(epoch)
    with pytest.raises(ValueError, match=message):
        ds.sample(0, epoch)
    with make_loader(ds, backend="sequential") as loader, pytest.raises(ValueError, match=message):
        loader.set_epoch(epoch)
    ds.set_epoch(2**63 - 1)  # the last epoch there is
    assert ds.epoch == 2**63 - 1 and ds[0][0].shape[0] == 1


@pytest.mark.parametrize("index", [1.0, "1", True, None])
def test_a_non_integer_index_is_a_type_error(thermal_root: Path, index: Any) -> None:
    ds = FlirDetection(thermal_root, "train")
    with pytest.raises(TypeError, match=f"dataset indices must be integers, got {type(index).__name__}"):
        ds[index]
    assert ds[np.int64(1)][1]["image_id"] == ds[1][1]["image_id"]


def _collate_lambda() -> Any:
    return lambda batch: collate_detection(batch)


def _local_collate() -> Any:
    def collate(batch: list[Any]) -> Any:
        return collate_detection(batch)

    return collate


@pytest.mark.parametrize("make", [_collate_lambda, _local_collate])
def test_a_collate_function_that_does_not_pickle_is_refused_before_workers_start(thermal_root: Path, make: Any) -> None:
    fetcher = Fetcher(FlirDetection(thermal_root, "train"), make())
    message = (
        r"^flirdata 'process' backend: the collate function .* cannot be pickled to reach the worker processes "
        r"\(.*\); make it a module-level function .* or use backend='threads' or 'loky'"
    )
    with pytest.raises(TypeError, match=message) as caught:
        plan_worker_start(fetcher, "process")
    assert "\n" not in str(caught.value)


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["process", "dataloader"])
def test_a_collate_lambda_fails_in_one_line_without_a_worker(thermal_root: Path, backend: str) -> None:
    ds = FlirDetection(thermal_root, "train")
    before = {child.pid for child in our_children()}  # earlier tests' helpers (a forkserver, a tracker)
    with make_loader(ds, backend=backend, workers=2, batch_size=2, collate_fn=lambda b: collate_detection(b)) as loader:
        with pytest.raises(TypeError, match=f"^flirdata '{backend}' backend: the collate function .*<lambda> cannot"):
            next(iter(loader))
        assert [child for child in our_children() if child.pid not in before] == []  # no worker started


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["threads", "loky"])
def test_threads_and_loky_take_a_collate_lambda(thermal_root: Path, backend: str) -> None:
    ds = FlirDetection(thermal_root, "train")
    with make_loader(ds, backend=backend, workers=2, batch_size=2, collate_fn=lambda b: len(b)) as loader:
        assert list(loader) == [2]


class _Raises(A.ImageOnlyTransform):
    def __init__(self) -> None:
        super().__init__(p=1.0)

    def apply(self, img: np.ndarray, **params: Any) -> np.ndarray:
        raise RuntimeError("the user's transform failed")


def test_the_note_of_a_failing_transform_names_the_file(thermal_root: Path) -> None:
    pipeline = A.Compose(
        [A.HorizontalFlip(p=1.0), _Raises()], bbox_params=A.BboxParams(format="coco", label_fields=["labels"])
    )
    ds = FlirDetection(thermal_root, "train", pipeline)
    with make_loader(ds, backend="sequential", batch_size=2) as loader:
        with pytest.raises(RuntimeError, match="the user's transform failed") as caught:
            list(loader)
    path = thermal_root / "images_thermal_train" / "data" / "image-0000.png"
    assert f"flirdata: while loading sample 0 (epoch 0, file {path})" in caught.value.__notes__


def test_the_fetcher_with_its_file_note_still_pickles(thermal_root: Path) -> None:
    fetcher = Fetcher(FlirDetection(thermal_root, "train"), collate_detection)
    assert len(pickle.loads(pickle.dumps(fetcher))((0, (0, 1)))[0]) == 2
