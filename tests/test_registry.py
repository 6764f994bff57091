"""The backends' registry: one table of names, factories and kinds; callers ask a backend's kind, not its name."""

from __future__ import annotations

import dataclasses
import multiprocessing
import sys

import pytest

from flirdata import ShmCapacityError, WorkerError, names
from flirdata.backends import registry
from flirdata.backends.registry import BACKENDS, KINDS, WorkerCountWarning, usable_cores, warn_if_oversubscribed


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


def _no_semaphores() -> None:
    raise OSError(28, "No space left on device")  # what a full /dev/shm answers


@pytest.mark.parametrize("backend", [name for name, kind in KINDS.items() if kind.needs_semaphores])
def test_a_backend_without_semaphores_fails_before_its_pool_starts(
    backend: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(multiprocessing, "Lock", _no_semaphores)
    with pytest.raises(
        ShmCapacityError, match=rf"^flirdata '{backend}' backend: cannot start: .*No space left"
    ) as caught:
        registry.open_backend(backend, repr, workers=2, prefetch=1)  # the tiers' guard: no process started
    assert isinstance(caught.value, WorkerError) and "backend='sequential'" in str(caught.value)


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
