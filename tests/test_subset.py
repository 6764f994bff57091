"""``FlirDetection.subset``: some images of a split, each keeping its own augmentation."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from support import backend_params

from flirdata import FlirDetection, build_transform, make_loader

ROWS = (5, 2, 7, 2, -1)


def _same(a: tuple[torch.Tensor, dict], b: tuple[torch.Tensor, dict]) -> None:
    assert torch.equal(a[0], b[0]) and a[1]["image_id"] == b[1]["image_id"]
    for key in ("boxes", "labels", "area", "iscrowd"):
        assert torch.equal(a[1][key], b[1][key]), key


@pytest.fixture()
def ds(synth_root: Path) -> FlirDetection:
    return FlirDetection(synth_root, transform=build_transform("thermal", size=(96, 120)), seed=11)


def test_sample_j_is_the_full_splits_sample_of_rows_j(ds: FlirDetection) -> None:
    part = ds.subset(ROWS)
    assert len(part) == len(ROWS) and part.transform is ds.transform and part.seed == ds.seed
    assert (part.classes, part.modality, part.on_error) == (ds.classes, ds.modality, ds.on_error)
    for j, row in enumerate(ROWS):
        for epoch in (0, 3):
            _same(part.sample(j, epoch), ds.sample(row, epoch))
    assert part.index.file_name(2) == ds.index.file_name(7)
    nested = part.subset([2, 0])
    _same(nested.sample(0, 1), ds.sample(7, 1))
    _same(nested.sample(1, 1), ds.sample(5, 1))


def test_epochs_are_the_subsets_own(ds: FlirDetection) -> None:
    ds.set_epoch(2)
    part = ds.subset(ROWS)
    assert part.epoch == 2
    part.set_epoch(4)
    assert (part.epoch, ds.epoch) == (4, 2)
    _same(part[0], ds.sample(5, 4))


def test_a_subset_pickles_with_its_keys(ds: FlirDetection) -> None:
    part = pickle.loads(pickle.dumps(ds.subset(ROWS)))
    _same(part.sample(1, 5), ds.sample(2, 5))
    assert np.array_equal(part.index.image_ids, ds.index.image_ids[[5, 2, 7, 2, len(ds) - 1]])


@pytest.mark.parametrize("backend", backend_params(["threads", "process"]))
def test_a_subset_loads_the_same_batches_on_a_worker_backend(ds: FlirDetection, backend: str) -> None:
    part = ds.subset(ROWS)
    with make_loader(part, batch_size=2, seed=1) as plain, make_loader(part, backend, 2, batch_size=2, seed=1) as pool:
        for (images, targets), (again, again_targets) in zip(plain, pool, strict=True):
            assert torch.equal(images, again)
            assert [t["image_id"] for t in targets] == [t["image_id"] for t in again_targets]
    images, _ = next(iter(make_loader(part, batch_size=5)))
    assert torch.equal(images[4], ds.sample(len(ds) - 1, 0)[0])


@pytest.mark.parametrize(
    ("rows", "error", "match"),
    [
        ([1.5], TypeError, r"rows must be a sequence of integer indices, got \[1.5\]"),
        ([True], TypeError, r"rows must be a sequence of integer indices, got \[True\]"),
        (3, TypeError, "rows must be a sequence of integer indices, got 3"),
        ([0, 99], IndexError, "index 99 out of range for a dataset of"),
    ],
)
def test_bad_rows_are_named(ds: FlirDetection, rows: object, error: type, match: str) -> None:
    with pytest.raises(error, match=match):
        ds.subset(rows)  # type: ignore[arg-type]
