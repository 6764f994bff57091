"""The backends' registry: one table of names, factories and kinds; callers ask a backend's kind, not its name."""

from __future__ import annotations

import _multiprocessing
import dataclasses
import sys
from pathlib import Path

import pytest

from flirdata import ShmCapacityError, WorkerError, names
from flirdata.backends import registry
from flirdata.backends.registry import BACKENDS, KINDS, WorkerCountWarning, usable_cores, warn_if_oversubscribed
from flirdata.cli import main


def test_every_backend_declares_its_kind_and_the_parsers_name_them_all() -> None:
    assert tuple(KINDS) == tuple(BACKENDS) == names.BACKEND_NAMES
    assert [name for name, kind in KINDS.items() if not kind.parallel] == [registry.IN_THREAD]
    assert registry.EXTRAS == {name: kind.extra for name, kind in KINDS.items() if kind.extra}


def test_the_worker_count_check_asks_the_kind(monkeypatch: pytest.MonkeyPatch) -> None:
    """Too many workers warn for a parallel backend that runs here, whatever its name; never for one
    whose kind says it may run elsewhere (with these options), or that runs in the calling thread."""
    workers = usable_cores() + 1
    with pytest.warns(WorkerCountWarning, match=rf"workers={workers} is more than the {usable_cores()} cores"):
        warn_if_oversubscribed("threads", workers)
    elsewhere = dataclasses.replace(KINDS["threads"], runs_elsewhere=lambda **options: options.get("far", False))
    monkeypatch.setitem(KINDS, "threads", elsewhere)
    warn_if_oversubscribed("threads", workers, backend_options={"far": True})  # no warning (warnings are errors)
    with pytest.warns(WorkerCountWarning):
        warn_if_oversubscribed("threads", workers, backend_options={"far": False})
    monkeypatch.setitem(KINDS, "threads", dataclasses.replace(KINDS["threads"], parallel=False))
    warn_if_oversubscribed("threads", workers)


def test_ray_with_a_cluster_address_is_not_judged_by_this_machine(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    workers = usable_cores() + 1
    warn_if_oversubscribed("ray", workers, backend_options={"address": "head:6379"})
    monkeypatch.setenv("RAY_ADDRESS", "head:6379")
    warn_if_oversubscribed("ray", workers)
    if "ray" not in sys.modules or not sys.modules["ray"].is_initialized():
        monkeypatch.delenv("RAY_ADDRESS")
        with pytest.warns(WorkerCountWarning):
            warn_if_oversubscribed("ray", workers)  # the private local instance: this machine's cores


def test_an_unknown_backend_names_the_registry() -> None:
    with pytest.raises(ValueError, match=r"unknown backend 'spark'; expected one of \['dataloader', 'loky'"):
        warn_if_oversubscribed("spark", 2)
    with pytest.raises(ValueError, match="unknown backend 'spark'"):
        registry.backend_option_names("spark")


def _no_semaphores(*_: object) -> None:
    raise OSError(28, "No space left on device")  # what a full /dev/shm answers


@pytest.mark.parametrize("backend", [name for name, kind in KINDS.items() if kind.needs_semaphores])
def test_a_backend_without_semaphores_fails_before_its_pool_starts(
    backend: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(_multiprocessing, "SemLock", _no_semaphores)
    with pytest.raises(
        ShmCapacityError, match=rf"^flirdata '{backend}' backend: cannot start: .*No space left"
    ) as caught:
        registry.open_backend(backend, repr, workers=2, prefetch=1)  # the tiers' guard: no process started
    assert isinstance(caught.value, WorkerError) and "the 'sequential' backend" in str(caught.value)


def test_the_pools_built_on_multiprocessing_locks_declare_it() -> None:
    needing = {name for name, kind in KINDS.items() if kind.needs_semaphores}
    assert needing == {"threads", "process", "loky", "dataloader"}  # ray's pool is Ray's own


def test_joblib_without_semaphores_is_the_same_error_for_threads(monkeypatch: pytest.MonkeyPatch) -> None:
    from joblib._parallel_backends import FallbackToBackend, SequentialBackend
    from joblib.parallel import ThreadingBackend

    def fall_back(self: object, n_jobs: int = 1, **_: object) -> int:
        raise FallbackToBackend(SequentialBackend())  # joblib's answer when its import found no semaphores

    monkeypatch.setattr(ThreadingBackend, "configure", fall_back)
    with pytest.raises(ShmCapacityError, match=r"^flirdata 'threads' backend: cannot start: .*joblib"):
        registry.open_backend("threads", repr, workers=2, prefetch=1)


def test_the_export_command_says_it_in_one_line_without_a_resume_hint(
    synth_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(_multiprocessing, "SemLock", _no_semaphores)
    argv = ["export", str(synth_root), "--out", str(tmp_path / "out"), "--backend", "threads", "--workers", "2"]
    assert main([*argv, "--no-progress"]) == 1
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and "'threads' backend: cannot start" in lines[0], lines
    assert "--resume" not in lines[0] and lines[0].endswith("which needs none.")


def test_joblib_told_to_run_serially_is_named_not_taken_for_a_full_dev_shm(monkeypatch: pytest.MonkeyPatch) -> None:
    from joblib._parallel_backends import FallbackToBackend, SequentialBackend
    from joblib.parallel import ThreadingBackend

    def fall_back(self: object, n_jobs: int = 1, **_: object) -> int:
        raise FallbackToBackend(SequentialBackend())

    monkeypatch.setattr(ThreadingBackend, "configure", fall_back)
    monkeypatch.setenv("JOBLIB_MULTIPROCESSING", "0")
    with pytest.raises(WorkerError, match=r"JOBLIB_MULTIPROCESSING=0 turns off") as caught:
        registry.open_backend("threads", repr, workers=2, prefetch=1)
    assert not isinstance(caught.value, ShmCapacityError)
