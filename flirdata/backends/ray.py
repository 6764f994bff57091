"""The "ray" backend: ``workers`` Ray actors (one CPU each) on this machine or a Ray cluster.

Ray is an optional extra (``pip install 'flirdata[ray]'``), imported only when this backend
opens; importing this module does not import it. The path of one task::

    (at start) actor.ready([fn ref])              # each actor fetches fn from the object store once
    bounded_map (driver) --submit--> actor k = task number % workers  (round robin)
        actor.run([fn ref], task[, image bytes])
    <--receive-- ray.get(ready of k, start allowance), once per actor; then
                 ray.get(result ref, timeout)     # a Delivery, through Ray's object store
        Delivery.unpack()                         # images copied out of the store, targets unpickled

``timeout`` is a batch's wait once its actor has started; an actor's start (a process importing
torch; on a cluster, maybe waiting for a free CPU) has the larger of ``timeout`` and ``START_S``
(60 s; ``_waits``, as on every backend), and
checking that a cluster's address answers the larger of ``timeout`` and ``CONNECT_S`` (15 s). (An
actor that replaces a lost one starts within the wait of the batch it re-runs: the driver
cannot tell that start from the batch's work.)

Faults: a batch is a pure function of its task, so a lost actor (killed, its node gone) is
replaced by Ray and its tasks re-run on the new one (Ray's ``max_restarts`` and
``max_task_retries``, both ``retries``); the epoch ends with the same bytes. Past that budget,
``WorkerCrashError``. Where Ray connects (or what it starts and stops) is ``_ray_session``'s.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import re
import sys
import warnings
import weakref
from collections import deque
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from flirdata._validate import check_int
from flirdata.backends._ray_actor import RayWorker, TaskImages
from flirdata.backends._ray_address import CONNECT_S
from flirdata.backends._ray_session import RaySession
from flirdata.backends._waits import start_allowance
from flirdata.backends._wire import Delivery, RemoteTraceback
from flirdata.backends._worker import THREAD_ENV
from flirdata.backends.protocol import BackendKind, TaskFunction, WorkerCrashError
from flirdata.errors import LoaderTimeoutError, WorkerCountWarning, WorkerError, add_note
from flirdata.mapping import bounded_map

__all__ = ["DEFAULT_RETRIES", "KIND", "RayBackend", "RayOptions", "make_ray_backend", "may_run_elsewhere"]

# Replacements of each actor, and re-runs of each task, after a death (Ray's max_restarts and
# max_task_retries): enough for a node lost now and then; a worker that dies at every task
# (a sample that crashes native code) still fails within a few batches.
DEFAULT_RETRIES = 3
_ANSI_COLOUR = re.compile(r"\x1b\[[0-9;]*m")  # Ray colours the task name in its error text


@dataclass(frozen=True)
class RayOptions:
    """The ``backend_options`` of the "ray" backend, validated.

    Attributes:
        address: the Ray cluster to connect to ("HOST:PORT", "ray://HOST:PORT", "auto"); None
            (default) takes ``RAY_ADDRESS``, else starts a local instance for this backend. A
            cluster that does not answer within the larger of ``timeout`` and ``CONNECT_S`` is
            ``ClusterConnectionError``.
        ship_images: the driver reads each task's image files and sends their bytes with the
            task, for actors on nodes that cannot read the dataset root (small clusters).
        retries: how often each actor may be replaced, and each task re-run, after a worker
            dies; 0 fails at the first death.
    """

    address: str | None = None
    ship_images: bool = False
    retries: int = DEFAULT_RETRIES

    def __post_init__(self) -> None:
        if self.address is not None and not (isinstance(self.address, str) and self.address):
            raise ValueError(f"ray backend option address must be a non-empty string or None, got {self.address!r}")
        if not isinstance(self.ship_images, bool):
            raise ValueError(f"ray backend option ship_images must be True or False, got {self.ship_images!r}")
        object.__setattr__(self, "retries", check_int("ray backend option retries", self.retries, 0))  # frozen


@lru_cache(maxsize=1)
def _remote_worker(ray: Any) -> Any:
    """``RayWorker`` as a Ray actor class, made once per process."""
    return ray.remote(RayWorker)


class _Resources:
    """What ``close`` releases, reachable from a finalizer without the backend itself."""

    def __init__(self, session: RaySession) -> None:
        self.session = session
        self.actors: list[Any] | None = None
        self.fn_box: list[Any] | None = None

    def kill_actors(self) -> None:
        actors, self.actors = self.actors, None
        ray = self.session.ray
        if not ray.is_initialized():  # shut down already (by its owner, or at exit): its actors with it
            return  # (and any call now would start a new instance: Ray initialises on first use)
        for actor in actors or ():
            with contextlib.suppress(Exception):
                ray.kill(actor, no_restart=True)

    def close(self) -> None:
        try:
            self.kill_actors()
            self.fn_box = None
        finally:
            self.session.close()


def _warn_if_too_few_cpus(ray: Any, workers: int) -> None:
    """Warn when the cluster has fewer CPUs than one-CPU actors asked for: the rest would wait unseen."""
    total = int(ray.cluster_resources().get("CPU", 0))
    if total < workers:
        warnings.warn(
            f"flirdata 'ray' backend: workers={workers} actors of one CPU each, but the Ray cluster has "
            f"{total} CPUs; the actors beyond them wait until the cluster grows (an autoscaling cluster) "
            "and their batches with them: lower workers, or set timeout= to fail instead of waiting",
            WorkerCountWarning,
            stacklevel=4,
        )


class RayBackend:
    """``workers`` Ray actors, ``workers * prefetch`` tasks in flight, results in task order."""

    name = "ray"

    def __init__(
        self,
        fn: TaskFunction,
        workers: int,
        prefetch: int,
        timeout: float | None,
        options: RayOptions,
    ) -> None:
        self.depth = workers * prefetch
        self.timeout = timeout
        self.start_timeout = start_allowance(timeout)  # an actor's start; then timeout per batch
        self.options = options
        self.shipped_bytes = 0  # image bytes the driver sent with tasks (ship_images)
        self._images = TaskImages.of(fn) if options.ship_images else None  # refuse before starting Ray
        session = RaySession.open(options.address, workers, max(timeout or 0.0, CONNECT_S))
        self._ray = session.ray
        self._res = _Resources(session)
        self._finalizer = weakref.finalize(self, self._res.close)
        self._turn = itertools.count()
        self._starting: dict[int, Any] = {}  # actor number -> ref of its ready(), until it answered
        try:
            _warn_if_too_few_cpus(self._ray, workers)
            self._res.fn_box = [self._ray.put(fn)]  # nested: each actor fetches it itself, in ready()
            retries = options.retries
            actor_class = _remote_worker(self._ray).options(
                num_cpus=1,
                max_restarts=retries,
                max_task_retries=retries,
                runtime_env={"env_vars": THREAD_ENV},  # in the environment before the actor imports numpy
                scheduling_strategy="SPREAD",  # across the nodes of a cluster
            )
            self._res.actors = [actor_class.remote(list(sys.path)) for _ in range(workers)]
            self._starting = {k: actor.ready.remote(self._res.fn_box) for k, actor in enumerate(self._res.actors)}
        except BaseException:
            self.close()  # leave the session (and a private instance) at once, not at garbage collection
            raise

    def imap(self, tasks: Sequence[Any]) -> Iterator[Any]:
        yield from bounded_map(self._submit, tasks, self.depth, receive=self._receive, abandon=self._abandon)

    def locate_workers(self) -> list[tuple[str, int]]:
        """``(Ray node id, pid)`` of each actor, in actor order (waits for them to start)."""
        return self._ray.get([actor.where.remote() for actor in self._actors()], timeout=self.start_timeout)

    def close(self) -> None:
        """Stop the actors, and Ray itself if this backend's session started it (idempotent)."""
        self._finalizer()

    def _actors(self) -> list[Any]:
        if self._res.actors is None:
            raise RuntimeError(f"flirdata {self.name!r} backend is closed")
        return self._res.actors

    def _submit(self, task: Any) -> tuple[int, Any]:
        actors = self._actors()
        k = next(self._turn) % len(actors)
        if self._images is None:
            return k, actors[k].run.remote(self._res.fn_box, task)
        images = self._images(task)
        self.shipped_bytes += sum(map(len, images.values()))
        return k, actors[k].run.remote(self._res.fn_box, task, images)

    def _receive(self, pending: tuple[int, Any]) -> Any:
        k, ref = pending
        exceptions = self._ray.exceptions
        try:
            self._wait_started(k)
            result = self._ray.get(ref, timeout=self.timeout)
        except exceptions.RayTaskError as exc:  # the task function raised: its own error, as it was
            cause = exc.cause
            if not isinstance(cause, Exception):
                raise
            raise cause from RemoteTraceback(_ANSI_COLOUR.sub("", str(exc)))  # Ray's header and the traceback
        except exceptions.GetTimeoutError as exc:
            self._res.kill_actors()  # a stuck actor would hold its queue for ever
            raise LoaderTimeoutError(self.name, self.timeout or 0.0) from exc
        except exceptions.RayError as exc:  # an actor lost past the retries, its node, its objects
            raise self._failure(exc) from exc
        return result.unpack() if isinstance(result, Delivery) else result

    def _wait_started(self, k: int) -> None:
        """Wait (at most ``start_timeout``) for actor ``k`` to start, once: batches' timeouts count from then."""
        ready = self._starting.get(k)
        if ready is None:
            return
        try:
            self._ray.get(ready, timeout=self.start_timeout)
        except self._ray.exceptions.GetTimeoutError as exc:
            self._res.kill_actors()
            raise LoaderTimeoutError(self.name, self.start_timeout or 0.0, starting=True) from exc
        del self._starting[k]

    def _failure(self, exc: Exception) -> WorkerError:
        """The error of a lost actor: could not start, or died more often than ``retries`` allows."""
        cluster = self._res.session.cluster  # a joined "auto" may be another program's private instance
        if getattr(exc, "actor_init_failed", False):
            lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
            return WorkerError(
                f"flirdata {self.name!r} backend: a Ray actor could not start {cluster + ' ' if cluster else ''}"
                f"({lines[-1] if lines else exc!r}); "
                "every node needs flirdata (the same version) and the dataset's Python dependencies"
            )
        pids = [int(pid) for pid in re.findall(r"\bpid: (\d+)", str(exc))]
        crash = WorkerCrashError(self.name, pids, where=cluster)
        add_note(
            crash,
            f"flirdata: Ray replaces a lost actor and re-runs its tasks up to retries={self.options.retries} "
            "times (backend_options={'retries': N})",
        )
        return crash

    def _abandon(self, window: deque[tuple[int, Any]]) -> None:
        """Cancel the tasks not started (a running actor task cannot be interrupted: it finishes)."""
        if not self._ray.is_initialized():
            return
        for _, ref in window:
            with contextlib.suppress(Exception):  # finished already, or Ray shut down
                self._ray.cancel(ref)


def may_run_elsewhere(address: str | None = None, **_: Any) -> bool:
    """Whether the actors may run on other machines: an address, ``RAY_ADDRESS``, or Ray already up here.

    (A ``ray.init`` of the program's own may have joined a cluster; only the private local
    instance is known to be this machine alone.)
    """
    ray = sys.modules.get("ray")  # never imported for the question
    initialised = ray is not None and ray.is_initialized()
    return address is not None or bool(os.environ.get("RAY_ADDRESS")) or initialised


def make_ray_backend(
    fn: TaskFunction,
    workers: int,
    prefetch: int,
    timeout: float | None = None,
    *,
    address: str | None = None,
    ship_images: bool = False,
    retries: int = DEFAULT_RETRIES,
) -> RayBackend:
    """Ray actors running ``fn``; the keyword arguments are the backend's options (see ``RayOptions``).

    Raises:
        MissingExtraError: Ray is not installed.
        ValueError: an invalid option value.
    """
    return RayBackend(fn, workers, prefetch, timeout, RayOptions(address, ship_images, retries))


# Ray is an optional extra; its actors are processes, here or on the cluster's nodes.
KIND = BackendKind(parallel=True, uses_threads=False, runs_elsewhere=may_run_elsewhere, extra="ray")
