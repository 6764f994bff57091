"""The machine a measurement depends on: what it is, and how busy the rest of it was.

Every benchmark result carries ``machine_info()`` (date, CPU, cores, memory, OS, library
versions) and the load average before and after it ran. On a shared machine the load average
is too coarse for one timed window, so ``busy_seconds`` (the whole machine, from /proc/stat)
less ``tree_cpu_seconds`` (this process and its children) tells how many cores other
processes took while a window ran.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import os
import platform
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import psutil

from flirdata._cores import usable_cores

__all__ = [
    "LIBRARIES",
    "usable_cores",
    "library_versions",
    "machine_info",
    "machine_line",
    "load_average",
    "busy_seconds",
    "process_tree",
    "tree_cpu_seconds",
    "tree_cpu_times",
    "tree_cpu_used",
]

# Modules whose versions a loader result depends on: (import name, name in the record).
LIBRARIES: tuple[tuple[str, str], ...] = (
    ("torch", "torch"),
    ("albumentations", "albumentations"),
    ("cv2", "opencv"),
    ("numpy", "numpy"),
    ("joblib", "joblib"),
)
_LABELS = {"python": "Python", "opencv": "OpenCV"}  # how the machine line spells a record key


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _version(module: str) -> str:
    try:
        return str(__import__(module).__version__)
    except ImportError:
        return "not installed"


def library_versions(libraries: Iterable[tuple[str, str]] = LIBRARIES) -> dict[str, str]:
    """``{record name: version}`` of Python and ``libraries`` ("not installed" when missing)."""
    return {"python": platform.python_version(), **{key: _version(module) for module, key in libraries}}


def machine_info(libraries: Iterable[tuple[str, str]] = LIBRARIES) -> dict[str, Any]:
    """What a result depends on: date, CPU, cores, memory, OS and library versions."""
    return {
        "date": _dt.datetime.now().astimezone().isoformat(timespec="seconds"),
        "cpu": _cpu_model(),
        "cores": usable_cores(),
        "memory_gb": round(psutil.virtual_memory().total / 2**30, 1),
        "os": f"{platform.system()} {platform.release()}",
        **library_versions(libraries),
    }


def machine_line(meta: dict[str, Any], libraries: Iterable[tuple[str, str]] = LIBRARIES) -> str:
    """``machine_info`` (and ``load_before``/``load_after`` if ``meta`` has them) as one sentence.

    ``meta`` may be a whole record: only the machine's keys and those of ``libraries`` are read.
    """
    keys = ["python", *(key for _, key in libraries)]
    versions = ", ".join(f"{_LABELS.get(key, key)} {meta[key]}" for key in keys)
    line = f"{meta['date']}; {meta['cpu']}, {meta['cores']} cores, {meta['memory_gb']} GB, {meta['os']}; {versions}"
    if "load_before" in meta:
        line += f"; load average {meta['load_before']:.2f} before, {meta['load_after']:.2f} after"
    return line


def load_average() -> float:
    """The one-minute load average: other work on the machine skews every timing."""
    return os.getloadavg()[0]


def busy_seconds() -> float:
    """CPU seconds the whole machine has been busy, all processes included (/proc/stat)."""
    fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:8]]
    user, nice, system, _idle, _iowait, irq, softirq = fields
    return (user + nice + system + irq + softirq) / os.sysconf("SC_CLK_TCK")


def process_tree(root: psutil.Process | None = None) -> list[psutil.Process]:
    """``root`` (default: this process) and its live descendants."""
    root = root or psutil.Process()
    try:
        return [root, *root.children(recursive=True)]
    except psutil.Error:
        return [root]


def tree_cpu_times() -> dict[tuple[int, float], float]:
    """CPU seconds (user + system) used so far by this process and each live descendant, by (pid, start).

    This process's own from its CPU clock (nanoseconds: a window of a few milliseconds, as a
    short calibration times, still counts), the others' from /proc (10 ms ticks).
    """
    times = {}
    me = os.getpid()
    for proc in process_tree():
        with contextlib.suppress(psutil.Error):
            times[(proc.pid, proc.create_time())] = time.process_time() if proc.pid == me else sum(proc.cpu_times()[:2])
    return times


def tree_cpu_seconds() -> float:
    """CPU seconds (user + system) used so far by this process and its live children."""
    return sum(tree_cpu_times().values())


def tree_cpu_used(before: dict[tuple[int, float], float]) -> float:
    """CPU seconds the tree used since ``tree_cpu_times()`` returned ``before``: per process, never negative.

    A child that ended in between takes its seconds with it (a whole-tree sum would fall by all of
    them, even those used before the window): its share of the window is left out, an undercount.
    """
    return sum(max(0.0, cpu - before.get(key, 0.0)) for key, cpu in tree_cpu_times().items())
