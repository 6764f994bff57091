"""The shared-memory segments flirdata creates (the prefetch ring, the frame cache): made, reserved, swept, mapped.

The primitives both the ring (``flirdata.backends._shm``) and the frame cache (``flirdata.cache``)
stand on, importing nothing of flirdata: the dataset's cache needs no backend.

A segment is ``/dev/shm/flirdata-<pid>-<random>``, so a leaked one names its creator.
``create_segment`` makes one and

* reserves its pages (``posix_fallocate``): tmpfs allocates a page when it is first written, so
  an unreserved segment in a /dev/shm that another program fills later kills whoever writes
  to it with SIGBUS (the main process included, with no message). Reserved, a full /dev/shm is
  ``ShmFullError`` at creation, naming the bytes needed and free;
* holds a shared ``flock`` on it for the creator's life: the kernel drops the lock when the
  process dies, however it dies;
* first removes the segments of dead creators (``sweep_stale``). A SIGKILL of the process group
  (``kill -9 -PGID``, a job scheduler) kills the resource tracker too, which would otherwise
  unlink them. A segment goes only if its pid is not a live process here *and* nobody holds
  its lock: a reused pid keeps it (until that process is gone too), and so does a creator
  alive in another pid namespace sharing /dev/shm (``docker --ipc=host``), whose pid means
  nothing here.

Using one: ``attach`` (a worker's handle by name, kept for the worker's life), ``array_over`` (an array
over a segment that keeps its mapping alive), ``unmap`` (close a handle even while arrays view it),
``aligned`` (sizes rounded to cache lines).
"""

from __future__ import annotations

import contextlib
import errno
import math
import os
import re
import secrets
import shutil
from multiprocessing.shared_memory import SharedMemory

import numpy as np

try:
    import fcntl
except ImportError:  # not POSIX: no /dev/shm to sweep either
    fcntl = None  # type: ignore[assignment]

__all__ = [
    "SEGMENT_PREFIX",
    "SHM_DIR",
    "ShmFullError",
    "aligned",
    "attach",
    "close_attached",
    "create_segment",
    "new_segment_name",
    "shm_free_bytes",
    "sweep_stale",
    "unmap",
    "array_over",
]

SEGMENT_PREFIX = "flirdata-"  # segment names: flirdata-<pid>-<random>, so leaks are attributable
SHM_DIR = "/dev/shm"
_NAME = re.compile(re.escape(SEGMENT_PREFIX) + r"([1-9][0-9]*)-[0-9a-f]{8}")
# posix_fallocate errors meaning "this file system cannot reserve", not "no space": go on unreserved.
_CANNOT_RESERVE = {errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL}
_ALIGN = 64  # slots and cached frames start on a cache line
_ATTACHED: dict[str, SharedMemory] = {}  # this process's handles on segments it did not create


class ShmFullError(OSError):
    """/dev/shm cannot hold a new segment: the message names the bytes needed and free."""


def shm_free_bytes() -> int | None:
    """Free bytes of /dev/shm, or None where it does not exist (not Linux)."""
    try:
        return shutil.disk_usage(SHM_DIR).free
    except OSError:
        return None


def new_segment_name() -> str:
    """A fresh segment name, ``flirdata-<pid>-<random>``: a leaked segment names its creator."""
    return f"{SEGMENT_PREFIX}{os.getpid()}-{secrets.token_hex(4)}"


def create_segment(nbytes: int) -> SharedMemory:
    """A new segment of ``nbytes``, its pages reserved and its creator's lock held (see the module doc).

    Raises:
        ShmFullError: /dev/shm cannot hold ``nbytes`` (nothing is left behind).
        OSError: no /dev/shm, no permission, ...
    """
    sweep_stale()
    segment = SharedMemory(new_segment_name(), create=True, size=nbytes)
    fd = segment._fd  # type: ignore[attr-defined]
    try:
        if fcntl is not None:
            with contextlib.suppress(OSError):
                fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        _reserve(fd, nbytes)
    except BaseException:
        segment.close()
        segment.unlink()
        raise
    return segment


