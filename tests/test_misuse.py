"""A careless user and a stuck worker: clear errors instead of silent wrong data or a hang."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import psutil
import pytest
import torch
from hazards import WorkerHazard
from support import our_children
from tiers import process_startup_s

import flirdata as fd
from flirdata.backends import WorkerCrashError
from flirdata.backends._pool import PoolBackend
from flirdata.backends.protocol import describe_exit
from flirdata.errors import LoaderTimeoutError
from flirdata.loader import WorkerCountWarning, usable_cores

PROCESS_BACKENDS = ("dataloader", "loky", "process")


@pytest.fixture(scope="module")
def flir(synth_root: Path) -> fd.FlirDetection:
    return fd.FlirDetection(synth_root, "train", transform=fd.build_transform("thermal"), seed=0)


def _images(loader: fd.Loader) -> list[torch.Tensor]:
    return [images for images, _ in loader]


# -- the epoch travels with the task -------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.timeout(60)
def test_two_threads_loaders_over_one_dataset_keep_their_own_epochs(flir: fd.FlirDetection) -> None:
    expected = {e: _images(_at_epoch(fd.make_loader(flir, batch_size=2), e)) for e in (0, 5)}
    first = _at_epoch(fd.make_loader(flir, backend="threads", workers=2, batch_size=2), 0)
    second = _at_epoch(fd.make_loader(flir, backend="threads", workers=2, batch_size=2), 5)
    with first, second:
        for k, ((a, _), (b, _)) in enumerate(zip(first, second, strict=True)):
            assert torch.equal(a, expected[0][k]) and torch.equal(b, expected[5][k]), k


@pytest.mark.slow
@pytest.mark.timeout(60)
@pytest.mark.parametrize("backend", ["threads", "process"])
def test_set_epoch_on_the_dataset_mid_epoch_does_not_leak(flir: fd.FlirDetection, backend: str) -> None:
    expected = _images(fd.make_loader(flir, batch_size=2))
    with fd.make_loader(flir, backend=backend, workers=2, batch_size=2) as loader:
        for k, (images, _) in enumerate(loader):
            flir.set_epoch(k + 3)  # a user moving the dataset on while the loader runs epoch 0
            assert torch.equal(images, expected[k]), k
    flir.set_epoch(0)


def _at_epoch(loader: fd.Loader, epoch: int) -> fd.Loader:
    loader.set_epoch(epoch)
    return loader


# -- one epoch at a time per loader ----------------------------------------------------------------


@pytest.mark.parametrize("backend", ["sequential", "threads"])
def test_a_second_iter_during_an_epoch_is_refused(flir: fd.FlirDetection, backend: str) -> None:
    with fd.make_loader(flir, backend=backend, workers=2, batch_size=4) as loader:
        with pytest.raises(RuntimeError, match="epoch 0 is already being iterated; a loader serves one epoch"):
            list(zip(loader, loader, strict=False))
        outer = iter(loader)
        next(outer)
        with pytest.raises(RuntimeError, match="make a second loader"):
            for _ in loader:
                pass
        assert len(list(outer)) == len(loader) - 1  # the outer epoch is intact
        assert len(list(loader)) == len(loader)  # and once it ended, a new one starts


def test_a_dropped_iterator_frees_the_loader(flir: fd.FlirDetection) -> None:
    loader = fd.make_loader(flir, batch_size=4)
    next(iter(loader))  # the iterator is dropped at once, part-way
    assert len(list(loader)) == len(loader)
    held = iter(loader)  # still referenced, never started: still an epoch in progress
    with pytest.raises(RuntimeError, match="already being iterated"):
        iter(loader)
    held.close()
    assert len(list(loader)) == len(loader)


# -- timeouts ------------------------------------------------------------------------------------


def _workers_of(before: set[int]) -> list[psutil.Process]:
    me = psutil.Process()
    found = []
    for child in our_children():
        line = " ".join(child.cmdline())
        if child.pid in before or "resource_tracker" in line:
            continue
        if "forkserver import main" in line and child.ppid() == me.pid:
            continue  # the fork server itself
        found.append(child)
    return found


@pytest.mark.slow
@pytest.mark.timeout(90)
@pytest.mark.parametrize("backend", PROCESS_BACKENDS)
def test_a_stopped_worker_times_out_and_the_next_epoch_recovers(flir: fd.FlirDetection, backend: str) -> None:
    before = {p.pid for p in our_children()}
    # A batch's wait, well above one of this dataset's batches on this machine now (start-up has its own allowance).
    timeout = round(2 + 4 * process_startup_s())
    with fd.make_loader(flir, backend=backend, workers=2, batch_size=1, prefetch=1, timeout=timeout) as loader:
        batches = iter(loader)
        next(batches)
        workers = _workers_of(before)
        assert len(workers) == 2
        time.sleep(1.0)  # the workers queue their next batches: for "dataloader", a descriptor still to fetch
        for worker in workers:
            os.kill(worker.pid, signal.SIGSTOP)
        start = time.monotonic()
        late = rf"'{backend}' backend: no batch arrived within timeout={timeout} s"
        with pytest.raises(LoaderTimeoutError, match=late):
            for _ in batches:
                pass
        assert timeout <= time.monotonic() - start < 2 * timeout
        assert loader.backend is None
        assert len(list(loader)) == len(loader)
    psutil.wait_procs(workers, timeout=timeout)
    assert not [w for w in workers if w.is_running() and w.status() != psutil.STATUS_ZOMBIE]


class Stuck:
    """Samples from ``first`` on block until released, like reads from a hung network file system."""

    def __init__(self, first: int | None = 3) -> None:
        self.first = first
        self.release = threading.Event()

    def __len__(self) -> int:
        return 8

    def __getitem__(self, i: int) -> tuple[torch.Tensor, dict[str, Any]]:
        if self.first is not None and i >= self.first:
            self.release.wait(120)
        return torch.zeros((1, 2, 2), dtype=torch.uint8), {"image_id": i}


def test_a_stuck_thread_times_out_after_one_timeout() -> None:
    # The timeout: well above an epoch that does not stick, measured here, so a busy machine holds the bound.
    start = time.monotonic()
    assert len(list(fd.make_loader(Stuck(first=None), backend="threads", workers=2, batch_size=1))) == 8
    timeout = 1.0 + 10 * (time.monotonic() - start)
    dataset = Stuck()
    loader = fd.make_loader(dataset, backend="threads", workers=2, batch_size=1, timeout=timeout)
    try:
        start = time.monotonic()
        with pytest.raises(LoaderTimeoutError, match="'threads' backend: no batch arrived within timeout="):
            list(loader)
        took = time.monotonic() - start
    finally:
        dataset.release.set()
        loader.close()
    # One timeout, not one more per stuck or queued task left in the window (4 of them: 4 more).
    assert timeout <= took < 2 * timeout


@pytest.mark.parametrize("timeout", [0, -1, float("nan"), float("inf"), "5"])
def test_timeout_must_be_positive_seconds(flir: fd.FlirDetection, timeout: Any) -> None:
    with pytest.raises(ValueError, match="timeout must be a number of seconds > 0 or None"):
        fd.make_loader(flir, timeout=timeout)


# -- worker deaths ---------------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.timeout(90)
@pytest.mark.parametrize("backend", PROCESS_BACKENDS)
def test_a_worker_dead_between_epochs_fails_one_epoch_then_recovers(flir: fd.FlirDetection, backend: str) -> None:
    before = {p.pid for p in our_children()}
    with fd.make_loader(flir, backend=backend, workers=2, batch_size=4) as loader:
        list(loader)
        workers = _workers_of(before)
        os.kill(workers[0].pid, signal.SIGKILL)
        _wait_for_zombie(workers[0])  # not reaped here: the pool must learn its exit status
        with pytest.raises(WorkerCrashError, match=rf"worker pid {workers[0].pid} was killed by SIGKILL"):
            list(loader)
        assert len(list(loader)) == len(loader)


def _wait_for_zombie(process: psutil.Process) -> None:
    while True:  # a SIGKILL shows at once on a quiet machine; the hang guard bounds a busy one
        try:
            if process.status() == psutil.STATUS_ZOMBIE:
                return
        except psutil.NoSuchProcess:
            return
        time.sleep(0.02)


def test_a_sigbus_names_a_full_dev_shm() -> None:
    assert "/dev/shm is full" in describe_exit(-signal.SIGBUS)
    assert describe_exit(3) == "exited with status 3 (its error, if any, is printed above)"
    assert "OOM killer" in describe_exit(-signal.SIGKILL)


class _ForkServerExit:
    """A fork-server worker's status: one message on a pipe, read by the broken pool's manager
    thread as it joins its workers; a reader racing it finds the pipe empty and sees 255."""

    def __init__(self, joined: threading.Event) -> None:
        self._joined = joined

    def join(self, timeout: float | None = None) -> None:
        pass

    @property
    def exitcode(self) -> int:
        return 7 if self._joined.is_set() else 255


def test_a_crash_report_reads_the_exits_after_the_pool_has_joined_its_workers() -> None:
    joined = threading.Event()
    manager = threading.Thread(target=lambda: (time.sleep(0.2), joined.set()))  # the pool's own clean-up
    executor = SimpleNamespace(_executor_manager_thread=manager)
    backend = PoolBackend("process", executor, lambda executor, wait=True: None, workers=1, prefetch=1)
    backend._processes = {4242: _ForkServerExit(joined)}
    manager.start()
    assert "worker pid 4242 exited with status 7" in str(backend._crash_error())


@pytest.mark.slow
@pytest.mark.timeout(60)
def test_a_worker_killed_by_sigbus_is_reported_as_a_full_dev_shm() -> None:
    with fd.make_loader(WorkerHazard(8, at=2, ending="sigbus"), backend="process", workers=2, batch_size=1) as loader:
        with pytest.raises(WorkerCrashError, match=r"was killed by SIGBUS \(usually /dev/shm is full"):
            list(loader)


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_export_with_a_killed_worker_is_one_line_and_resumable(synth_root: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    argv = [
        sys.executable,
        "-m",
        "flirdata",
        "export",
        "--data",
        str(synth_root),
        "--out",
        str(out),
        "--copies",
        "24",  # 576 images: seconds of work left when the workers are seen, on a fast machine too
        "--backend",
        "process",
        "--workers",
        "2",
        "--batch-size",
        "2",
        "--no-progress",
    ]
    export = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        workers: list[psutil.Process] = []
        deadline = time.monotonic() + 10 * process_startup_s()  # the interpreter, then its two workers
        while len(workers) < 2 and time.monotonic() < deadline:
            workers = [
                p
                for p in psutil.Process(export.pid).children(recursive=True)
                if "forkserver import main" in " ".join(p.cmdline()) and p.ppid() != export.pid
            ]
            time.sleep(0.1)
        assert len(workers) == 2, "the export never started its workers"
        # The export held still while a worker dies, so that it cannot finish its batches first on a fast machine.
        os.kill(export.pid, signal.SIGSTOP)
        try:
            os.kill(workers[0].pid, signal.SIGKILL)
            psutil.wait_procs([workers[0]], timeout=60)
        finally:
            os.kill(export.pid, signal.SIGCONT)
        _, stderr = export.communicate()  # (the hang guard bounds it)
    finally:
        export.kill()
        export.wait()
    assert export.returncode == 1, stderr
    lines = stderr.strip().splitlines()
    assert len(lines) == 1, stderr
    assert lines[0].startswith("flirdata export: error: flirdata 'process' backend: worker pid ")
    assert "run the same command with --resume to finish" in lines[0]
    resumed = subprocess.run([*argv, "--resume"], capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr
    clean = subprocess.run([*argv[:7], str(tmp_path / "clean"), *argv[8:]], capture_output=True, text=True)
    assert clean.returncode == 0, clean.stderr
    for path in sorted((tmp_path / "clean").rglob("*")):
        if path.is_file():
            assert path.read_bytes() == (out / path.relative_to(tmp_path / "clean")).read_bytes(), path


# -- too many workers, nothing to load -------------------------------------------------------------


def test_more_workers_than_cores_warns_once(flir: fd.FlirDetection) -> None:
    workers = usable_cores() + 1
    with pytest.warns(WorkerCountWarning, match=rf"workers={workers} is more than the {usable_cores()} cores") as seen:
        fd.make_loader(flir, backend="loky", workers=workers)
    assert len(seen) == 1
    fd.make_loader(flir, backend="loky", workers=usable_cores())  # no warning (warnings are errors here)


def test_an_empty_split_says_so(tmp_path: Path) -> None:
    from support import write_split

    folder = write_split(tmp_path / "empty", [], [], [])
    ds = fd.FlirDetection(folder, folder)
    with pytest.raises(fd.DataError, match="empty: the split has no images"):
        fd.make_loader(ds, backend="process", workers=2)
