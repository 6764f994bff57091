"""coco.json values out of range or of the wrong type are AnnotationErrors, never tracebacks.

Corrupt boxes (NaN, inf, 1e300, far off the frame) must not be "repaired" into frame-wide
ones, ids and sizes must fit what the packed index stores, and ``flirdata synth`` rejects image
counts numpy cannot hold with one line.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from support import write_split

from flirdata import synth
from flirdata.cli import main
from flirdata.coco import CocoIndex, load_coco, parse_coco
from flirdata.errors import AnnotationError, DataError


def _coco(image: dict | None = None, ann: dict | None = None, cat: dict | None = None) -> dict[str, Any]:
    """One 640x512 image with one car box, the given fields replaced."""
    return {
        "images": [{"id": 1, "file_name": "data/a.jpg", "width": 640, "height": 512, **(image or {})}],
        "annotations": [{"id": 7, "image_id": 1, "category_id": 3, "bbox": [10, 10, 20, 20], **(ann or {})}],
        "categories": [{"id": 3, "name": "car", **(cat or {})}],
    }


def _load(tmp_path: Path, coco: dict[str, Any]) -> CocoIndex:
    path = tmp_path / "coco.json"
    path.write_text(json.dumps(coco))  # NaN and Infinity are written as Python's json reads them
    return load_coco(path)


# --- boxes ----------------------------------------------------------------------------------------

CORRUPT_BOXES = {
    "inf width": ([10, 10, float("inf"), 20], "is not finite"),
    "nan": ([float("nan"), 10, 20, 20], "is not finite"),
    "beyond float64": ([0, 0, 10**400, 20], "is not finite"),
    "1e300": ([0, 0, 1e300, 1e300], "reaches past the frame by more than the frame's own size"),
    "far left": ([-700, 10, 750, 20], "reaches past the frame by more than the frame's own size"),
    "right of the frame": ([705, 10, 5, 5], "lies wholly outside the frame, more than 10% of its size away"),
    "above the frame": ([10, -80, 20, 20], "lies wholly outside the frame, more than 10% of its size away"),
}


@pytest.mark.parametrize("case", sorted(CORRUPT_BOXES))
def test_corrupt_box_is_an_error_naming_file_annotation_value_and_limits(tmp_path: Path, case: str) -> None:
    bbox, reason = CORRUPT_BOXES[case]
    expected = (
        f"{tmp_path / 'coco.json'}: corrupt box: annotation id 7 on image id 1 (data/a.jpg, 640x512): "
        f"bbox {bbox!r} {reason}"
    )
    with pytest.raises(AnnotationError, match=re.escape(expected)) as info:
        _load(tmp_path, _coco(ann={"bbox": bbox}))
    assert "a box reaching into x -64..704, y -51.2..563.2 and staying within x -640..1280, y -512..1024" in str(
        info.value
    )


@pytest.mark.parametrize(
    ("k", "further", "reason"),
    [(1, [600, 10, 680.5, 5], "reaches past the frame"), (3, [704.5, 10, 5, 5], "lies wholly outside")],
)
def test_boxes_up_to_the_limits_are_clipped_or_dropped_and_past_them_fail(k: int, further: list, reason: str) -> None:
    # reaching to 2 x the frame; from -1 x; a slip lying 10% of the width off; synth's zero-width slip
    near = [[600, 10, 680, 5], [-640, 10, 700, 5], [704, 10, 5, 5], [-5, 0, 0, 20]]
    coco = _coco()
    coco["annotations"] += [{"id": 8 + j, "image_id": 1, "category_id": 3, "bbox": b} for j, b in enumerate(near)]
    stats = parse_coco(coco, "coco.json").stats
    assert (stats["boxes"], stats["clipped"], stats["degenerate_dropped"]) == (3, 2, 2)
    coco["annotations"][k]["bbox"] = further  # half a pixel further
    with pytest.raises(AnnotationError, match=rf"annotation id {7 + k} .* {reason}"):
        parse_coco(coco, "coco.json")


# --- ids, sizes and names ------------------------------------------------------------------------

BAD_FIELDS = {
    "image id 2**70": ({"image": {"id": 2**70}}, r"images\[0\] needs an integer 'id' \(\|id\| < 2\*\*63\)"),
    "width 2**40": ({"image": {"width": 2**40}}, r"width and height in 1\.\.65535 \(the JPEG limit\), got width 1099"),
    "empty file_name": ({"image": {"file_name": ""}}, r"images\[0\] needs a non-empty string 'file_name' .*, got ''$"),
    "NUL in file_name": ({"image": {"file_name": "a.jpg\0"}}, r"no NUL"),
    "lone surrogate": ({"image": {"file_name": "a\ud800.jpg"}}, r"images\[0\] needs .* 'file_name' \(UTF-8"),
    "annotation id 2**63": ({"ann": {"id": 2**63}}, r"'id' must be an integer with \|value\| < 2\*\*63, got 9223"),
    "annotation id true": ({"ann": {"id": True}}, r"'id' must be an integer with \|value\| < 2\*\*63, got True"),
    "image_id 2**70": ({"ann": {"image_id": 2**70}}, r"'image_id' must be an integer with \|value\| < 2\*\*63"),
    "category id true": ({"cat": {"id": True}}, r"categories\[0\] needs an integer 'id' \(\|id\| < 2\*\*63\)"),
    "category id 2**70": ({"cat": {"id": 2**70}}, r"categories\[0\] needs an integer 'id'"),
}


@pytest.mark.parametrize("case", sorted(BAD_FIELDS))
def test_out_of_range_or_mistyped_field_is_an_error(case: str) -> None:
    fields, match = BAD_FIELDS[case]
    with pytest.raises(AnnotationError, match=r"^x/coco\.json: not a COCO file: .*" + match):
        parse_coco(_coco(**fields), "x/coco.json")


def test_image_id_true_is_not_reported_as_a_duplicate_of_1() -> None:
    coco = _coco()
    coco["images"].append({"id": True, "file_name": "data/b.jpg", "width": 640, "height": 512})
    with pytest.raises(AnnotationError, match=r"images\[1\] needs an integer 'id' \(\|id\| < 2\*\*63\), got True$"):
        parse_coco(coco, "coco.json")


def test_id_and_size_limits_are_inclusive() -> None:
    big = 2**63 - 1
    index = parse_coco(_coco(image={"id": -big, "width": 65535}, ann={"id": big, "image_id": -big}), "coco.json")
    assert index.image_ids.tolist() == [-big] and index.ann_ids.tolist() == [big] and index.widths.tolist() == [65535]
    for fields in ({"image": {"id": -big - 1}}, {"ann": {"id": -big - 1}}, {"image": {"height": 65536}}):
        with pytest.raises(AnnotationError, match=r"2\*\*63|1\.\.65535"):
            parse_coco(_coco(**fields), "coco.json")


@pytest.mark.parametrize("text", ["[" * 100_000, '{"images": [{"id": ' + "9" * 5000 + "}]}"])
def test_json_too_deep_or_with_a_huge_int_literal_is_not_valid_json(tmp_path: Path, text: str) -> None:
    path = tmp_path / "coco.json"
    path.write_text(text)
    with pytest.raises(AnnotationError, match=re.escape(f"{path}: not valid JSON")):
        load_coco(path)


# --- fuzzing: parse_coco succeeds or raises AnnotationError, nothing else --------------------------

_EDGES = [2**31, 2**63 - 1, 2**63, -(2**63), 2**70, 10**400, 65535, 65536, 0, -1, 1e300, -1e300, "", "a\0", "\ud800"]
_SCALARS = st.one_of(st.sampled_from(_EDGES), st.integers(), st.floats(), st.booleans(), st.text(max_size=4), st.none())
# Mostly scalars, as most bad values in a real file are; the edge values twice as often.
_VALUES = st.one_of(st.sampled_from(_EDGES), _SCALARS, _SCALARS, st.recursive(_SCALARS, st.lists, max_leaves=6))
_BOXES = st.one_of(st.lists(_SCALARS, min_size=4, max_size=4), _VALUES)
_FIELDS = {
    "images": ("id", "file_name", "width", "height"),
    "categories": ("id", "name"),
    "annotations": ("id", "image_id", "category_id", "bbox", "iscrowd"),
}


@st.composite
def _fuzzed_coco(draw: st.DrawFn) -> dict[str, Any]:
    """A valid two-image file with one to three fields (or whole entries) replaced by fuzz: one
    bad value at a time reaches the checks deep in the parser, not only the first one."""
    coco = _coco()
    coco["images"].append({"id": 2, "file_name": "data/b.jpg", "width": 320, "height": 256})
    coco["categories"].append({"id": 1, "name": "person"})
    coco["annotations"].append({"id": 8, "image_id": 2, "category_id": 1, "bbox": [300, 250, 30, 30], "iscrowd": 0})
    for _ in range(draw(st.integers(1, 3))):
        section = draw(st.sampled_from(sorted(_FIELDS)))
        k = draw(st.integers(0, len(coco[section]) - 1))
        if draw(st.integers(0, 9)) == 0:
            coco[section][k] = draw(_VALUES)  # not even an object
        elif isinstance(coco[section][k], dict):
            key = draw(st.sampled_from(_FIELDS[section]))
            coco[section][k][key] = draw(_BOXES if key == "bbox" else _VALUES)
    return coco


@settings(max_examples=400, deadline=None)
@given(_fuzzed_coco())
def test_fuzzed_entries_parse_or_raise_annotation_error(coco: dict[str, Any]) -> None:
    try:
        index = parse_coco(coco, "coco.json")
    except AnnotationError as exc:
        assert str(exc).startswith("coco.json: ")
        return
    boxes = index.boxes
    assert np.isfinite(boxes).all() and (boxes[:, 2:] > 0).all() and (boxes[:, :2] >= 0).all()
    assert index.widths.min() >= 1 and index.heights.max() <= 65535 and len(set(index.image_ids.tolist())) == 2


# --- the command line ----------------------------------------------------------------------------


def test_check_reports_a_corrupt_box_in_one_line_and_fails(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    image = np.full((512, 640), 90, np.uint8)
    split = write_split(tmp_path / "images_thermal_val", [image], [[[10, 10, 30, 30], [0, 0, 1e300, 1e300]]], [[1, 3]])
    assert main(["check", str(tmp_path), "--no-progress"]) == 1
    lines = capsys.readouterr().out.splitlines()
    errors = [line for line in lines if line.startswith("error: ")]
    assert errors == [
        f"error: {split / 'coco.json'}: corrupt box: annotation id 2 on image id 100 (data/image-0000.png, 640x512): "
        "bbox [0, 0, 1e+300, 1e+300] reaches past the frame by more than the frame's own size; expected finite "
        "numbers, a box reaching into x -64..704, y -51.2..563.2 and staying within x -640..1280, y -512..1024"
    ]
    assert lines[-1].startswith("FAILED: 0 bad image(s), 1 bad annotation file(s)")


@pytest.mark.parametrize(
    ("option", "name"),
    [("--size", "size '99999999999999999999'"), ("--val", "argument --val"), ("--test", "argument --test")],
)
def test_synth_rejects_a_huge_count_in_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture, option: str, name: str
) -> None:
    args = ["synth", str(tmp_path / "root"), "--quiet", "--size", "5", option, "99999999999999999999"]
    assert main(args) == 2
    out, err = capsys.readouterr()
    assert out == "" and len(err.splitlines()) == 1
    assert err.startswith(f"flirdata synth: error: {name}: expected ")
    assert f"{synth.MAX_IMAGES}" in err
    assert not (tmp_path / "root").exists(), "nothing is written before every count is checked"


def test_synth_size_bound_is_inclusive() -> None:
    assert synth.parse_size(str(synth.MAX_IMAGES)) == synth.MAX_IMAGES
    with pytest.raises(DataError, match=rf"size '{synth.MAX_IMAGES + 1}': .* an integer from 1 to {synth.MAX_IMAGES}"):
        synth.parse_size(str(synth.MAX_IMAGES + 1))
    with pytest.raises(DataError, match=r"size '9{5000}'"):  # int() of that many digits raises ValueError
        synth.parse_size("9" * 5000)
