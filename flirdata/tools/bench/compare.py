"""``train_demo.py --compare``: the course report's table for the two runs the demo made.

Rows are technique x workers for two stages, the loader alone (the probe before training) and
the whole training loop, each timed by the bench engine (``flirdata.tools.bench.timing``: wall
time and the CPU of the whole process tree) as ``flirdata bench`` times its points. Both runs
train the same model at the same torch threads; the baseline's loader runs in the training
thread with OpenCV at one thread, as every worker runs it.

* speedup = images/s over the sequential baseline's, stage by stage;
* efficiency = speedup / (the run's cores / the baseline's cores), a run's cores being what it
  can keep busy here: the loader alone ``min(workers, cores)`` for a pool and 1 in-thread; the
  whole loop ``min(workers + torch threads, cores)`` for a pool and ``min(torch threads, cores)``
  in-thread. With the baseline on one core (on 2 cores the demo trains at 1 torch thread) this is
  the course report's speedup / cores. A figure above 1 is printed with its cause
  (``flirdata.tools.bench.report.efficiency_cause``);
* of ideal (the loader alone): images/s over ``min(workers, cores)`` x the single-thread tight
  loop in a warmed worker process (``calibrate_warmed``), ``flirdata bench``'s ideal.
"""

from __future__ import annotations

from typing import Any

from . import report

__all__ = ["COMPARE_COLUMNS", "compare_records", "compare_report", "run_cores"]

STAGES = ("loader alone", "whole loop")
NAN = float("nan")


def run_cores(stage: str, workers: int, torch_threads: int, cores: int) -> int:
    """The cores a run can keep busy in ``stage``; ``workers == 0``: the loader runs in the training thread."""
    if stage == STAGES[0]:
        return min(workers, cores) if workers else 1
    return min(workers + torch_threads, cores) if workers else min(torch_threads, cores)


def _row(stage: str, result: Any, cores: int) -> report.Record:
    window = result.data_window if stage == STAGES[0] else result.loop_window
    return {
        "stage": stage,
        "backend": result.backend,
        "workers": result.workers,
        "torch_threads": result.torch_threads,
        "cores": run_cores(stage, result.workers, result.torch_threads, cores),
        "images_per_s": window.images_per_s if window and window.images else NAN,
        "cpu_ms_per_image": window.cpu_ms_per_image if window and window.images else NAN,
        "others_cores": window.others_cores if window else NAN,
    }


def compare_records(result: Any, base: Any, cores: int, tight_images_per_s: float = NAN) -> list[report.Record]:
    """Per stage, the baseline's row then the run's, with speedup, efficiency and fraction of ideal.

    ``result`` and ``base`` are ``train_demo.DemoResult``s (their ``data_window`` and
    ``loop_window``); ``tight_images_per_s`` is the warmed 1-worker tight loop's rate (NaN: not
    measured). ``point_cores`` is the run's cores over the baseline's, ``efficiency`` the speedup
    over it, as ``flirdata bench``'s records have them.
    """
    rows = []
    for stage in STAGES:
        first = _row(stage, base, cores)
        for row in (first, _row(stage, result, cores)):
            speedup = row["images_per_s"] / first["images_per_s"]
            ideal = min(max(row["workers"], 1), cores) * tight_images_per_s if stage == STAGES[0] else NAN
            point_cores = row["cores"] / first["cores"]
            rows.append(
                {
                    **row,
                    "point_cores": point_cores,
                    "speedup": speedup,
                    "efficiency": speedup / point_cores,
                    "fraction_of_ideal": row["images_per_s"] / ideal,
                }
            )
    return rows


def _number(value: float, digits: int = 2) -> str:
    return "" if value != value else f"{value:.{digits}f}"  # NaN: not measured


COMPARE_COLUMNS: list[report.Column] = [
    ("stage", lambda r: r["stage"]),
    ("technique", lambda r: r["backend"]),
    ("workers", lambda r: str(r["workers"]) if r["workers"] else "in-thread"),
    ("torch threads", lambda r: str(r["torch_threads"])),
    ("cores", lambda r: str(r["cores"])),
    ("images/s", lambda r: _number(r["images_per_s"], 1)),
    ("speedup", lambda r: _number(r["speedup"])),
    ("efficiency", lambda r: _number(r["efficiency"]) + ("*" if r["efficiency"] > 1.0 else "")),
    ("of ideal", lambda r: _number(r["fraction_of_ideal"])),
    ("CPU ms/image", lambda r: _number(r["cpu_ms_per_image"])),
    ("others (cores)", lambda r: _number(r["others_cores"])),
]

HOW = (
    "speedup = images/s over the sequential baseline's (same steps, same torch threads); "
    "efficiency = speedup / (cores / the baseline's cores); cores = what the run can keep busy: "
    "min(workers, {cores}) for the loader alone, min(workers + torch threads, {cores}) for the whole loop "
    "(in-thread: 1 and min(torch threads, {cores})); of ideal = images/s over min(workers, {cores}) x "
    "the 1-thread tight loop in a warmed worker process{tight}; CPU ms/image = CPU of the process tree "
    "(workers included) per image; others = cores other processes of the machine took meanwhile; "
    "* = efficiency above 1, cause below"
)


def _notes(rows: list[report.Record]) -> list[str]:
    notes = []
    for stage in STAGES:
        first, *others = [r for r in rows if r["stage"] == stage]
        for r in others:
            cause = report.efficiency_cause(r, first)
            if cause:
                notes.append(f"* {stage}, {r['backend']}: efficiency {r['efficiency']:.2f} > 1: {cause}")
    return notes


def compare_report(result: Any, base: Any, dataset: Any, batch_size: int, batches: int, seed: int, cores: int) -> str:
    """The table, how it is computed and any efficiency above 1 with its cause.

    Measures the warmed tight loop on ``batches`` batches of ``dataset`` first (as ``flirdata
    bench`` does), except under ``--distributed``, where every rank would measure it on the same
    cores at once.
    """
    tight = NAN
    if len(result.ranks) <= 1:
        from flirdata.tools.bench.timing import calibrate_warmed

        tight = calibrate_warmed(dataset, batch_size, batches, seed)["tight_images_per_s"]
    rows = compare_records(result, base, cores, tight)
    shown = f" ({tight:.1f} images/s)" if tight == tight else " (not measured under --distributed)"
    lines = [
        "",
        f"compare on {cores} cores (the course report's table):",
        report.format_table(rows, COMPARE_COLUMNS),
        f"({HOW.format(cores=cores, tight=shown)})",
        *_notes(rows),
    ]
    return "\n".join(lines)
