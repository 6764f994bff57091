"""Shared-memory segments: reserved when made (a full /dev/shm never SIGBUSes), stale ones swept."""

from __future__ import annotations

import errno
import fcntl
import os
import shutil
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from flirdata import FlirDetection, _segments
from flirdata._segments import SEGMENT_PREFIX, SHM_DIR, sweep_stale
from flirdata.backends import _shm
from flirdata.backends._shm import SharedRing, ShmCapacityWarning
from flirdata.cache import CacheCapacityWarning

pytestmark = pytest.mark.skipif(not Path(SHM_DIR).is_dir(), reason="needs /dev/shm (Linux)")


def _dead_pid() -> int:
    """A pid no process can have: above the kernel's pid_max."""
    return int(Path("/proc/sys/kernel/pid_max").read_text()) + 1


def _ours() -> set[str]:
    return {name for name in os.listdir(SHM_DIR) if name.startswith(f"{SEGMENT_PREFIX}{os.getpid()}-")}


def _allocated(name: str) -> int:
    return os.stat(os.path.join(SHM_DIR, name)).st_blocks * 512


@pytest.fixture
def full_dev_shm(monkeypatch: pytest.MonkeyPatch) -> None:
    """posix_fallocate fails as on a full tmpfs (its free space, as measured before, says otherwise)."""

    def no_space(fd: int, offset: int, length: int) -> None:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "posix_fallocate", no_space)


def test_ring_and_cache_pages_are_reserved_when_made(synth_root: Path) -> None:
    ring = SharedRing(slot_bytes=300_000, slots=3)
    try:
        assert _allocated(ring.name) >= ring.slot_bytes * ring.slots
    finally:
        ring.close()
    dataset = FlirDetection(synth_root, "train", cache="ram", cache_bytes=16 << 20)
    cache = dataset._cache
    assert cache is not None and cache.layout.capacity > 0
    assert _allocated(cache.name) >= cache.layout.nbytes
    cache.close()


@pytest.mark.usefixtures("full_dev_shm")
def test_a_full_dev_shm_leaves_the_cache_out_with_a_warning(synth_root: Path) -> None:
    before = _ours()
    with pytest.warns(CacheCapacityWarning, match=r"/dev/shm cannot hold .* MiB \(.* MiB free.*caching no images"):
        dataset = FlirDetection(synth_root, "train", cache="ram")
    assert dataset._cache is not None and dataset._cache.layout.capacity == 0
    assert _ours() == before  # the segment that could not be reserved is gone
    image, target = dataset[0]  # decoded, as without cache
    assert image.shape[-2:] == (512, 640) and target["image_id"] == dataset.index.image_ids[0]


@pytest.mark.usefixtures("full_dev_shm")
def test_a_full_dev_shm_leaves_the_ring_out_with_a_warning(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_shm, "_warned", False)
    monkeypatch.setattr(_shm, "shm_free_bytes", lambda: 1 << 40)  # measured free; the reservation says no
    before = _ours()
    with pytest.warns(ShmCapacityWarning, match=r"/dev/shm cannot hold a shared-memory segment of 1\.0 MiB"):
        assert SharedRing.create(slot_bytes=1 << 19, slots=2) is None
    assert _ours() == before


def _plant(folder: Path, name: str) -> Path:
    path = folder / name
    path.write_bytes(b"\0" * 64)
    return path


def test_sweep_removes_only_our_segments_of_dead_creators(tmp_path: Path) -> None:
    dead, live = _dead_pid(), os.getpid()
    stale = _plant(tmp_path, f"{SEGMENT_PREFIX}{dead}-0123abcd")
    kept = [
        _plant(tmp_path, f"{SEGMENT_PREFIX}{live}-0123abcd"),  # a live creator
        _plant(tmp_path, f"{SEGMENT_PREFIX}1-0123abcd"),  # init, alive, someone else's: kept quietly
        _plant(tmp_path, f"other-{dead}-0123abcd"),  # not our prefix
        _plant(tmp_path, f"{SEGMENT_PREFIX}{dead}-notours"),  # not our name pattern
        _plant(tmp_path, f"{SEGMENT_PREFIX}{dead}-0123abcd.txt"),
    ]
    locked = _plant(tmp_path, f"{SEGMENT_PREFIX}{dead}-4567cdef")  # its creator alive in another pid namespace
    link = tmp_path / f"{SEGMENT_PREFIX}{dead}-89abcdef"
    link.symlink_to(kept[0])
    holder = os.open(locked, os.O_RDONLY)
    try:
        fcntl.flock(holder, fcntl.LOCK_SH)
        assert sweep_stale(str(tmp_path)) == [stale.name]
    finally:
        os.close(holder)
    assert not stale.exists()
    assert all(path.exists() for path in [*kept, locked]) and link.is_symlink()
    assert sweep_stale(str(tmp_path)) == [locked.name]  # its holder is gone now
    assert sweep_stale(str(tmp_path / "missing")) == []


def test_the_creator_holds_its_segment_against_a_sweep(monkeypatch: pytest.MonkeyPatch) -> None:
    ring = SharedRing(slot_bytes=4096, slots=2)
    try:
        monkeypatch.setattr(_segments, "_pid_alive", lambda pid: False)  # as seen from another pid namespace
        assert ring.name not in sweep_stale()
        assert ring.name in _ours()
    finally:
        ring.close()


