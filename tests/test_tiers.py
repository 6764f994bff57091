"""The quick tier's guard refuses every way of starting a process, even one the code under test catches."""

from __future__ import annotations

import multiprocessing
import os
import subprocess
import sys
from collections.abc import Callable

import pytest
from tiers import StartedAProcess, no_process_started

STARTS: dict[str, Callable[[], object]] = {
    "subprocess": lambda: subprocess.run([sys.executable, "-c", "pass"], check=True),
    "multiprocessing": lambda: multiprocessing.get_context("spawn").Process(target=print).start(),
    "fork": lambda: os.fork(),
    "system": lambda: os.system("true"),
}


@pytest.mark.parametrize("start", sorted(STARTS))
def test_a_quick_test_cannot_start_a_process(start: str) -> None:
    with pytest.raises(StartedAProcess, match=r"a quick test is not marked slow but called \w+\.\w+"):
        with no_process_started("a quick test"):
            STARTS[start]()


def test_a_start_the_code_under_test_catches_still_fails_the_test() -> None:
    with pytest.raises(StartedAProcess, match="a quick test is not marked slow but started a process: Popen"):
        with no_process_started("a quick test"):
            try:
                subprocess.run(["true"], check=False)
            except Exception:
                pass  # as a library that falls back when it cannot start a helper


def test_threads_are_allowed() -> None:
    from concurrent.futures import ThreadPoolExecutor

    with no_process_started("a quick test"), ThreadPoolExecutor(2) as pool:
        assert list(pool.map(abs, [-1, -2])) == [1, 2]