def _reserve(fd: int, nbytes: int) -> None:
    """Allocate ``nbytes`` of the file ``fd`` now, or ShmFullError; a no-op where it cannot be done."""
    if not hasattr(os, "posix_fallocate"):  # macOS: no /dev/shm, nothing lazily allocated to reserve
        return
    try:
        os.posix_fallocate(fd, 0, nbytes)
    except OSError as exc:
        if exc.errno in _CANNOT_RESERVE:
            return
        free = shm_free_bytes()
        free_text = "unknown" if free is None else f"{free / 2**20:.1f} MiB"
        raise ShmFullError(
            exc.errno,
            f"{SHM_DIR} cannot hold a shared-memory segment of {nbytes / 2**20:.1f} MiB "
            f"({free_text} free; {exc.strerror})",
        ) from exc


def sweep_stale(directory: str = SHM_DIR) -> list[str]:
    """Remove the ``flirdata-<pid>-*`` segments in ``directory`` whose creator is dead; their names.

    Quiet: a segment that cannot be read or removed (another user's, gone meanwhile) is left.
    """
    if os.name != "posix" or fcntl is None:
        return []
    try:
        names = os.listdir(directory)
    except OSError:
        return []
    removed = []
    for name in names:
        match = _NAME.fullmatch(name)
        if match is None or _pid_alive(int(match[1])):
            continue
        path = os.path.join(directory, name)
        if _unlocked(path):
            with contextlib.suppress(OSError):
                os.unlink(path)
                removed.append(name)
    return removed


def _pid_alive(pid: int) -> bool:
    """Whether ``pid`` is a process here (a zombie, or another user's, counts as alive)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # PermissionError: alive, someone else's
        return True
    return True


def _unlocked(path: str) -> bool:
    """Whether nobody holds the creator's lock on the file at ``path`` (a symlink or unreadable: held)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        return False
    finally:
        os.close(fd)  # drops our lock too
    return True


def aligned(n: int) -> int:
    """``n`` bytes rounded up to a whole number of cache lines."""
    return -(-n // _ALIGN) * _ALIGN


def attach(name: str) -> SharedMemory:
    """This process's handle on segment ``name``, opened once and kept for the process's life.

    The creator owns the segment (creates, registers and unlinks it). Python < 3.13 also
    registers an attachment with the resource tracker; our workers share the creator's
    tracker (spawn, forkserver and loky all pass it on), where that is a no-op.
    """
    segment = _ATTACHED.get(name)
    if segment is None:
        try:
            segment = SharedMemory(name=name, track=False)  # type: ignore[call-arg]
        except TypeError:  # Python < 3.13
            segment = SharedMemory(name=name)
        _ATTACHED[name] = segment
    return segment


def close_attached() -> None:
    """Close this process's handles on the segments ``attach`` opened.

    A worker keeps them for its life; a process that packs batches itself (a test, a
    benchmark of the transport) calls this before the creator closes the ring.
    """
    for segment in _ATTACHED.values():
        unmap(segment)
    _ATTACHED.clear()


def unmap(segment: SharedMemory) -> None:
    """Close this process's handle on ``segment``, even while arrays still view its mapping."""
    try:
        segment.close()
    except BufferError:
        # Batches or frames the caller still holds are views of the mapping: leave it to them
        # (it is unmapped when the last one is garbage) and let go of the rest now.
        segment._buf = segment._mmap = None  # type: ignore[attr-defined]
        fd, segment._fd = getattr(segment, "_fd", -1), -1  # type: ignore[attr-defined]
        if fd >= 0:
            os.close(fd)


def array_over(buffer: memoryview, shape: tuple[int, ...], dtype: np.dtype, offset: int) -> np.ndarray:
    """An array over ``buffer`` that holds a buffer export on the mapping, so it cannot be unmapped under it.

    Not ``np.ndarray(buffer=...)``: that keeps a reference but no export, so closing the segment
    unmaps memory the array still points to (a segfault on the next read).
    """
    return np.frombuffer(buffer, dtype, count=math.prod(shape), offset=offset).reshape(shape)