def _unshare_works() -> bool:
    try:
        done = subprocess.run(["unshare", "-m", "true"], capture_output=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return done.returncode == 0


FILL_AND_READ = """
import os, sys
from flirdata import FlirDetection
from flirdata.loader import make_loader

dataset = FlirDetection(sys.argv[1], "train", cache="ram")
fd = os.open("/dev/shm/filler", os.O_CREAT | os.O_WRONLY)  # another program fills /dev/shm
try:
    while True:
        os.write(fd, bytes(1 << 16))
except OSError:
    pass
os.ftruncate(fd, os.fstat(fd).st_size - (1 << 17))  # ... and leaves it a little room
for k in range(len(dataset)):
    dataset[k]
for backend in ("sequential", "threads"):
    with make_loader(dataset, backend=backend, workers=2, batch_size=4) as loader:
        assert sum(len(images) for images, _ in loader) == len(dataset)
print("read", len(dataset), "images")
"""


@pytest.mark.slow
@pytest.mark.timeout(120)
@pytest.mark.skipif(
    not sys.platform.startswith("linux") or shutil.which("unshare") is None or not _unshare_works(),
    reason="needs unshare -m and mount (root) for a private small /dev/shm",
)
def test_dev_shm_filled_after_the_cache_is_made_reads_on(synth_root: Path, tmp_path: Path) -> None:
    script = tmp_path / "fill_and_read.py"
    script.write_text(textwrap.dedent(FILL_AND_READ))
    command = f"mount -t tmpfs -o size=4m tmpfs /dev/shm && exec {sys.executable} -W ignore {script} {synth_root}"
    done = subprocess.run(["unshare", "-m", "sh", "-c", command], capture_output=True, text=True, timeout=110)
    assert done.returncode == 0, (done.returncode, done.stderr[-2000:])  # before: -7 (SIGBUS), "Bus error"
    assert "read 24 images" in done.stdout


FULL_FROM_THE_START = """
import os, sys, warnings
from flirdata import FlirDetection, ShmCapacityError, ShmCapacityWarning
from flirdata.cli import main
from flirdata.loader import make_loader

with open("/dev/shm/filler", "wb") as filler:  # /dev/shm full before flirdata makes anything
    try:
        while True:
            filler.write(bytes(1 << 16))
            filler.flush()
    except OSError:
        pass
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    dataset = FlirDetection(sys.argv[1], "train")
assert [w.category for w in caught] == [ShmCapacityWarning], caught  # before: RuntimeError from torch
dataset.set_epoch(3)
with make_loader(dataset, backend="sequential", batch_size=4) as loader:
    assert sum(len(images) for images, _ in loader) == len(dataset)
for backend in ("threads", "process", "loky", "dataloader"):
    try:
        with make_loader(dataset, backend=backend, workers=2, batch_size=4) as loader:
            list(loader)
    except ShmCapacityError as exc:  # before: OSError [Errno 28], joblib's FallbackToBackend
        assert f"'{backend}' backend: cannot start" in str(exc) and "/dev/shm" in str(exc), exc
    else:
        raise AssertionError(backend + " started")
code = main(["export", sys.argv[1], "--out", sys.argv[2], "--backend", "threads", "--workers", "2", "--no-progress"])
print("export exit", code)
"""


@pytest.mark.slow
@pytest.mark.timeout(120)
@pytest.mark.skipif(
    not sys.platform.startswith("linux") or shutil.which("unshare") is None or not _unshare_works(),
    reason="needs unshare -m and mount (root) for a private small /dev/shm",
)
def test_dev_shm_full_from_the_start_is_a_warning_then_one_error_per_parallel_backend(
    synth_root: Path, tmp_path: Path
) -> None:
    script = tmp_path / "full_from_the_start.py"
    script.write_text(textwrap.dedent(FULL_FROM_THE_START))
    out = tmp_path / "out"
    command = f"mount -t tmpfs -o size=1m tmpfs /dev/shm && exec {sys.executable} {script} {synth_root} {out}"
    done = subprocess.run(["unshare", "-m", "sh", "-c", command], capture_output=True, text=True, timeout=110)
    assert done.returncode == 0, (done.returncode, done.stderr[-2000:])
    assert "export exit 1" in done.stdout
    errors = [line for line in done.stderr.splitlines() if line.startswith("flirdata export: error:")]
    assert len(errors) == 1 and "'threads' backend: cannot start" in errors[0], done.stderr[-2000:]
    assert "Traceback" not in done.stderr


HOLD_A_RING = """
from flirdata.backends._shm import SharedRing
ring = SharedRing(1 << 16, 2)
print(ring.name, flush=True)
input()
"""


@pytest.mark.slow
@pytest.mark.timeout(60)
def test_a_killed_process_group_s_ring_is_swept_by_the_next_ring() -> None:
    command = [sys.executable, "-c", HOLD_A_RING]
    pipes = {"stdin": subprocess.PIPE, "stdout": subprocess.PIPE}
    with subprocess.Popen(command, **pipes, text=True, start_new_session=True) as child:
        assert child.stdout is not None
        name = child.stdout.readline().strip()
        os.killpg(child.pid, signal.SIGKILL)  # the child and its resource tracker, as a job scheduler does
    assert name.startswith(f"{SEGMENT_PREFIX}{child.pid}-") and (Path(SHM_DIR) / name).exists()
    ring = SharedRing(4096, 2)
    ring.close()
    assert not (Path(SHM_DIR) / name).exists()
