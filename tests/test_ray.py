"""The "ray" backend: the loader contract, a two-node cluster, lost actors, shipped images, export.

Most tests share the session's local Ray instance (``shared_ray``, in conftest), which the backend
reuses and leaves running; the tests about starting, stopping and connecting start their own
(``no_ray`` first ends the shared one, so they come first in the file: one start each).
"""

from __future__ import annotations

import functools
import hashlib
import logging
import os
import pickle
import shutil
import signal
import subprocess
import sys
import time
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import psutil
import pytest
import torch
from support import (
    RAY_PROCESSES,
    ProbeDataset,
    ToyDataset,
    assert_same_batch,
    check_backend,
    reference,
    run_epochs,
)
from tiers import process_startup_s

import flirdata.backends._ray_actor as ray_actor
import flirdata.backends._ray_session as ray_session
import flirdata.backends.ray
import flirdata.tools.export
from flirdata import FlirDetection, build_transform
from flirdata.backends import Fetcher, WorkerCrashError
from flirdata.backends._ray_actor import Delivery, RayWorker, TaskImages
from flirdata.backends._ray_session import RaySession
from flirdata.backends.ray import RayBackend, RayOptions
from flirdata.cli import main
from flirdata.collate import collate_detection
from flirdata.errors import LoaderTimeoutError, MissingExtraError
from flirdata.images import read_image_bytes, supplied_image_bytes
from flirdata.loader import LoaderOptions, WorkerCountWarning, make_loader
from flirdata.tools.export import BatchResult, export_augmented

ray = pytest.importorskip("ray")

REPO = Path(__file__).resolve().parent.parent


class Slow(ToyDataset):
    """``ToyDataset`` at ``delay`` seconds a sample: an epoch long enough to kill an actor in."""

    def __init__(self, size: int, delay: float) -> None:
        super().__init__(size=size)
        self.delay = delay

    def __getitem__(self, i: int) -> tuple[torch.Tensor, dict[str, Any]]:
        time.sleep(self.delay)
        return super().__getitem__(i)


class SlowToStart(ToyDataset):
    """``ToyDataset`` that takes ``delay`` seconds to unpickle outside this process (an actor's start)."""

    def __init__(self, size: int, delay: float) -> None:
        super().__init__(size=size)
        self.delay = delay
        self.driver = os.getpid()

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        if os.getpid() != self.driver:
            time.sleep(self.delay)


@pytest.fixture(scope="module")
def flir(synth_root: Path) -> FlirDetection:
    return FlirDetection(synth_root, "train", transform=build_transform("thermal"), seed=0)


@pytest.fixture
def no_ray() -> Iterator[None]:
    """Ray not initialised in this process: the test starts (and must stop) its own."""
    if ray.is_initialized():
        ray.shutdown()
    yield
    assert not ray.is_initialized(), "the backend left its Ray connection open"


def ray_processes() -> dict[int, str]:
    """pid -> name of this process's descendants that Ray started."""
    found = {}
    for child in psutil.Process().children(recursive=True):
        try:
            name = " ".join(child.cmdline()) or child.name()
            if child.status() != psutil.STATUS_ZOMBIE and any(n in name for n in RAY_PROCESSES):
                found[child.pid] = name
        except psutil.Error:
            continue
    return found


def digest(folder: Path) -> dict[str, str]:
    """sha256 of every file under ``folder``, by relative path."""
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest() for p in folder.rglob("*") if p.is_file()
    }


