"""Safe writes into an output folder: atomic files, and one writer per folder at a time.

Every writer of flirdata (export's images, labels, shards and final files, the COCO writer,
``synth``'s ``coco.json``) goes through ``atomic_file``: write under a hidden temporary name
in the same folder, then ``os.replace`` it into place. The temporary is a new file with a random
name, created exclusively and never through a symlink, so nothing planted in the folder is
written through. ``remove_temporaries`` deletes what a killed writer left behind.
``folder_lock`` keeps a second writer (another ``flirdata export`` into the same folder) out.
Only the standard library: ``flirdata synth`` uses it without torch.
"""

from __future__ import annotations

import contextlib
import errno
import os
import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

__all__ = ["NAME_MAX", "FolderBusyError", "atomic_file", "folder_lock", "remove_temporaries", "write_atomic"]

NAME_MAX = 255  # bytes in one file name on ext4, xfs, btrfs, tmpfs, APFS and NTFS (UTF-16 units there)
_TMP_SUFFIX = ".tmp"
_RANDOM_BYTES = 8  # 16 hex digits: a name nobody can guess, and no two writers pick the same one
_EXCLUSIVE = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)
_TRIES = 100  # names already taken (planted or leftover) before giving up: each is 2**-64 likely by chance


def _temporary(path: Path) -> Path:
    """A hidden (tools that glob the folder never see it), random name next to ``path``.

    The final name is shortened in it when needed, so a temporary is never longer than
    ``NAME_MAX`` bytes when the final name is not.
    """
    tail = f".{secrets.token_hex(_RANDOM_BYTES)}{_TMP_SUFFIX}"
    head = f".{path.name}".encode()[: NAME_MAX - len(tail)].decode(errors="ignore")
    return path.with_name(head + tail)


def _create_temporary(path: Path) -> tuple[int, Path]:
    """Create a new temporary for ``path`` (``O_EXCL | O_NOFOLLOW``): a symlink or file there is never opened."""
    for _ in range(_TRIES):
        tmp = _temporary(path)
        try:
            return os.open(tmp, _EXCLUSIVE, 0o666), tmp  # 0o666 & ~umask, as open() gives
        except FileExistsError:
            continue
    raise OSError(errno.EEXIST, f"no free temporary name after {_TRIES} tries", str(path))


@contextlib.contextmanager
def atomic_file(path: str | Path, mode: str = "wb") -> Iterator[IO[Any]]:
    """A file that appears at ``path`` complete or not at all (kill -9 leaves a hidden ``.tmp``).

    No fsync: this protects against a killed process, not a power cut, and an fsync per
    image would cost more than the encoding. Write errors (disk full) name the final path.
    Text modes write UTF-8. A symlink at ``path`` is replaced, never followed.
    """
    path = Path(path)
    tmp = None
    try:
        fd, tmp = _create_temporary(path)
        with open(fd, mode, encoding=None if "b" in mode else "utf-8") as f:
            yield f
        os.replace(tmp, path)
    except BaseException as exc:
        if tmp is not None:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
        if isinstance(exc, OSError) and exc.errno is not None:
            raise OSError(exc.errno, exc.strerror or str(exc), str(path)) from exc
        raise


def write_atomic(path: str | Path, data: bytes) -> None:
    """Write ``data`` to ``path`` under a temporary name and rename it into place."""
    with atomic_file(path) as f:
        f.write(data)


def remove_temporaries(folder: str | Path) -> None:
    """Delete the temporary files a killed ``atomic_file`` left in ``folder`` (not recursive)."""
    for entry in os.scandir(folder):
        if entry.name.startswith(".") and entry.name.endswith(_TMP_SUFFIX):
            os.unlink(entry.path)


# -- one writer per folder --------------------------------------------------------------------
class FolderBusyError(OSError):
    """Another process holds the lock of a folder (``folder_lock``)."""


def _lock_once(lock: Path) -> int | None:
    """Open and lock ``lock``; ``None`` if the file was replaced or removed meanwhile (try again)."""
    import fcntl  # POSIX only; imported here so that the rest of this module works on Windows

    fd = os.open(lock, os.O_RDWR | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0), 0o666)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise FolderBusyError(errno.EWOULDBLOCK, "held by another process", str(lock)) from None
    # The holder before us unlinks the file, then unlocks: a lock on an unlinked file locks nothing.
    try:
        same = os.path.samestat(os.fstat(fd), os.stat(lock, follow_symlinks=False))
    except FileNotFoundError:
        same = False
    if not same:
        os.close(fd)
        return None
    return fd


@contextlib.contextmanager
def folder_lock(folder: str | Path, name: str) -> Iterator[Path]:
    """Hold an exclusive lock on ``folder`` (created if missing) while the block runs.

    Non-blocking: raises ``FolderBusyError`` at once if another process holds it. The lock is a
    ``flock`` on the hidden file ``folder/name``, released when this process exits however it
    exits (the kernel drops it), and the file is removed on the way out, as is ``folder`` if
    this call created it and it is still empty. Yields the lock file's path.
    """
    folder = Path(folder)
    created = not folder.exists()
    folder.mkdir(parents=True, exist_ok=True)
    lock = folder / name
    fd = None
    try:
        while fd is None:
            fd = _lock_once(lock)
        yield lock
    finally:
        if fd is not None:
            with contextlib.suppress(OSError):
                os.unlink(lock)  # before unlocking: see _lock_once
            os.close(fd)
        if created:
            with contextlib.suppress(OSError):
                folder.rmdir()  # only if empty
