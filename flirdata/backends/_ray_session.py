"""The Ray connection of the "ray" backend: import Ray on first use, connect or start, stop what we started.

Three cases, decided when a backend opens:

* Ray is already initialised in this process (the user called ``ray.init``): use it as it is
  and never shut it down;
* an address is given (the ``address`` option, else ``RAY_ADDRESS``): connect to that cluster,
  and disconnect when the last backend using the connection closes. Whether it answers is
  checked first, within a deadline (``_ray_address``): ``ray.init`` alone may retry for ever;
* otherwise start a private local instance (no dashboard, quiet logs, one CPU per worker or
  per core, whichever is more) and stop it, with every process it started, when the last
  backend using it closes.

Backends that share a connection flirdata made count themselves in, so closing one loader never
pulls Ray from under another. On the private local instance they also count the CPUs their
actors hold: a backend that would need more than are left fails at once with what to do,
where Ray would leave its actors waiting for CPUs for ever.
"""

from __future__ import annotations

import contextlib
import gc
import logging
import os
import signal
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from types import ModuleType

from flirdata._cores import usable_cores as _usable_cores  # a name of this module: tests give it other cores
from flirdata.backends._ray_address import CONNECT_S, check_reachable, connection_failed
from flirdata.errors import MissingExtraError

__all__ = ["RaySession", "import_ray"]

_QUIET = logging.ERROR  # Ray's driver logs "Started a local Ray instance" and more at INFO


@dataclass
class _Connection:
    """The connection flirdata made (one per process at a time), and who uses it."""

    number: int = 0  # counts connections made: a session only leaves its own
    users: int = 0  # open sessions on it; 0: none, or Ray is the user's own
    cpus: int | None = None  # CPUs of the private local instance (None: a cluster)
    held: int = 0  # CPUs the open sessions' actors hold on it
    address: str | None = None  # the address it was made with (None: the private local instance)
    job: tuple[str, str] | None = None  # the connection's cluster and job: a ray.init of the user's has others
    cluster: str = ""  # which cluster, for errors: "on the Ray cluster at ..." ("": the private local instance)


# Re-entrant: ray.init and ray.shutdown run under it and may collect garbage, whose finalizers
# (an unclosed loader's session) call close() on this same thread.
_LOCK = threading.RLock()
_NOW = _Connection()


def import_ray() -> ModuleType:
    """The ``ray`` package, or ``MissingExtraError`` naming the command that installs it."""
    try:
        import ray
    except ImportError as exc:
        raise MissingExtraError("flirdata's 'ray' backend", "ray") from exc
    return ray


@contextlib.contextmanager
def _keeping_sigterm_handler() -> Iterator[None]:
    """Put back a SIGTERM handler set in Python (the ``flirdata`` CLI's) that starting Ray replaced.

    ``ray.init`` installs its own, and its C++ core one then prints a stack and aborts the
    driver, so the backend never closes. A program that set no handler keeps Ray's.
    """
    handler = signal.getsignal(signal.SIGTERM)
    try:
        yield
    finally:
        if callable(handler) and threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGTERM, handler)


def _connect(ray: ModuleType, address: str | None, cpus: int, deadline: float) -> int | None:
    """Connect, or start the private local instance; its CPUs (None for a cluster).

    A cluster that does not answer within ``deadline`` s is ``ClusterConnectionError``.
    """
    given = address or os.environ.get("RAY_ADDRESS")
    if not given:
        local_cpus = max(cpus, _usable_cores())
        # "local": a new instance even if `ray start` left one running on this machine.
        ray.init(address="local", num_cpus=local_cpus, include_dashboard=False, logging_level=_QUIET)
        # Starting a head node leaves a reference cycle (Ray 2.60's start_api_server keeps the
        # ImportError of its optional dashboard packages, whose traceback holds that frame), and
        # its frames' callers are ours: the loader's frames, with the generator of the epoch,
        # would stay alive until the next collection and the loader would think it still runs.
        gc.collect()
        return local_cpus
    check_reachable(ray, given, deadline)
    try:
        ray.init(address=address, logging_level=_QUIET)  # None: ray.init reads RAY_ADDRESS
    except ConnectionError as exc:  # answered, then failed: a 67-line traceback otherwise
        raise connection_failed(given, exc) from exc
    return None


