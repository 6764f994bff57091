"""``train_demo.py --compare``'s table: its arithmetic, in process (the runs are faked windows)."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest

from flirdata.tools.bench.compare import COMPARE_COLUMNS, _notes, compare_records, run_cores
from flirdata.tools.bench.report import format_table
from flirdata.tools.bench.timing import Window


def _run(backend: str, workers: int, torch_threads: int, data: float, loop: float, **cpu: float) -> SimpleNamespace:
    """A DemoResult's measured part: 100 images per window, ``data``/``loop`` images/s."""
    return SimpleNamespace(
        backend=backend,
        workers=workers,
        torch_threads=torch_threads,
        data_window=Window(100, 100 / data, cpu.get("data_cpu", 0.5), cpu.get("data_others", 0.0)),
        loop_window=Window(100, 100 / loop, cpu.get("loop_cpu", 1.0), cpu.get("loop_others", 0.0)),
        ranks=[],
    )


def _by(rows: list[dict]) -> dict[tuple[str, str], dict]:
    return {(r["stage"], r["backend"]): r for r in rows}


@pytest.mark.parametrize(
    ("stage", "workers", "threads", "cores", "expected"),
    [
        ("loader alone", 0, 1, 2, 1),  # in the training thread: one core
        ("loader alone", 2, 1, 2, 2),
        ("loader alone", 4, 1, 2, 2),  # more workers than cores share them
        ("whole loop", 0, 1, 2, 1),
        ("whole loop", 0, 4, 2, 2),
        ("whole loop", 2, 1, 2, 2),
        ("whole loop", 2, 6, 8, 8),
    ],
)
def test_run_cores(stage, workers, threads, cores, expected):
    assert run_cores(stage, workers, threads, cores) == expected


def test_efficiency_is_speedup_over_the_cores_used():
    base = _run("sequential", 0, 1, data=200.0, loop=50.0)
    result = _run("process", 2, 1, data=360.0, loop=90.0)
    rows = compare_records(result, base, cores=2, tight_images_per_s=200.0)
    by = _by(rows)
    assert [r["stage"] for r in rows] == ["loader alone"] * 2 + ["whole loop"] * 2
    for stage in ("loader alone", "whole loop"):
        assert by[stage, "sequential"]["speedup"] == 1.0 and by[stage, "sequential"]["efficiency"] == 1.0
    assert by["loader alone", "process"]["speedup"] == pytest.approx(1.8)
    assert by["loader alone", "process"]["efficiency"] == pytest.approx(0.9)  # 2 workers, 2 cores
    assert by["whole loop", "process"]["efficiency"] == pytest.approx(0.9)  # 2 workers + the model on 2 cores
    assert by["loader alone", "process"]["fraction_of_ideal"] == pytest.approx(360 / 400)
    assert math.isnan(by["whole loop", "process"]["fraction_of_ideal"])  # the ideal is the loader's
    assert by["loader alone", "process"]["cpu_ms_per_image"] == pytest.approx(5.0)
    assert _notes(rows) == []
    assert "*" not in format_table(rows, COMPARE_COLUMNS)


def test_a_baseline_on_more_cores_counts_them():
    """A baseline that trains at 2 threads on 2 cores already has both: the run's 2 cores are no extra."""
    base = _run("sequential", 0, 2, data=200.0, loop=50.0)
    result = _run("process", 2, 2, data=360.0, loop=60.0)
    by = _by(compare_records(result, base, cores=2))
    assert by["whole loop", "process"]["point_cores"] == 1.0
    assert by["whole loop", "process"]["efficiency"] == pytest.approx(1.2)


def test_efficiency_above_one_is_flagged_with_its_cause():
    # The case: a baseline much slower than one core's work (here: it shared the machine)
    base = _run("sequential", 0, 1, data=100.0, loop=14.0, loop_others=1.5)
    result = _run("process", 2, 1, data=190.0, loop=186.0, loop_others=0.1)
    rows = compare_records(result, base, cores=2)
    (note,) = _notes(rows)
    assert note.startswith("* whole loop, process: efficiency 6.64 > 1: the baseline shared the machine")
    assert "6.64*" in format_table(rows, COMPARE_COLUMNS)
