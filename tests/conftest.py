"""Shared fixtures, and the hooks that keep the quick tier in this process.

Tiny datasets are generated on the fly (nothing binary lives in the repo); helpers shared by
the test modules live in ``support.py``, the two tiers' machinery in ``tiers.py``.

The quick tier (``-m "not slow"``) starts no process: a test not marked ``slow`` that starts
a subprocess, a process pool or Ray fails, whichever tier runs it. Tests on Ray share one local
instance per session (``shared_ray``), as a user's own ``ray.init`` that flirdata reuses.

A slow test's hang guard (pytest-timeout) is its budget on a quiet machine plus
``HANG_SLACK_STARTS`` process start-ups, measured on this machine as the session runs
(``tiers.process_startup_s``): a busy machine stretches the guard as it stretches the tests.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import AbstractContextManager, nullcontext
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from support import RGB_SIZES, count_boxes_on_pixels, write_split
from tiers import measured_startup_s, no_process_started, process_startup_s

__all__ = ["RGB_SIZES", "count_boxes_on_pixels", "write_split"]  # once imported from here: now in support

SHARED_RAY_CPUS = 4  # the largest worker count a Ray test asks for (3), and one to spare
HANG_SLACK_STARTS = 20  # a slow test's hang guard: its budget plus this many measured process start-ups


# -- the quick tier starts no process ------------------------------------------------------------


def _guarded(item: pytest.Item) -> AbstractContextManager[None]:
    return nullcontext() if item.get_closest_marker("slow") else no_process_started(item.nodeid)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_setup(item: pytest.Item) -> Any:
    with _guarded(item):
        return (yield)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item: pytest.Item) -> Any:
    with _guarded(item):
        return (yield)


# -- slow tests' hang guards stretch with the machine's load ------------------------------------------


def _budget(item: pytest.Item) -> float:
    """The item's pytest-timeout budget: its ``timeout`` mark, else ``--timeout`` or the ini's (0: none)."""
    marker = item.get_closest_marker("timeout")
    if marker is not None:
        return float(marker.args[0] if marker.args else marker.kwargs.get("timeout") or 0)
    return float(item.config.getoption("timeout", None) or item.config.getini("timeout") or 0)


@pytest.hookimpl(wrapper=True, tryfirst=True)  # before pytest-timeout reads the mark
def pytest_runtest_protocol(item: pytest.Item, nextitem: pytest.Item | None) -> Any:
    budget = _budget(item)
    if item.get_closest_marker("slow") and budget > 0:
        item.add_marker(pytest.mark.timeout(budget + HANG_SLACK_STARTS * process_startup_s()), append=False)
    return (yield)


def pytest_terminal_summary(terminalreporter: Any) -> None:
    startup = measured_startup_s()
    if startup is not None:
        terminalreporter.write_line(
            f"process start-up measured: {startup:.1f} s; slow tests' hang guards: their budget "
            f"+ {HANG_SLACK_STARTS * startup:.0f} s"
        )


# -- Ray, once per session ----------------------------------------------------------------------


@pytest.fixture(scope="session")
def _ray_of_the_session() -> Iterator[Any]:
    ray = pytest.importorskip("ray")
    yield ray
    if ray.is_initialized():
        ray.shutdown()


@pytest.fixture
def shared_ray(_ray_of_the_session: Any) -> None:
    """A local Ray instance for the whole session, started here as a user's ``ray.init``.

    flirdata reuses it and leaves it running. A test that ends it (the tests of flirdata's own
    start and stop) leaves the next user to start it again.
    """
    ray = _ray_of_the_session
    if not ray.is_initialized():
        ray.init(address="local", num_cpus=SHARED_RAY_CPUS, include_dashboard=False, logging_level=logging.ERROR)


# -- datasets -------------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def synth_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small synthetic FLIR dataset shared by the whole session (read-only by convention)."""
    from flirdata.synth import synthesize

    root = tmp_path_factory.mktemp("synth")
    synthesize(root, train=24, val=6, seed=0, progress=False)
    return root


@pytest.fixture(scope="session")
def rgb_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny RGB dataset: ``images_rgb_train/`` with 9 colour PNGs of 3 sizes, one box each.

    Each frame is a coloured background with a differently coloured object; frame ``k`` is
    ``RGB_SIZES[k % 3]``, so every batch of 3 or more mixes sizes as FLIR's RGB frames do.
    """
    root = tmp_path_factory.mktemp("rgb")
    rng = np.random.default_rng(0)
    images, boxes = [], []
    for k in range(9):
        h, w = RGB_SIZES[k % 3]
        rgb = np.empty((h, w, 3), np.uint8)
        rgb[:] = rng.integers(20, 120, 3)
        rgb += rng.integers(0, 8, (h, w, 3), dtype=np.uint8)  # channels differ pixel by pixel
        x, y, bw, bh = int(rng.integers(0, w // 2)), int(rng.integers(0, h // 2)), w // 3, h // 3
        rgb[y : y + bh, x : x + bw] = rng.integers(150, 256, 3)
        images.append(np.ascontiguousarray(rgb[:, :, ::-1]))  # cv2 writes B, G, R
        boxes.append([[x, y, bw, bh]])
    write_split(root / "images_rgb_train", images, boxes, [[1 + 2 * (k % 2)] for k in range(9)])
    return root


@pytest.fixture(autouse=True)
def _no_inherited_shard(monkeypatch: pytest.MonkeyPatch) -> None:
    """Tests run as one process even under a launcher that sets torchrun's variables."""
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE"):
        monkeypatch.delenv(name, raising=False)


CLIENTS = Path(__file__).resolve().parent / "clients"


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--clients",
        action="store_true",
        help="also collect tests/clients, the tier run with the real torchvision, pycocotools and Ultralytics "
        "(bash .ci/clients builds its environment and runs it)",
    )


def pytest_ignore_collect(collection_path: Path, config: pytest.Config) -> bool | None:
    """tests/clients needs the client tier's environment: the main suite never collects it."""
    if collection_path == CLIENTS and not config.getoption("--clients"):
        return True
    return None
