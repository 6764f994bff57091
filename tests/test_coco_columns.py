"""A coco.json is checked column by column; no error message is formatted for a check that passes.

(The error messages themselves are pinned in ``test_coco_hardening.py``, which runs through the
per-record walk the columns fall back on.)
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

import flirdata.errors
import flirdata.records
from flirdata.coco import parse_coco


class Unprintable(str):
    """A file name whose message formatting fails the test: only a failing check may format it."""

    def __repr__(self) -> str:
        pytest.fail("a message naming a valid file_name was formatted")

    __str__ = __format__ = __repr__  # type: ignore[assignment]


class UnprintableBox(list):
    def __repr__(self) -> str:
        pytest.fail("a message naming a valid bbox was formatted")

    __str__ = __repr__


def _coco(n_images: int = 3, n_anns: int = 12) -> dict[str, Any]:
    images = [{"id": 10 + k, "file_name": f"data/{k}.jpg", "width": 640, "height": 512} for k in range(n_images)]
    anns = [
        {"id": k, "image_id": 10 + k % n_images, "category_id": 1 + k % 2, "bbox": [k % 600, k % 480, 10.5, 20]}
        for k in range(n_anns)
    ]
    return {
        "images": images,
        "annotations": anns,
        "categories": [{"id": 1, "name": "person"}, {"id": 2, "name": "car"}],
    }


def test_valid_records_the_columns_cannot_take_are_walked_without_formatting_a_message() -> None:
    coco = _coco()
    coco["images"][1]["file_name"] = Unprintable("data/1.jpg")  # a str subclass: not a plain column
    coco["annotations"][5]["bbox"] = UnprintableBox([1, 2, 3, 4])
    index = parse_coco(coco, "coco.json")
    assert index.file_name(1) == "data/1.jpg" and len(index.boxes) == 12
    assert index.boxes[index.ann_ids.tolist().index(5)].tolist() == [1, 2, 3, 4]


def test_a_valid_file_is_checked_by_columns_alone(monkeypatch: pytest.MonkeyPatch) -> None:
    def walked(*args: object) -> None:
        pytest.fail("a valid file went through the per-record walk")

    monkeypatch.setattr(flirdata.records, "_check_annotation", walked)
    monkeypatch.setattr(flirdata.records, "_check_image", walked)
    index = parse_coco(_coco(50, 400), "coco.json")
    assert len(index) == 50 and index.stats["annotations"] == 400


def test_columns_and_walk_agree_on_a_valid_file(monkeypatch: pytest.MonkeyPatch) -> None:
    coco = _coco(20, 100)
    coco["annotations"][7].pop("id")  # its position is its id
    coco["annotations"][8]["iscrowd"] = 1
    by_columns = parse_coco(coco, "coco.json")
    monkeypatch.setattr(flirdata.records, "_annotation_columns", lambda *args: None)
    monkeypatch.setattr(flirdata.records, "_image_columns", lambda *args: None)
    by_walk = parse_coco(coco, "coco.json")
    for name in ("image_ids", "file_names", "widths", "heights", "box_start", "boxes", "labels", "ann_ids", "crowd"):
        assert np.array_equal(getattr(by_columns, name), getattr(by_walk, name)), name
    assert by_columns.stats == by_walk.stats


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("id", True, "'id' must be an integer with |value| < 2**63, got True"),
        ("image_id", 2**63, "'image_id' must be an integer with |value| < 2**63"),
        ("category_id", "1", "'category_id' must be an integer"),
        ("bbox", [1, 2, 3, "4"], "'bbox' must be 4 numbers [x, y, w, h], got [1, 2, 3, '4']"),
        ("bbox", [1, 2, 3, True], "'bbox' must be 4 numbers"),
        ("iscrowd", 2, "'iscrowd' must be 0 or 1, got 2"),
        ("image_id", 999, "unknown image_id 999"),
        ("category_id", 7, "category_id 7 is not declared"),
    ],
)
def test_a_bad_annotation_in_a_large_column_is_named_by_the_walk(field: str, value: Any, message: str) -> None:
    coco = _coco(5, 1000)
    coco["annotations"][600][field] = value
    with pytest.raises(flirdata.errors.AnnotationError, match=r"^coco\.json: not a COCO file: annotation") as caught:
        parse_coco(coco, "coco.json")
    assert message in str(caught.value) and ("600" in str(caught.value) or "True" in str(caught.value))
