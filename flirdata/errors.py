"""Exceptions raised at the package's boundaries, the warning about a worker count, and ``add_note``.

Every error a user can cause (bad data, bad argument) derives from ``FlirdataError`` so the CLI
can turn it into one clear line instead of a traceback. ``add_note`` is how a layer adds what it
knows (the sample, the file, the retries) to an error raised below it, on every Python we support.
"""

from __future__ import annotations

__all__ = [
    "FlirdataError",
    "DataError",
    "ImageError",
    "AnnotationError",
    "MissingExtraError",
    "WorkerError",
    "ShmCapacityError",
    "LoaderTimeoutError",
    "Terminated",
    "ClusterConnectionError",
    "WorkerCountWarning",
    "ShmCapacityWarning",
    "add_note",
]


def add_note(exc: BaseException, note: str) -> None:
    """``exc.add_note(note)``; Python 3.10 lacks it, so set ``__notes__`` as 3.11 would."""
    if hasattr(exc, "add_note"):
        exc.add_note(note)
    else:
        exc.__notes__ = [*getattr(exc, "__notes__", ()), note]  # type: ignore[attr-defined]


class FlirdataError(Exception):
    """Base class of every error flirdata raises on purpose."""


class DataError(FlirdataError, ValueError):
    """A dataset folder or file is missing or malformed."""


class ImageError(DataError):
    """An image file is missing, empty, truncated or cannot be decoded."""


class AnnotationError(DataError):
    """A ``coco.json`` is not valid JSON or does not follow the COCO layout."""


class MissingExtraError(FlirdataError, ImportError):
    """An optional dependency is not installed; the message names the command that installs it."""

    def __init__(self, what: str, extra: str) -> None:
        super().__init__(f"{what} needs the {extra!r} extra, which is not installed: pip install 'flirdata[{extra}]'")
        self.what = what
        self.extra = extra

    def __reduce__(self) -> tuple[type, tuple[str, str]]:
        return type(self), (self.what, self.extra)


class WorkerError(FlirdataError, RuntimeError):
    """A loader's workers failed as a whole (a worker died, or none answered in time).

    The loader has closed its pool; iterating it again starts a new one.
    """


class ShmCapacityError(WorkerError):
    """A backend cannot start: its pool needs a semaphore in /dev/shm, which is full (or missing).

    The message names the backend, the system's error and what to do.
    """


class LoaderTimeoutError(WorkerError):
    """No batch arrived within the loader's ``timeout`` (a stopped or stuck worker).

    ``starting=True``: a worker did not even start (or deliver its first batch) within ``timeout``,
    its start allowance (a machine too busy to start a process, Ray actors waiting for a free CPU
    of the cluster, a node slow to start one); see ``flirdata.backends._waits``.
    """

    def __init__(self, backend: str, timeout: float, starting: bool = False) -> None:
        if starting:
            what = (
                f"a worker did not start within {timeout:g} s, its start-up allowance (a machine too busy to "
                "start it, no free CPU in the cluster, or a node slow to start one)"
            )
        else:
            what = (
                f"no batch arrived within timeout={timeout:g} s; a worker is stuck (stopped, or blocked on a slow read)"
            )
        super().__init__(
            f"flirdata {backend!r} backend: {what}. Its pool was closed; iterating again starts a new one."
        )
        self.backend = backend
        self.timeout = timeout
        self.starting = starting

    def __reduce__(self) -> tuple[type, tuple[str, float, bool]]:
        return type(self), (self.backend, self.timeout, self.starting)


class Terminated(KeyboardInterrupt):
    """SIGTERM (``kill``, ``timeout``, Slurm, ``docker stop``) received by a ``flirdata`` command.

    A ``KeyboardInterrupt``, so that it unwinds every loop and backend as Ctrl-C does (workers
    stopped, shared memory freed); ``flirdata.cli.run_translated`` raises it and reports it.
    """


class ClusterConnectionError(FlirdataError, ConnectionError):
    """A backend's cluster (Ray's ``address``) cannot be reached: the message names the address and what to check."""


class WorkerCountWarning(UserWarning):
    """More workers than cores: they only add memory and start-up time."""


class ShmCapacityWarning(UserWarning):
    """/dev/shm cannot hold what flirdata would share there: the prefetch ring (batches are then
    pickled through a pipe) or a dataset's epoch (then kept in the process that made it)."""