# -- starting, stopping, connecting (each test its own instance) --------------------------------


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_a_local_instance_lives_as_long_as_its_last_backend(no_ray: None, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ray_session, "_usable_cores", lambda: 4)  # room for two loaders of 2 workers
    dataset = ToyDataset(size=12)
    first, second, third = (make_loader(dataset, backend="ray", workers=2, batch_size=4) for _ in range(3))
    expected = reference(dataset, (0,), batch_size=4)[0]
    for batch, want in zip(list(first), expected, strict=True):
        assert_same_batch(batch, want)
    started = ray_processes()
    names = " ".join(started.values())
    assert all(name in names for name in RAY_PROCESSES) and "ray::RayWorker" in names, names
    second_batches = iter(second)
    next(second_batches)
    with pytest.raises(
        ValueError, match="the local Ray instance flirdata started has 4 CPUs and open ray loaders hold 4"
    ):
        list(third)
    first.close()  # the second loader still uses the instance
    assert ray.is_initialized() and len(list(second_batches)) == len(second) - 1
    second.close()
    second.close()  # idempotent
    assert not ray.is_initialized()
    deadline = time.monotonic() + 10 * process_startup_s()
    while set(started) & set(ray_processes()) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not set(started) & set(ray_processes()), f"Ray processes left: {ray_processes()}"


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_two_nodes_one_cpu_each_get_one_actor_each_and_the_same_batches(no_ray: None, flir: FlirDetection) -> None:
    from ray.cluster_utils import Cluster

    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": False})
    try:
        cluster.add_node(num_cpus=1)
        cluster.wait_for_nodes()
        options = {"batch_size": 5, "shuffle": True, "seed": 0}
        loader = make_loader(flir, backend="ray", workers=2, backend_options={"address": cluster.address}, **options)
        with loader:
            got = run_epochs(loader, (0, 1))
            assert isinstance(loader.backend, RayBackend)
            places = loader.backend.locate_workers()
            nodes = {node["NodeID"] for node in ray.nodes() if node["Alive"]}
        print(f"\ncluster nodes: {sorted(nodes)}\nactors (node id, pid): {places}")
        assert len(nodes) == 2 and {node for node, _ in places} == nodes  # one actor on each node
        expected = reference(flir, (0, 1), **options)
        for epoch in (0, 1):
            for batch, want in zip(got[epoch], expected[epoch], strict=True):
                assert_same_batch(batch, want)
        assert not ray.is_initialized()  # flirdata connected, so flirdata disconnected
        # The same cluster by another name than the one Ray reports (a host name for its IP):
        alias = "localhost:" + cluster.address.rsplit(":", 1)[1]
        first = RaySession.open(alias, 1)
        second = RaySession.open(alias, 1)  # joins the connection, not "already connected elsewhere"
        assert first.owned and second.owned
        first.close()
        assert ray.is_initialized()
        second.close()
        assert not ray.is_initialized()
    finally:
        cluster.shutdown()


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_a_ray_init_of_the_users_own_after_ours_was_shut_down_stays_theirs(no_ray: None) -> None:
    ours = RaySession.open(None, 1)  # flirdata's private local instance
    try:
        ray.shutdown()  # the user ends it under the open session, and starts their own
        ray.init(address="local", num_cpus=1, include_dashboard=False, logging_level=logging.ERROR)
        theirs = RaySession.open(None, 1)
        assert not theirs.owned
        theirs.close()
        ours.close()  # the last session of flirdata's connection: that connection is gone already
        assert ray.is_initialized(), "flirdata shut down the user's own Ray"
    finally:
        ours.close()
        ray.shutdown()


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_without_ray_the_error_is_one_line_naming_the_install_command(tmp_path: Path) -> None:
    code = f"""
import sys
import flirdata as fd, flirdata.backends, flirdata.loader, flirdata.tools.export.cli
from flirdata.cli import main
assert "ray" not in sys.modules, "importing flirdata imported ray"
sys.modules["ray"] = None  # what a missing package looks like to `import ray`
ds = fd.FlirDetection({str(tmp_path / "data")!r}, "train")
try:
    list(fd.make_loader(ds, backend="ray", workers=2))
except fd.MissingExtraError as exc:
    print(exc)
sys.exit(main(["export", {str(tmp_path / "data")!r}, "--out", {str(tmp_path / "out")!r}, "--backend", "ray",
               "--workers", "2", "--no-progress"]))
"""
    from flirdata.synth import synthesize

    synthesize(tmp_path / "data", train=4, val=0, seed=0, progress=False)
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    install = "pip install 'flirdata[ray]'"
    assert done.stdout.strip().splitlines() == [
        f"flirdata's 'ray' backend needs the 'ray' extra, which is not installed: {install}"
    ]
    assert done.returncode == 2, done.stderr
    assert done.stderr.strip().splitlines()[-1].endswith(install) and done.stderr.count("\n") == 1, done.stderr


# -- on one shared local instance ----------------------------------------------------------------


@pytest.mark.slow
def test_contract(shared_ray: None, flir: FlirDetection) -> None:
    loader = check_backend(flir, "ray", 2)  # (test_backends runs it over 1, 2 and 3 workers too)
    assert loader.backend is None
    assert ray.is_initialized()  # the user's instance: reused, never shut down by flirdata


