"""Export formats are a registry: name -> ``Layout``, one module per format, the CLI offering its keys.

The third format here lives only in this test (monkeypatched into ``LAYOUTS``): that it exports,
resumes and is recognised when finished, with nothing but its ``Layout`` and a registry entry,
is what shows a new format needs one module and one line.
"""

from __future__ import annotations

import argparse
import functools
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import flirdata.tools.export
from flirdata.cli import build_parser, main
from flirdata.dataset import FlirDetection
from flirdata.files import write_atomic
from flirdata.synth import synthesize
from flirdata.tools.export import FORMATS, WORK_DIR, ExportError, ExportPlan, export_augmented, output_stem
from flirdata.tools.export.formats import LAYOUTS, layout_for
from flirdata.tools.export.layout import Layout, Shards
from flirdata.transforms import build_transform

SEED = 5
COPIES = 2
BATCH = 3


@dataclass(frozen=True)
class CsvLayout(Layout):
    """A throwaway format: ``pictures/NAME.jpg``, ``boxes/NAME.csv`` (label,x1,y1,x2,y2) and ``index.json``."""

    def label_text(self, xyxy: np.ndarray, labels: np.ndarray, width: int, height: int) -> str:
        rows = zip(labels.tolist(), xyxy.tolist(), strict=True)
        return "".join(f"{label},{x1!r},{y1!r},{x2!r},{y2!r}\n" for label, (x1, y1, x2, y2) in rows)

    def read_final(self, out: Path, split: str | None) -> Any:
        try:
            return json.loads((out / self.final_file).read_text(encoding="utf-8"))["export"]
        except (OSError, ValueError, KeyError):
            return None

    def write_final(self, out: Path, split: str | None, meta: dict[str, Any], index: Any, shards: Shards) -> None:
        files = [image["file_name"] for shard in shards() for image in shard["images"]]
        write_atomic(out / self.final_file, json.dumps({"export": meta, "images": files}).encode())


CSV = CsvLayout(name="csv", images="pictures", labels="boxes", label_suffix=".csv", final_file="index.json")


@pytest.fixture(scope="module")
def source(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("formats-source")
    synthesize(root, train=5, val=0, seed=3, progress=False)
    return root


def _dataset(root: Path) -> FlirDetection:
    return FlirDetection(root, "train", transform=build_transform("thermal", size=(96, 128)), seed=SEED)


def _digest(folder: Path) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def _raise(exc_type: type[BaseException], *args: object) -> None:
    raise exc_type()


def _export(source: Path, out: Path, fmt: str, **kwargs: Any):
    return export_augmented(
        _dataset(source), out, fmt=fmt, copies=COPIES, batch_size=BATCH, backend="sequential", progress=False, **kwargs
    )


def _format_choices() -> tuple[str, ...]:
    """The choices ``flirdata export --format`` offers."""
    parser = build_parser(["export"])
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return tuple(next(a for a in sub.choices["export"]._actions if a.dest == "fmt").choices)


def test_the_command_line_offers_exactly_the_registry() -> None:
    assert FORMATS == tuple(LAYOUTS) == _format_choices()


def test_each_format_is_one_module_named_as_its_key() -> None:
    for name, layout in LAYOUTS.items():
        assert layout.name == name
        assert type(layout).__module__ == f"flirdata.tools.export.formats.{name}"


def test_an_unknown_format_is_refused_naming_the_known_ones(
    source: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    known = r"format must be one of \('coco', 'yolo'\), got 'voc'"
    with pytest.raises(ExportError, match=known):
        layout_for("voc")
    with pytest.raises(ExportError, match=known):
        _export(source, tmp_path / "out", "voc")
    with pytest.raises(ExportError, match=known):
        ExportPlan(str(tmp_path), "voc", 95, 4, (0, 1)).files("a_c0")
    assert not (tmp_path / "out").exists()
    assert main(["export", str(source), "--out", str(tmp_path / "out"), "--format", "voc"]) == 2
    err = capsys.readouterr().err
    assert "--format: invalid choice: 'voc'" in err and all(name in err for name in LAYOUTS)


def test_a_third_format_is_one_layout_and_one_registry_entry(
    source: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(LAYOUTS, "csv", CSV)
    out, coco = tmp_path / "csv", tmp_path / "coco"
    summary = _export(source, out, "csv")
    _export(source, coco, "coco")
    assert summary.images == summary.written == 5 * COPIES and summary.fmt == "csv"
    ds, n = _dataset(source), 5
    stems = [output_stem(ds.index.file_name(j % n), j // n) for j in range(n * COPIES)]
    files = {f"pictures/{s}.jpg" for s in stems} | {f"boxes/{s}.csv" for s in stems} | {"index.json"}
    assert set(_digest(out)) == files  # the work folder is gone
    # The same images as COCO's, and label files holding COCO's boxes (their polygons' corners).
    assert all(_digest(out)[f"pictures/{s}.jpg"] == _digest(coco)[f"data/{s}.jpg"] for s in stems)
    coco_json = json.loads((coco / "coco.json").read_text())
    for image in coco_json["images"]:
        stem = Path(image["file_name"]).stem
        lines = (out / "boxes" / f"{stem}.csv").read_text().splitlines()
        corners = [a["segmentation"][0][:2] + a["segmentation"][0][4:6] for a in coco_json["annotations"]]
        mine = [[float(v) for v in line.split(",")[1:]] for line in lines]
        assert mine == [
            c for c, a in zip(corners, coco_json["annotations"], strict=True) if a["image_id"] == image["id"]
        ]
    index = json.loads((out / "index.json").read_text())
    assert index["images"] == [f"pictures/{s}.jpg" for s in stems]
    assert index["export"]["totals"]["images"] == summary.images
    # Finished: recognised from its final file by a resume, refused without one.
    again = _export(source, out, "csv", resume=True)
    assert (again.written, again.images, again.boxes_kept) == (0, summary.images, summary.boxes_kept)
    with pytest.raises(ExportError, match=r"output folder is not empty; pass --resume"):
        _export(source, out, "csv")


def test_a_third_format_resumes_checking_its_label_files(
    source: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(LAYOUTS, "csv", CSV)
    clean, out = tmp_path / "clean", tmp_path / "out"
    _export(source, clean, "csv")
    with monkeypatch.context() as patch:  # interrupted after every batch was written, before the merge
        patch.setattr(flirdata.tools.export, "finish_output", functools.partial(_raise, KeyboardInterrupt))
        with pytest.raises(KeyboardInterrupt):
            _export(source, out, "csv")
    assert (out / WORK_DIR).is_dir() and not (out / "index.json").exists()
    label = out / "boxes" / f"{output_stem(_dataset(source).index.file_name(4), 0)}.csv"  # batch 1's
    label.write_text(label.read_text() + "1,0.0,0.0,1.0,1.0\n")  # a finished label file changed
    summary = _export(source, out, "csv", resume=True)
    assert (summary.written, summary.damaged) == (BATCH, 1)
    assert _digest(out) == _digest(clean)
