"""The COCO writer next to the reader, and the atomic writes every writer goes through."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from flirdata.coco import load_coco, write_coco
from flirdata.files import atomic_file, remove_temporaries, write_atomic

HEADER = {"info": {"description": "tiny"}, "licenses": [], "categories": [{"id": 3, "name": "car"}]}
IMAGES = [
    {"id": 1, "file_name": "data/a.jpg", "width": 64, "height": 48},
    {"id": 2, "file_name": "data/b.jpg", "width": 64, "height": 48},
]
ANNS = [{"id": 1, "image_id": 2, "category_id": 3, "bbox": [1, 2, 10, 8], "area": 80, "iscrowd": 0}]


@pytest.mark.parametrize(("images", "anns"), [(IMAGES, ANNS), ([], [])])
def test_compact_layout_is_json_dumps(tmp_path: Path, images: list, anns: list) -> None:
    write_coco(tmp_path / "coco.json", HEADER, iter(images), iter(anns))
    expected = json.dumps({**HEADER, "images": images, "annotations": anns})
    assert (tmp_path / "coco.json").read_text(encoding="utf-8") == expected


def test_lines_layout_puts_one_record_per_line_and_reads_back(tmp_path: Path) -> None:
    write_coco(tmp_path / "coco.json", HEADER, IMAGES, ANNS, layout="lines")
    text = (tmp_path / "coco.json").read_text(encoding="utf-8")
    assert json.loads(text) == {**HEADER, "images": IMAGES, "annotations": ANNS}
    assert text.endswith("]}\n") and f"\n{json.dumps(IMAGES[1])}\n]," in text
    index = load_coco(tmp_path / "coco.json")
    assert index.image_ids.tolist() == [1, 2] and index.annotations(1)[0].tolist() == [[1, 2, 10, 8]]


def test_unknown_layout_names_the_valid_ones(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"unknown COCO layout 'pretty'; expected one of \['compact', 'lines'\]"):
        write_coco(tmp_path / "coco.json", HEADER, [], [], layout="pretty")
    assert not list(tmp_path.iterdir())


def test_a_failed_write_leaves_the_old_file_and_no_temporary(tmp_path: Path) -> None:
    path = tmp_path / "coco.json"
    write_atomic(path, b"old")

    def broken() -> object:
        yield IMAGES[0]
        raise RuntimeError("source went away")

    with pytest.raises(RuntimeError, match="source went away"):
        write_coco(path, HEADER, broken(), ANNS)
    assert path.read_bytes() == b"old" and os.listdir(tmp_path) == ["coco.json"]


def test_remove_temporaries_deletes_what_a_killed_writer_left(tmp_path: Path) -> None:
    with pytest.raises(KeyboardInterrupt), atomic_file(tmp_path / "x.bin") as f:
        f.write(b"half")
        (tmp_path / ".y.bin.1-2.tmp").write_bytes(b"left by a kill -9")
        raise KeyboardInterrupt
    (tmp_path / "keep.tmp").write_bytes(b"not ours: not hidden")
    remove_temporaries(tmp_path)
    assert sorted(os.listdir(tmp_path)) == ["keep.tmp"]