@pytest.mark.slow
@pytest.mark.timeout(90)
def test_actors_are_set_up_like_other_workers_and_get_the_dataset_once(shared_ray: None) -> None:
    with make_loader(ProbeDataset(size=24), backend="ray", workers=2, batch_size=3) as loader:
        seen = run_epochs(loader, (0, 1, 2))
        places = loader.backend.locate_workers()
    targets = [t for batches in seen.values() for _, ts in batches for t in ts]
    assert {t["unpickles"] for t in targets} == {1}  # once per actor, not per task, not per epoch
    assert {t["pid"] for t in targets} == {pid for _, pid in places} and os.getpid() not in {t["pid"] for t in targets}
    assert {(t["cv2"], t["torch"], t["omp"]) for t in targets} == {(1, 1, "1")}


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_a_killed_actor_is_replaced_and_the_epoch_has_the_same_bytes(shared_ray: None) -> None:
    dataset = Slow(size=48, delay=0.02)
    expected = reference(dataset, (0,), batch_size=4)[0]
    with make_loader(dataset, backend="ray", workers=2, batch_size=4) as loader:
        batches = iter(loader)
        got = [next(batches)]
        (_, victim), _ = loader.backend.locate_workers()
        os.kill(victim, signal.SIGKILL)
        got.extend(batches)
        replaced = loader.backend.locate_workers()
    assert victim not in {pid for _, pid in replaced}
    assert len(got) == len(expected)
    for batch, want in zip(got, expected, strict=True):
        assert_same_batch(batch, want)


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_past_the_retries_a_lost_actor_raises_worker_crash_error(shared_ray: None) -> None:
    dataset = Slow(size=48, delay=0.02)
    with make_loader(dataset, backend="ray", workers=2, batch_size=4, backend_options={"retries": 0}) as loader:
        batches = iter(loader)
        next(batches)
        (_, victim), _ = loader.backend.locate_workers()
        os.kill(victim, signal.SIGKILL)
        with pytest.raises(WorkerCrashError, match=rf"'ray' backend: a worker process \(pid {victim}\) died") as caught:
            list(batches)
        assert "retries=0" in caught.value.__notes__[-1]
        # Which cluster, in the one line: an address="auto" may have joined another program's instance.
        gcs = ray.get_runtime_context().gcs_address
        assert f"died unexpectedly on the Ray cluster at {gcs} (session " in str(caught.value)
        assert loader.backend is None  # the broken backend is closed ...
        assert len(list(loader)) == len(loader)  # ... and the next epoch gets new actors
    assert ray.is_initialized()


