"""Atomic file writes: a file appears at its path complete or not at all.

Every writer of flirdata (export's images, labels, shards and final files, the COCO writer,
``synth``'s ``coco.json``) goes through ``atomic_file``: write under a hidden temporary name
in the same folder, then ``os.replace`` it into place. ``remove_temporaries`` deletes what a
killed writer left behind. Only the standard library: ``flirdata synth`` uses it without torch.
"""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

__all__ = ["atomic_file", "remove_temporaries", "write_atomic"]

_TMP_SUFFIX = ".tmp"


def _temporary(path: Path) -> Path:
    # Hidden (tools that glob the folder never see it) and unique per process and thread.
    return path.with_name(f".{path.name}.{os.getpid()}-{threading.get_ident()}{_TMP_SUFFIX}")


@contextlib.contextmanager
def atomic_file(path: str | Path, mode: str = "wb") -> Iterator[IO[Any]]:
    """A file that appears at ``path`` complete or not at all (kill -9 leaves a hidden ``.tmp``).

    No fsync: this protects against a killed process, not a power cut, and an fsync per
    image would cost more than the encoding. Write errors (disk full) name the final path.
    Text modes write UTF-8.
    """
    path = Path(path)
    tmp = _temporary(path)
    try:
        with open(tmp, mode, encoding=None if "b" in mode else "utf-8") as f:
            yield f
        os.replace(tmp, path)
    except BaseException as exc:
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
