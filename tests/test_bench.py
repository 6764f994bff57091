"""``flirdata bench`` end to end on a tiny synthetic dataset, its arithmetic, and its errors."""

from __future__ import annotations

import json
import math
import pickle
import re
import time
from pathlib import Path

import cv2
import matplotlib.image
import psutil
import pytest
import torch

import flirdata.tools.bench
from flirdata import FlirDetection, build_transform
from flirdata.cli import main
from flirdata.tools.bench import BenchConfig, _open_sizes, measure_once, timing
from flirdata.tools.bench.memory import MemorySampler, tree_memory_mb
from flirdata.tools.bench.report import (
    BEST_COLUMNS,
    POINT_COLUMNS,
    add_ratios,
    best_per_size,
    efficiency_cause,
    efficiency_notes,
    format_table,
)

RECORD_FIELDS = {
    "backend",
    "workers",
    "runs_as",
    "size",
    "images",
    "images_timed",
    "images_per_s",
    "images_per_s_min",
    "images_per_s_max",
    "speedup",
    "efficiency",
    "point_cores",
    "cpu_ms_per_image",
    "others_cores",
    "fraction_of_ideal",
    "ideal_images_per_s",
    "tight_images_per_s",
    "first_batch_s",
    "startup_s",
    "shutdown_s",
    "epoch_s",
    "peak_pss_mb",
    "peak_rss_mb",
    "date",
    "cpu",
    "cores",
    "python",
    "torch",
    "albumentations",
    "opencv",
}


def _bench(root: Path, *extra: str) -> list[str]:
    return [
        "bench",
        "--data",
        str(root),
        "--sizes",
        "12,24",
        "--batch-size",
        "4",
        "--batches",
        "2",
        "--repeats",
        "2",
        *extra,
    ]


def test_bench_end_to_end_writes_json_markdown_and_plot(synth_root, tmp_path, capsys, monkeypatch):
    # The calibration in this process: its own process is test_bench_engine's (slow) test.
    monkeypatch.setattr(flirdata.tools.bench, "calibrate_warmed", timing._warmed_calibration)
    out = {k: tmp_path / f"bench.{k}" for k in ("json", "md", "png")}
    argv = _bench(
        synth_root,
        "--backends",
        "threads",
        "--workers",
        "1,2",
        "--json",
        str(out["json"]),
        "--markdown",
        str(out["md"]),
        "--plot",
        str(out["png"]),
    )
    assert main(argv) == 0
    stdout = capsys.readouterr().out
    for name, _ in POINT_COLUMNS + BEST_COLUMNS:
        assert name in stdout
    records = json.loads(out["json"].read_text())
    assert isinstance(records, list) and len(records) == 2 * 3  # per size: sequential, threads x1, x2
    for r in records:
        assert RECORD_FIELDS <= set(r), RECORD_FIELDS - set(r)
        assert r["images_per_s_min"] <= r["images_per_s"] <= r["images_per_s_max"]
        assert r["peak_pss_mb"] > 0 and r["startup_s"] >= 0
    seq = [r for r in records if r["backend"] == "sequential"]
    assert [r["size"] for r in seq] == ["12", "24"] and all(r["speedup"] == 1.0 for r in seq)
    assert {(r["workers"], r["runs_as"]) for r in records if r["backend"] == "threads"} == {
        (1, "sequential"),
        (2, "threads"),
    }
    assert "## Best cores per technique and size" in out["md"].read_text()
    image = matplotlib.image.imread(out["png"])
    assert out["png"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and image.shape[0] > 100


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_bench_every_backend(synth_root, capsys, shared_ray):
    assert main(_bench(synth_root, "--workers", "2", "--sizes", "16", "--repeats", "1")) == 0
    stdout = capsys.readouterr().out
    for backend in ("sequential", "dataloader", "threads", "loky", "process", "ray"):
        assert backend in stdout


def test_default_backends_are_the_installed_ones(monkeypatch):
    import importlib.util

    from flirdata.backends import BACKENDS, installed_backends

    assert installed_backends() == list(BACKENDS)  # the tests run with every extra installed
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "ray" else real(name, *a))
    assert installed_backends() == [name for name in BACKENDS if name != "ray"]  # no Ray: bench skips it


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--backends", "gpu"], "unknown backend 'gpu'"),
        (["--workers", "0"], "--workers: expected an integer >= 1, got '0'"),
        (["--workers", "two"], "--workers: expected an integer >= 1, got 'two'"),
        (["--sizes", "huge"], "size 'huge'"),
        (["--sizes", "500"], "needs 500 train images but the split has 24"),
        (["--sizes", "24", "--batch-size", "12", "--workers", "2"], "fewer than 3 batches of 12"),
        (["--plot", "/no/such/folder/b.png"], "does not exist"),
    ],
)
def test_bad_arguments_are_one_line(synth_root, capsys, args, message):
    assert main(["bench", "--data", str(synth_root), *args]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0], err