@pytest.mark.slow
@pytest.mark.timeout(90)
def test_a_stopped_actor_times_out(no_ray: None) -> None:
    # flirdata's private instance: closing it ends every process it started, stopped ones too (on a
    # user's own instance, ray.kill ends the actors, and Ray ends a stopped process only when it resumes)
    timeout = round(1 + process_startup_s())  # a batch's wait: well above a batch's work on this machine now
    with make_loader(Slow(size=40, delay=0.05), backend="ray", workers=2, batch_size=2, timeout=timeout) as loader:
        batches = iter(loader)
        next(batches)
        pids = [pid for _, pid in loader.backend.locate_workers()]
        for pid in pids:
            os.kill(pid, signal.SIGSTOP)
        start = time.monotonic()
        with pytest.raises(LoaderTimeoutError, match=rf"'ray' backend: no batch arrived within timeout={timeout} s"):
            list(batches)
        assert timeout <= time.monotonic() - start < timeout + 3 * process_startup_s()
        assert loader.backend is None
    stopped = [psutil.Process(pid) for pid in pids if psutil.pid_exists(pid)]
    _, alive = psutil.wait_procs(stopped, timeout=3 * process_startup_s())
    assert not [p for p in alive if p.status() != psutil.STATUS_ZOMBIE], "stopped actors left behind"


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_an_actors_start_does_not_count_against_a_batchs_timeout(
    shared_ray: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    timeout = round(1 + process_startup_s())  # a batch's wait: well above a batch's work on this machine now
    dataset = SlowToStart(size=12, delay=2 * timeout)  # each actor takes twice the timeout to load it
    # The start allowance (60 s in use) covers that load and an actor's start on this machine now: a
    # Ray actor (a worker process that joins the cluster, then imports torch) took over 60 s under two
    # spin loops where a process start-up measured 2.2 s, i.e. over 27 of them: allow 50.
    start_s = max(flirdata.backends._waits.START_S, 2 * timeout + 50 * process_startup_s())
    monkeypatch.setattr(flirdata.backends._waits, "START_S", start_s)
    expected = reference(dataset, (0,), batch_size=3)[0]
    with make_loader(dataset, backend="ray", workers=2, batch_size=3, timeout=timeout) as loader:
        got = list(loader)
    assert len(got) == len(expected)
    for batch, want in zip(got, expected, strict=True):
        assert_same_batch(batch, want)


@pytest.mark.slow
@pytest.mark.timeout(90)
def test_an_actor_that_does_not_start_in_its_allowance_times_out(
    shared_ray: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(flirdata.backends._waits, "START_S", 3.0)  # 60 s in use
    with make_loader(SlowToStart(size=8, delay=60), backend="ray", workers=2, batch_size=2, timeout=1) as loader:
        start = time.monotonic()
        with pytest.raises(LoaderTimeoutError, match=r"'ray' backend: a worker did not start within 3 s") as caught:
            next(iter(loader))
        assert 3 <= time.monotonic() - start < 3 + 3 * process_startup_s()
        assert caught.value.starting and loader.backend is None
        assert len(list(make_loader(ToyDataset(size=4), backend="ray", workers=2, batch_size=2))) == 2


@pytest.mark.slow
@pytest.mark.timeout(90)
def test_shipped_images_need_no_files_on_the_actors(
    shared_ray: None, synth_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = Path(shutil.copytree(synth_root, tmp_path / "data"))
    dataset = FlirDetection(root, "train", transform=build_transform("thermal"), seed=0)
    expected = reference(dataset, (0,), batch_size=6)[0]
    sizes = sum(dataset.image_path(i).stat().st_size for i in range(len(dataset)))

    def read_then_delete(path: Any, *args: Any) -> bytes:  # in this process only: actors see no file
        data = read_image_bytes(path, *args)
        os.unlink(path)
        return data

    monkeypatch.setattr(ray_actor, "read_image_bytes", read_then_delete)
    with make_loader(dataset, backend="ray", workers=2, batch_size=6, backend_options={"ship_images": True}) as loader:
        got = list(loader)
        assert loader.backend.shipped_bytes == sizes
    assert not any((root / "images_thermal_train" / "data").iterdir())  # every file was read once, then gone
    for batch, want in zip(got, expected, strict=True):
        assert_same_batch(batch, want)


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_export_on_ray_equals_a_sequential_export_and_resumes(
    shared_ray: None, synth_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    args = ["export", str(synth_root), "--split", "train", "--copies", "2", "--batch-size", "5", "--no-progress"]
    assert main([*args, "--out", str(tmp_path / "sequential")]) == 0
    assert main([*args, "--out", str(tmp_path / "ray"), "--backend", "ray", "--workers", "2"]) == 0
    expected = digest(tmp_path / "sequential")
    assert digest(tmp_path / "ray") == expected
    out = tmp_path / "interrupted"
    dataset = FlirDetection(synth_root, "train", transform=build_transform("thermal"), seed=0)
    run = functools.partial(export_augmented, dataset, out, copies=2, batch_size=5, backend="ray", workers=2)
    with monkeypatch.context() as patch:  # every batch written by the actors, the merge interrupted
        patch.setattr(flirdata.tools.export, "finish_output", _interrupt)
        with pytest.raises(KeyboardInterrupt):
            run(progress=False)
    next((out / "data").glob("*.jpg")).unlink()
    assert run(resume=True, progress=False).written == 5  # only the batch that lost a file
    assert digest(out) == expected


def _interrupt(*_: Any) -> None:
    raise KeyboardInterrupt


# -- no Ray needed -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("options", "match"),
    [
        ({"adress": "x"}, r"unknown option 'adress' for backend 'ray'; expected one of \['address', 'retries', 'ship"),
        ({"retries": -1}, "ray backend option retries must be an integer >= 0, got -1"),
        ({"ship_images": "yes"}, "ray backend option ship_images must be True or False, got 'yes'"),
        ({"address": ""}, "ray backend option address must be a non-empty string or None, got ''"),
    ],
)
def test_bad_options_name_the_value(options: dict[str, Any], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        list(make_loader(ToyDataset(size=4), backend="ray", workers=2, backend_options=options))


def test_other_backends_take_no_options() -> None:
    with pytest.raises(ValueError, match="unknown option 'address' for backend 'process'; it takes none"):
        make_loader(ToyDataset(size=4), backend="process", workers=2, backend_options={"address": "auto"})


def test_workers_that_may_run_on_a_cluster_do_not_warn_about_this_machine(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        make_loader(ToyDataset(size=4), backend="ray", workers=64, backend_options={"address": "auto"})
    monkeypatch.setattr(ray, "is_initialized", lambda: False)  # not the test module's instance
    with pytest.warns(WorkerCountWarning, match="workers=64 is more than the"):
        make_loader(ToyDataset(size=4), backend="ray", workers=64)  # the private local instance


def test_shipping_images_needs_a_dataset_with_files() -> None:
    with pytest.raises(ValueError, match="ship_images=True needs a task function with samples"):
        list(make_loader(ToyDataset(size=4), backend="ray", workers=2, backend_options={"ship_images": True}))


def test_supplied_bytes_replace_reads_in_this_thread_only(synth_root: Path) -> None:
    dataset = FlirDetection(synth_root, "train")
    path, other = dataset.image_path(0), dataset.image_path(1)
    with supplied_image_bytes({str(path): b"shipped"}):
        assert read_image_bytes(path) == b"shipped"
        assert read_image_bytes(other) == other.read_bytes()  # not supplied: read from disk
    assert read_image_bytes(path) == path.read_bytes()


def test_what_crosses_to_the_actors_pickles(synth_root: Path) -> None:
    dataset = FlirDetection(synth_root, "train", transform=build_transform("thermal"), seed=0)
    fetcher = Fetcher(dataset, collate_detection)
    images = TaskImages.of(fetcher)((0, (2, 3)))
    assert list(images) == [str(dataset.image_path(2)), str(dataset.image_path(3))]
    worker = pickle.loads(pickle.dumps(RayWorker))(list(sys.path))
    worker._fn = pickle.loads(pickle.dumps(fetcher))  # as the first task would fetch it
    task = pickle.loads(pickle.dumps((0, (2, 3))))
    delivery = pickle.loads(pickle.dumps(worker.run([None], task, pickle.loads(pickle.dumps(images)))))
    assert isinstance(delivery, Delivery) and isinstance(delivery.images, np.ndarray)
    delivery.images.flags.writeable = False  # as Ray's object store hands it over
    batch = delivery.unpack()
    assert_same_batch(batch, fetcher(task))
    batch[0].add_(1)  # the loop's own memory
    assert isinstance(pickle.loads(pickle.dumps(Delivery.pack(BatchResult(0, 1, 2, 3)))).unpack(), BatchResult)
    things = [RayOptions("auto", True, 1), LoaderOptions("ray", 2, backend_options={"retries": 1})]
    for thing in things:
        assert pickle.loads(pickle.dumps(thing)) == thing
    error = pickle.loads(pickle.dumps(MissingExtraError("the 'ray' backend", "ray")))
    assert isinstance(error, ImportError) and str(error).endswith("pip install 'flirdata[ray]'")
    late = pickle.loads(pickle.dumps(LoaderTimeoutError("ray", 60.0, starting=True)))
    assert late.starting and str(late) == str(LoaderTimeoutError("ray", 60.0, starting=True))


@pytest.mark.slow
@pytest.mark.timeout(90)
def test_more_actors_than_the_clusters_cpus_warn(shared_ray: None) -> None:
    from flirdata.loader import WorkerCountWarning, open_backend

    dataset = ToyDataset(size=8)
    cpus = int(ray.cluster_resources()["CPU"])
    match = rf"workers={cpus + 1} actors of one CPU each, but the Ray cluster has {cpus} CPUs"
    with pytest.warns(WorkerCountWarning, match=match):
        backend = open_backend("ray", Fetcher(dataset, collate_detection), cpus + 1)
    backend.close()
    with warnings.catch_warnings():
        warnings.simplefilter("error", WorkerCountWarning)  # as many actors as CPUs: no warning
        open_backend("ray", Fetcher(dataset, collate_detection), cpus).close()
