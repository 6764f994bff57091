"""Starting worker processes from any script: guarded or not, a file, ``-c``, stdin or a notebook.

"forkserver" and "spawn" children re-run the parent's ``__main__`` (as ``__mp_main__``) so that
objects defined there can be unpickled. That breaks on the paths users take first:

* a script without ``if __name__ == "__main__":`` runs its loader again inside every worker,
  which dies while bootstrapping;
* ``python - <script`` names its main ``<stdin>``, a file the child cannot find;
* ``python -c`` and notebooks have no main file at all, so nothing defined there reaches a child.

flirdata's workers only need what the task function pickles. When nothing in it comes from
``__main__``, workers are started with ``__main__`` hidden from multiprocessing, so they
never re-run it (and start faster). When something does (a user's collate function or
transform class defined in the script), the workers need ``__main__``: if re-running it
cannot work, the backend fails before starting any worker, with one line saying what to do.
"""

from __future__ import annotations

import ast
import contextlib
import os
import pickle
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from types import FrameType, ModuleType
from typing import Any

from flirdata.errors import FlirdataError

__all__ = ["CollatePicklingError", "MainModuleError", "WorkerStart", "plan_worker_start", "main_names_in"]

_MAIN_LOCK = threading.Lock()


class MainModuleError(FlirdataError, RuntimeError):
    """Worker processes need something defined in ``__main__``, and cannot get it there."""


class CollatePicklingError(FlirdataError, TypeError):
    """The collate function cannot be pickled to reach worker processes (a lambda, a local function)."""


class _Discard:
    """A file that forgets what is written to it: the scan needs the traversal, not the bytes."""

    def write(self, data: bytes) -> int:
        return len(data)


def _out_of_band(_: pickle.PickleBuffer) -> bool:
    return False  # large buffers (numpy arrays) are not copied


class _MainFinder(pickle.Pickler):
    """A pickler that only records the classes and functions it meets from ``__main__``."""

    def __init__(self) -> None:
        super().__init__(_Discard(), protocol=5, buffer_callback=_out_of_band)
        self.names: set[str] = set()

    def reducer_override(self, obj: Any) -> Any:
        if (isinstance(obj, type) or callable(obj)) and getattr(obj, "__module__", None) == "__main__":
            self.names.add(getattr(obj, "__qualname__", repr(obj)))
        return NotImplemented


def main_names_in(obj: Any) -> list[str]:
    """Names of the ``__main__`` classes and functions that pickling ``obj`` refers to."""
    finder = _MainFinder()
    finder.dump(obj)
    return sorted(finder.names)


def _reruns(main: ModuleType) -> bool:
    """Whether a "spawn" or "forkserver" child would re-run ``__main__`` (by module name or path)."""
    return getattr(getattr(main, "__spec__", None), "name", None) is not None or hasattr(main, "__file__")


def _module_frame(main: ModuleType) -> FrameType | None:
    """The frame running ``__main__``'s top-level code, if it is still running."""
    frame: FrameType | None = sys._getframe(1)
    found = None
    while frame is not None:
        if frame.f_code.co_name == "<module>" and frame.f_globals is vars(main):
            found = frame
        frame = frame.f_back
    return found


def _is_main_guard(node: ast.AST) -> bool:
    if not isinstance(node, ast.If) or not isinstance(node.test, ast.Compare):
        return False
    parts = [node.test.left, *node.test.comparators]
    names = {p.id for p in parts if isinstance(p, ast.Name)}
    strings = {p.value for p in parts if isinstance(p, ast.Constant)}
    return names == {"__name__"} and strings == {"__main__"}


def unguarded_line(main: ModuleType) -> int | None:
    """The line of ``__main__``'s top level now running, if it is outside a ``__main__`` guard."""
    frame = _module_frame(main)
    path = getattr(main, "__file__", None)
    if frame is None or path is None:
        return None
    try:
        with open(path, encoding="utf-8") as f:
            tree = ast.parse(f.read(), path)
    except (OSError, SyntaxError, ValueError):
        return None  # not a file we can read: no re-run problem we can name
    line = frame.f_lineno
    for node in tree.body:
        if _is_main_guard(node) and node.lineno <= line <= (node.end_lineno or node.lineno):
            return None
    return line


def _problem(main: ModuleType) -> tuple[str, bool] | None:
    """Why re-running ``__main__`` in a child would fail and whether a ``__main__`` guard fixes it; None: it works."""
    path = getattr(main, "__file__", None)
    if not _reruns(main):  # python -c, a notebook: the workers have no main program to import
        return "the main program has no file (python -c, a notebook) that worker processes could import", False
    if path is not None and not os.path.isfile(path):
        return f"the main program ({path}) is not a file that worker processes can re-run", False
    line = unguarded_line(main)
    if line is not None:
        return (
            f"worker processes re-run {path}, and its line {line} starts this loader outside "
            '`if __name__ == "__main__":`'
        ), True
    return None


@dataclass(frozen=True)
class WorkerStart:
    """How a backend starts its workers: with ``__main__`` hidden from them or as it is."""

    hide_main: bool

    @contextlib.contextmanager
    def starting(self) -> Iterator[None]:
        """Wrap every call that may start a worker process."""
        if not self.hide_main:
            yield
            return
        main = sys.modules["__main__"]
        with _MAIN_LOCK:
            saved = {key: main.__dict__[key] for key in ("__spec__", "__file__") if key in main.__dict__}
            main.__spec__ = None  # type: ignore[assignment]
            main.__dict__.pop("__file__", None)
            try:
                yield
            finally:
                main.__dict__.update(saved)


def _check_collate_pickles(collate_fn: Any, backend: str) -> None:
    """Raise CollatePicklingError when ``collate_fn`` does not pickle (it never needs a process start to)."""
    if collate_fn is None:
        return
    try:
        pickle.dumps(collate_fn)
    except Exception as exc:
        name = getattr(collate_fn, "__qualname__", repr(collate_fn))
        raise CollatePicklingError(
            f"flirdata {backend!r} backend: the collate function {name} cannot be pickled to reach the worker "
            f"processes ({type(exc).__name__}: {exc}); make it a module-level function that workers can import "
            "(not a lambda or a function defined inside another), or use backend='threads' or 'loky', which "
            "take it as it is."
        ) from None


def plan_worker_start(payload: Any, backend: str) -> WorkerStart:
    """Decide how ``backend`` starts workers that receive ``payload``; fail now if they cannot.

    Raises:
        MainModuleError: ``payload`` needs ``__main__`` in the workers and re-running it fails.
    """
    main = sys.modules["__main__"]
    try:
        names = main_names_in(payload)
    except Exception:  # not picklable here: name the collate function if it is the cause
        _check_collate_pickles(getattr(payload, "collate_fn", None), backend)
        return WorkerStart(hide_main=False)  # something else, which may pickle only as a process starts
    if not names:
        return WorkerStart(hide_main=_reruns(main))
    found = _problem(main)
    if found is None:
        return WorkerStart(hide_main=False)
    problem, unguarded = found
    guard = 'put the code that runs the loader under `if __name__ == "__main__":`, ' if unguarded else ""
    raise MainModuleError(
        f"flirdata {backend!r} backend: {problem}; the workers need {', '.join(names)} from it. "
        f"To fix it, {guard}move those definitions into a module, or use backend='threads' or 'loky', "
        "which work here."
    )
