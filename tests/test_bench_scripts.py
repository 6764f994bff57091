"""The scripts in ``benchmarks/``: they parse their options, pickle what they ship, and run tiny."""

from __future__ import annotations

import importlib.util
import json
import os
import pickle
import subprocess
import sys
from functools import partial
from pathlib import Path
from types import ModuleType

import pytest

from flirdata import FlirDetection, build_transform

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
SCRIPTS = [
    "bench_backends.py",
    "bench_decode.py",
    "bench_presets.py",
    "bench_cache.py",
    "bench_coco.py",
    "bench_floor.py",
]


def _load(name: str, monkeypatch: pytest.MonkeyPatch) -> ModuleType:
    """Import a script as a module, registered so that pickle can find its functions by name."""
    spec = importlib.util.spec_from_file_location(Path(name).stem, BENCHMARKS / name)
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, spec.name, module)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("name", SCRIPTS)
def test_script_help(name, monkeypatch, capsys):
    module = _load(name, monkeypatch)
    with pytest.raises(SystemExit) as done:
        module.main(["--help"])
    assert done.value.code == 0 and "--results RESULTS" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("name", "args", "message"),
    [
        ("bench_backends.py", ["--images", "64"], "--images must be more than --workers x 32 = 64"),
        ("bench_backends.py", ["--repeats", "0"], "--repeats and --workers must be at least 1"),
        ("bench_backends.py", ["--large", "2000"], "--large must be more than --images"),
        ("bench_cache.py", ["ROOT", "--sizes", "lots"], "--sizes: "),
        ("bench_cache.py", ["ROOT", "--sizes", "1000000"], "expected image counts up to the"),
        ("bench_cache.py", ["ROOT", "--sizes", "20"], "--sizes: 20 images leave no batch to time"),
        ("bench_coco.py", ["--repeats", "0"], "--images, --annotations and --repeats must be at least 1"),
        ("bench_coco.py", ["--baseline-tree", "ROOT"], "holds no flirdata/coco.py"),
    ],
)
def test_script_bad_arguments(name, args, message, monkeypatch, capsys, synth_root):
    module = _load(name, monkeypatch)
    with pytest.raises(SystemExit) as done:
        module.main([str(synth_root) if a == "ROOT" else a for a in args] + ["--no-write"])
    assert done.value.code == 2 and message in capsys.readouterr().err


def test_what_bench_backends_ships_to_workers_pickles(synth_root, monkeypatch):
    module = _load("bench_backends.py", monkeypatch)
    ds = FlirDetection(synth_root, transform=build_transform("thermal"), seed=0)
    task = pickle.loads(pickle.dumps(partial(module.course_sample, ds)))
    image, boxes, labels, image_id = task(3)
    assert image.shape == tuple(ds[3][0].shape) and len(boxes) == len(labels) and image_id == ds[3][1]["image_id"]
    peer = pickle.loads(pickle.dumps(module.PeerDataset(ds.split_dir)))
    assert len(peer) == len(ds) and peer[0][0].shape == ds[0][0].shape


def _run(name: str, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    argv = [sys.executable, str(BENCHMARKS / name), *args]
    return subprocess.run(argv, capture_output=True, text=True, env=None if env is None else {**os.environ, **env})


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_bench_decode_tiny_run_writes_its_block(tmp_path):
    results = tmp_path / "RESULTS.md"
    results.write_text("# Benchmark results\n\n## Decode\n\nprose kept\n")
    done = _run(
        "bench_decode.py", "--grey", "2", "--rgb", "1", "--repeats", "1", "--damaged", "1", "--results", str(results)
    )
    assert done.returncode == 0, done.stderr
    text = results.read_text()
    assert (
        text.startswith("# Benchmark results\n\n## Decode\n\nprose kept\n") and "<!-- bench_decode.py: end -->" in text
    )
    assert "| grey 640x512 (2) | cv2.imdecode |" in text and "| decoder | half the scan zeroed |" in text


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_bench_backends_tiny_run_writes_its_block(tmp_path, shared_ray):
    import ray

    results = tmp_path / "RESULTS.md"
    done = _run(
        "bench_backends.py",
        "--cache",
        str(tmp_path / "cache"),
        "--images",
        "72",  # 64 + 8: each run skips 2 workers' batches of 32, then times 8 images
        "--large",
        "73",  # the least above --images: the memory run compares sizes, not speeds
        "--repeats",
        "1",
        "--retries",
        "0",
        "--workers",
        "2",
        "--results",
        str(results),
        env={"RAY_ADDRESS": ray.get_runtime_context().gcs_address},  # the session's Ray: no instance to start
    )
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert "course report's ProcessPoolExecutor.map" in result["rates"] and len(result["peak_pss_mb"]) == 4
    assert set(result["transport_us"]) and all(v > 0 for v in result["peak_pss_mb"].values())
    text = results.read_text()
    for heading in ("| run | workers |", "| path | µs / image |", "| run | peak PSS (MB) |", "| target | measured |"):
        assert heading in text


TINY_RUNS = {
    "bench_floor.py": (("--images", "8"), "## Floor", ["| none | 1.00 x ", "| ram | - | 1.00 x "]),
    "bench_presets.py": (
        ("--images", "16"),
        "## Presets",
        [
            "| thermal_reference | none |",
            "| thermal | ram |",
            "| thermal >= 2x thermal_reference, cache ram |",
            "| the preset's own transforms, ms |",
            "| FusedAffine | transform |",
        ],
    ),
    "bench_cache.py": (
        ("--sizes", "13,16"),
        "## Cache",
        ["| 13 | single thread | none |", "| 16 | single thread | ram |", "| 16 | process x2 | ram |"],
    ),
}


@pytest.mark.slow
@pytest.mark.timeout(300)
@pytest.mark.parametrize("name", sorted(TINY_RUNS))
def test_tiny_run_on_a_dataset_writes_its_block(name, tmp_path, synth_root):
    args, heading, rows = TINY_RUNS[name]
    results = tmp_path / "RESULTS.md"
    results.write_text(f"# Benchmark results\n\n{heading}\n\nprose kept\n")
    done = _run(name, str(synth_root), *args, "--batch-size", "4", "--repeats", "1", "--results", str(results))
    assert done.returncode == 0, done.stderr
    text = results.read_text()
    assert text.startswith(f"# Benchmark results\n\n{heading}\n\nprose kept\n")
    assert [row for row in rows if row not in text] == []


@pytest.mark.slow
def test_bench_coco_runs_tiny_and_writes_its_block(monkeypatch, tmp_path, capsys):
    module = _load("bench_coco.py", monkeypatch)
    results = tmp_path / "RESULTS.md"
    assert module.main(["--images", "5", "--annotations", "40", "--repeats", "1", "--results", str(results)]) == 0
    text = results.read_text()
    assert "## coco.json" in text and "| load_coco |" in text and "| json.loads alone |" in text
