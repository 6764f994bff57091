"""Fixtures of the client tier: offline, in a folder where the README's ``data`` exists.

Collected only with ``pytest --clients`` (see ``tests/conftest.py``), in the environment that
``.ci/clients`` builds with the real torchvision, pycocotools and Ultralytics.
"""

from __future__ import annotations

import importlib.util
import os
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

OFFLINE = Path(__file__).resolve().parent / "offline"


@pytest.fixture(autouse=True)
def offline(monkeypatch: pytest.MonkeyPatch, tmp_path_factory: pytest.TempPathFactory) -> None:
    """No network here or in subprocesses; empty weight caches and client settings."""
    spec = importlib.util.spec_from_file_location("client_tier_offline", OFFLINE / "sitecustomize.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    module.install(monkeypatch.setattr)
    home = tmp_path_factory.mktemp("client-home")
    monkeypatch.setenv("TORCH_HOME", str(home / "torch"))  # no cached weights to fall back on
    monkeypatch.setenv("YOLO_CONFIG_DIR", str(home / "ultralytics"))  # fresh settings, no fonts
    monkeypatch.setenv("YOLO_OFFLINE", "1")
    monkeypatch.setenv("MPLBACKEND", "Agg")
    python_path = [str(OFFLINE), *filter(None, [os.environ.get("PYTHONPATH")])]
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(python_path))
    bin_dir = str(Path(sys.executable).parent)  # the tier's venv: its flirdata and yolo commands
    monkeypatch.setenv("PATH", os.pathsep.join([bin_dir, os.environ["PATH"]]))


@pytest.fixture
def readme_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Callable[..., Path]:
    """``readme_dir(train=N, val=N, test=N)``: a working folder holding ``data``, a synthetic dataset."""

    def make(train: int, val: int = 0, test: int = 0) -> Path:
        from flirdata.synth import synthesize

        synthesize(tmp_path / "data", train=train, val=val, test=test, seed=0, progress=False)
        monkeypatch.chdir(tmp_path)
        return tmp_path

    return make
