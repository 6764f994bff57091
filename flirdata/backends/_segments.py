"""The shared-memory segments flirdata creates (the prefetch ring, the frame cache): made, reserved, swept.

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
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import secrets
import shutil
from multiprocessing.shared_memory import SharedMemory

try:
    import fcntl
except ImportError:  # not POSIX: no /dev/shm to sweep either
    fcntl = None  # type: ignore[assignment]

__all__ = [
    "SEGMENT_PREFIX",
    "SHM_DIR",
    "ShmFullError",
    "create_segment",
    "new_segment_name",
    "shm_free_bytes",
    "sweep_stale",
]

SEGMENT_PREFIX = "flirdata-"  # segment names: flirdata-<pid>-<random>, so leaks are attributable
SHM_DIR = "/dev/shm"
_NAME = re.compile(re.escape(SEGMENT_PREFIX) + r"([1-9][0-9]*)-[0-9a-f]{8}")
# posix_fallocate errors meaning "this file system cannot reserve", not "no space": go on unreserved.
_CANNOT_RESERVE = {errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL}


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
