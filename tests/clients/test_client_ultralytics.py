"""The README's Ultralytics commands on a small YOLO export: train one epoch, then validate."""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from pathlib import Path

import pytest
from readme_code import adapt, commands, run_shell

ULTRALYTICS = "Ultralytics (YOLO)"
EXPORT_SMALL = {"ROOT": "data", "--copies 4": "--copies 1"}
# A model built from its yaml (no weights to download), one epoch at 64 px.
YOLO_SMALL = {"model=yolov8n.pt": "model=yolov8n.yaml", "imgsz=640": "imgsz=64", "epochs=50": "epochs=1"}


def _all_row(log: str) -> list[str]:
    """The ``all  IMAGES  INSTANCES  P  R  mAP50  mAP50-95`` row of a validation table."""
    rows = [line.split() for line in log.splitlines() if re.match(r"\s+all\s+\d+\s+\d+", line)]
    assert rows, log[-3000:]
    return rows[-1]


@pytest.mark.slow
def test_yolo_trains_and_validates_on_an_export(readme_dir: Callable[..., Path]) -> None:
    readme_dir(train=16, val=8, test=4)
    export, train, val = commands(ULTRALYTICS)[:3]
    assert export.startswith("flirdata export") and train.startswith("yolo detect train")
    assert val.startswith("yolo detect val")
    run_shell(adapt(export, EXPORT_SMALL))
    val_boxes = sum(len(f.read_text().splitlines()) for f in Path("OUT/labels/val").glob("*.txt"))
    logs = [run_shell(adapt(train, YOLO_SMALL))]
    # The README's weights path is Ultralytics' default runs folder; the run prints the one it used
    # (another when Ultralytics is installed inside a git checkout: the checkout's root).
    best = re.search(r"Validating (\S+/weights/best\.pt)", logs[0])[1]
    logs.append(run_shell(adapt(val, {"imgsz=640": "imgsz=64", "runs/detect/train/weights/best.pt": best})))
    assert "16 images, 0 backgrounds, 0 corrupt" in logs[0]
    for log in logs:
        assert "8 images, 0 backgrounds, 0 corrupt" in log
        assert "Downloading" not in log and "offline: connection" not in log
        assert _all_row(log)[1:3] == ["8", str(val_boxes)]
    # Ultralytics looks for Arial.ttf online when it checks a dataset: offline, nothing is fetched.
    settings = Path(os.environ["YOLO_CONFIG_DIR"])
    assert [p.name for p in settings.rglob("*") if p.is_file()] == ["settings.json"]
