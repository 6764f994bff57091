"""The two tiers: the quick tier starts no process, and the slow tier's time limits are measured.

``no_process_started`` refuses every way of starting a process (conftest wraps each test not
marked slow in it); ``process_startup_s`` is what one worker process's start costs on this
machine under its present load, from which slow tests derive their time limits.
"""

from __future__ import annotations

import multiprocessing.process
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import pytest

__all__ = ["StartedAProcess", "measured_startup_s", "no_process_started", "process_startup_s"]


class StartedAProcess(AssertionError):
    """A test not marked slow started a subprocess, a process pool or Ray."""


def _process_starters() -> list[tuple[Any, str]]:
    """(owner, attribute) of every way a test starts a process: each is refused outside slow tests."""
    starters: list[tuple[Any, str]] = [
        (subprocess.Popen, "__init__"),  # subprocess.run, Ray's own processes, torchrun
        (multiprocessing.process.BaseProcess, "start"),  # multiprocessing, concurrent.futures, loky, torch
        (os, "fork"),
        (os, "system"),
        (os, "posix_spawn"),
        (os, "posix_spawnp"),
    ]
    if "ray" in sys.modules:  # (connecting to a running cluster starts nothing here, but still needs Ray)
        starters.append((sys.modules["ray"], "init"))
    return starters


@contextmanager
def no_process_started(nodeid: str) -> Iterator[None]:
    """Refuse, while test ``nodeid`` runs a phase, every process start from its own threads.

    Threads that were running before (a pool manager left by an earlier slow test) are let
    through: the process they start is not this test's.
    """
    started: list[str] = []
    earlier = set(threading.enumerate()) - {threading.current_thread()}
    patch = pytest.MonkeyPatch()

    def refuse(owner: Any, name: str) -> Callable[..., Any]:
        real = getattr(owner, name)
        what = f"{getattr(owner, '__name__', owner)}.{name}"

        def refused(*args: Any, **kwargs: Any) -> Any:
            if threading.current_thread() in earlier:
                return real(*args, **kwargs)
            started.append(what)
            raise StartedAProcess(f"{nodeid} is not marked slow but called {what}: mark it slow")

        return refused

    for owner, name in _process_starters():
        if hasattr(owner, name):
            patch.setattr(owner, name, refuse(owner, name))
    try:
        yield
    finally:
        patch.undo()
    if started:  # even if the code under test caught the error
        raise StartedAProcess(f"{nodeid} is not marked slow but started a process: {', '.join(started)}")


_STARTUP_S: list[float] = []


def process_startup_s() -> float:
    """Seconds a fresh interpreter takes here to import torch and flirdata (measured once per session).

    What starting one worker process costs on this machine under its present load: slow tests
    derive their time limits from it. It starts a process, so only slow tests may call it.
    """
    if not _STARTUP_S:
        start = time.monotonic()
        subprocess.run([sys.executable, "-c", "import torch, flirdata.loader"], check=True)
        _STARTUP_S.append(time.monotonic() - start)
    return _STARTUP_S[0]


def measured_startup_s() -> float | None:
    """``process_startup_s()`` if a slow test has measured it already, else None (nothing is started)."""
    return _STARTUP_S[0] if _STARTUP_S else None