def _cluster(ray: ModuleType, address: str | None) -> str:
    """Which cluster this process joined, as errors name it: a joined ``"auto"`` may be another program's."""
    try:
        gcs = ray.get_runtime_context().gcs_address
    except Exception:  # a client connection that does not say
        gcs = None
    node = getattr(getattr(getattr(ray, "_private", None), "worker", None), "_global_node", None)
    try:
        session = node.get_session_dir_path() if node is not None else None
    except Exception:  # another Ray version
        session = None
    named = f"on the Ray cluster at {gcs or address}"
    named += f" (session {session})" if session else ""
    return f"{named}, joined with address={address!r}" if address else named


def _job(ray: ModuleType) -> tuple[str, str] | None:
    """This process's Ray connection: the cluster's GCS address and the job id each ``ray.init`` gets there."""
    try:
        context = ray.get_runtime_context()
        return context.gcs_address, str(context.get_job_id())
    except Exception:  # a client connection that does not say
        return None


def _check_same_cluster(ray: ModuleType, address: str | None, connected_with: str | None) -> None:
    """Refuse an ``address`` other than the cluster this process is already connected to.

    The same cluster is named by its GCS address, or by the address flirdata connected with
    (a ``ray://`` address, a host name where Ray reports an IP).
    """
    if address in (None, "auto", connected_with):
        return
    current = ray.get_runtime_context().gcs_address
    if address != current:
        raise ValueError(
            f"flirdata 'ray' backend: address={address!r}, but this process is already connected to "
            f"Ray at {current!r}; leave address out to use that connection, or call ray.shutdown() first"
        )


def _check_cpus_left(cpus: int) -> None:
    """Refuse ``cpus`` more actors on the private local instance if its CPUs are held."""
    if _NOW.cpus is not None and _NOW.held + cpus > _NOW.cpus:
        raise ValueError(
            f"flirdata 'ray' backend: workers={cpus}, but the local Ray instance flirdata started has "
            f"{_NOW.cpus} CPUs and open ray loaders hold {_NOW.held}; close them first, or call "
            "ray.init(num_cpus=N) before making the loaders (flirdata then uses that instance)"
        )


class RaySession:
    """This backend's use of the Ray connection; ``close()`` ends the connection if flirdata made it."""

    def __init__(self, ray: ModuleType, owned: bool, cpus: int = 0, cluster: str = "") -> None:
        self.ray = ray
        self.owned = owned  # flirdata made the connection (and ends it with its last user)
        self.cpus = cpus  # held on the private local instance
        self.cluster = cluster  # "on the Ray cluster at ..." for errors; "" on the private local instance
        self._connection = _NOW.number
        self._open = True

    @classmethod
    def open(cls, address: str | None, cpus: int, deadline: float = CONNECT_S) -> RaySession:
        """Use, connect to or start Ray (see the module docstring) for ``cpus`` one-CPU actors.

        Raises:
            MissingExtraError: Ray is not installed.
            ClusterConnectionError: the cluster at the address did not answer within ``deadline`` s.
            ValueError: ``address`` is not the cluster this process is connected to, or the
                private local instance has fewer than ``cpus`` CPUs left.
        """
        ray = import_ray()
        with _LOCK:
            if ray.is_initialized():
                ours = _NOW.users > 0 and _job(ray) == _NOW.job
                _check_same_cluster(ray, address, _NOW.address if ours else None)
                if not ours:  # the user's own ray.init (even after shutting ours down): theirs to end
                    return cls(ray, owned=False, cluster=_cluster(ray, None))
                _check_cpus_left(cpus)
            else:  # (a ray.shutdown() by someone else ended any connection we counted)
                # A new connection number first: sessions of the old one, closed by a collection
                # during the start, must not count against (or shut down) the new instance.
                _NOW.number, _NOW.users, _NOW.cpus, _NOW.held = _NOW.number + 1, 0, None, 0
                with _keeping_sigterm_handler():
                    _NOW.cpus = _connect(ray, address, cpus, deadline)
                _NOW.address = address or os.environ.get("RAY_ADDRESS")
                _NOW.job = _job(ray)
                _NOW.cluster = "" if _NOW.cpus is not None else _cluster(ray, _NOW.address)
            _NOW.users += 1
            _NOW.held += cpus
            return cls(ray, owned=True, cpus=cpus, cluster=_NOW.cluster)

    def close(self) -> None:
        """Leave the connection; the last session on a connection flirdata made ends it (idempotent)."""
        with _LOCK:
            if not self._open:
                return
            self._open = False
            if not self.owned or self._connection != _NOW.number:
                return
            _NOW.users -= 1
            _NOW.held -= self.cpus
            if _NOW.users == 0 and self.ray.is_initialized() and _job(self.ray) == _NOW.job:
                self.ray.shutdown()  # a local instance stops its processes; a cluster is only left