def test_missing_data_is_one_line(tmp_path, capsys):
    assert main(["bench"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == "flirdata bench: error: the following arguments are required: ROOT (see --help)"
    assert main(["bench", "--data", str(tmp_path / "nowhere"), "--sizes", "8", "--batch-size", "4"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "nowhere: dataset folder not found" in err[0]


def test_sizes_are_the_first_images_with_their_augmentation(synth_root):
    full = FlirDetection(synth_root, transform=build_transform("thermal"), seed=3)
    config = BenchConfig(str(synth_root), ("sequential",), (1,), ("5", "24"), batch_size=2, seed=3)
    sizes = {label: pickle.loads(pickle.dumps(ds)) for label, ds in _open_sizes(config).items()}
    assert [len(ds) for ds in sizes.values()] == [5, 24] and sizes["5"].index.nbytes < full.index.nbytes
    for i in range(5):
        (a, ta), (b, tb) = full[i], sizes["5"][i]
        assert torch.equal(a, b) and torch.equal(ta["boxes"], tb["boxes"]) and ta["image_id"] == tb["image_id"]


def _rec(backend: str, workers: int, rate: float, size: str = "s", runs_as: str | None = None) -> dict:
    return {
        "backend": backend,
        "workers": workers,
        "runs_as": runs_as or backend,
        "size": size,
        "images": 10,
        "images_per_s": rate,
        "images_per_s_min": rate,
        "images_per_s_max": rate,
        "tight_images_per_s": 100.0,
        "startup_s": 0.0,
        "epoch_s": 1.0,
        "peak_pss_mb": 1.0,
    }


def test_ratios_and_best_per_size():
    records = add_ratios(
        [
            _rec("sequential", 1, 90.0),
            _rec("threads", 1, 95.0, runs_as="sequential"),
            _rec("threads", 2, 150.0),
            _rec("threads", 4, 160.0),
        ],
        cores=2,
    )
    by = {(r["backend"], r["workers"]): r for r in records}
    assert by[("threads", 2)]["speedup"] == pytest.approx(150 / 90)
    assert by[("threads", 2)]["efficiency"] == pytest.approx(150 / 90 / 2)
    assert by[("threads", 4)]["fraction_of_ideal"] == pytest.approx(160 / 200)  # capped at 2 cores
    assert by[("sequential", 1)]["fraction_of_ideal"] == pytest.approx(0.9)
    best = {r["backend"]: r["workers"] for r in best_per_size(records)}
    assert best == {"sequential": 1, "threads": 4}
    assert "threads (as sequential)" in format_table(records, POINT_COLUMNS)
    assert math.isnan(add_ratios([_rec("threads", 2, 1.0)], cores=2)[0]["speedup"])  # no baseline


def test_efficiency_is_over_the_cores_a_point_can_use():
    records = add_ratios([_rec("sequential", 1, 100.0), _rec("process", 2, 180.0), _rec("process", 4, 170.0)], cores=2)
    by = {r["workers"]: r for r in records if r["backend"] == "process"}
    # 4 workers on 2 cores time-share the 2 cores: efficiency is over 2, not over 4
    assert by[4]["point_cores"] == 2 and by[4]["efficiency"] == pytest.approx(1.7 / 2)
    assert by[2]["efficiency"] == pytest.approx(0.9)
    assert efficiency_notes(records) == [] and "*" not in format_table(records, POINT_COLUMNS)


def _pair(base: dict, point: dict) -> tuple[dict, dict]:
    seq = {**_rec("sequential", 1, 100.0), "cpu_ms_per_image": 10.0, "others_cores": 0.0, **base}
    par = {**_rec("process", 2, 240.0), "cpu_ms_per_image": 10.0, "others_cores": 0.0, **point}
    base_out, point_out = add_ratios([seq, par], cores=2)
    return base_out, point_out


@pytest.mark.parametrize(
    ("base", "point", "cause"),
    [
        ({"others_cores": 1.0}, {}, "the baseline shared the machine: others took 1.00 cores then, 0.00 here"),
        ({"cpu_ms_per_image": 13.0}, {}, r"each image cost less CPU here \(10.00 ms\) than in the baseline \(13.00"),
        ({"images_per_s_max": 130.0}, {"images_per_s_min": 200.0}, r"within the repeats' spread .*: 0.77\)"),
        ({}, {}, r"not explained by the CPU counters \(other processes took up to 0.00 cores\): measure again"),
    ],
)
def test_efficiency_above_one_is_printed_with_its_cause(base, point, cause):
    seq, par = _pair(base, point)
    assert par["efficiency"] == pytest.approx(1.2)
    assert re.search(cause, efficiency_cause(par, seq)), efficiency_cause(par, seq)
    assert efficiency_cause(seq, seq) == ""
    records = [seq, par]
    (note,) = efficiency_notes(records)
    assert note.startswith("* s process x2: efficiency 1.20 > 1: ")
    assert "1.20*" in format_table(records, POINT_COLUMNS) and "1.20*" in format_table(records, BEST_COLUMNS)


def test_the_baseline_runs_one_thread_per_library_as_workers_do(synth_root):
    """The sequential point's loader runs in this thread: OpenCV at 1 thread there, as in a worker."""
    seen = []

    class Probe(FlirDetection):
        def sample(self, index, epoch=None):
            seen.append((cv2.getNumThreads(), torch.get_num_threads()))
            return super().sample(index, epoch)

    config = BenchConfig(data=str(synth_root), backends=("sequential",), workers=(1,), sizes=("8",), batch_size=4)
    dataset = Probe(synth_root, "train", transform=build_transform("thermal"), seed=0)
    cv2.setNumThreads(2)
    with MemorySampler() as memory:
        out = measure_once(dataset, "sequential", 1, config, memory)
    assert out["runs_as"] == "sequential" and out["cpu_ms_per_image"] > 0
    assert seen and set(seen) == {(1, 1)}
    assert cv2.getNumThreads() == 2  # restored afterwards


def test_memory_sampler_sees_this_process():
    with MemorySampler(interval=0.01) as memory:
        block = bytearray(64 << 20)
        block[::4096] = b"x" * len(block[::4096])  # touch every page
        with memory.quiet():
            time.sleep(0.05)
        memory.checkpoint()
        mine = tree_memory_mb([psutil.Process()], pss=True)
    assert mine > 64 and memory.peak_pss_mb >= mine - 1 and memory.peak_rss_mb > 64
