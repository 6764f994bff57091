"""The ``flirdata`` command line: one ``main(argv) -> int`` dispatching to subcommands, and its error translator.

Each subcommand's arguments live in a small module of ``flirdata.commands`` exposing two
functions, ``configure_parser(parser)`` and ``run_command(args) -> int``; only the selected
subcommand's module is imported, and it imports the tool that does the work (``flirdata.synth``,
``flirdata.tools.*``) only in ``run_command``. So ``--help`` and usage errors answer without
importing torch, OpenCV or albumentations, and ``flirdata synth`` never imports torch.

``run_translated`` is the one place where failures become what a user reads (the idea of
httpx's ``map_exceptions``): one line on stderr and an exit code. ``train_demo.py`` uses it too.
While it runs, SIGTERM raises ``Terminated`` (a ``KeyboardInterrupt``) in the main thread, so a
command stopped by ``kill``, ``timeout``, Slurm or ``docker stop`` cleans up as after Ctrl-C.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import signal
import sys
import threading
from collections.abc import Callable, Iterator, Sequence
from types import FrameType

from flirdata.cliargs import OneLineParser, UsageError, resolve_root
from flirdata.errors import FlirdataError, Terminated, WorkerError

__all__ = [
    "COMMANDS",
    "EXIT_FAILED",
    "EXIT_INTERRUPTED",
    "EXIT_TERMINATED",
    "EXIT_USAGE",
    "build_parser",
    "error_line",
    "main",
    "run_translated",
]

EXIT_FAILED = 1  # the run failed (a worker crashed or hung; check found bad files), the input was fine
EXIT_USAGE = 2  # the user's input: arguments, files, folders, disk
EXIT_INTERRUPTED = 130  # Ctrl-C, as a shell reports SIGINT
EXIT_TERMINATED = 143  # SIGTERM, as a shell reports it

# name -> (module of flirdata.commands: its arguments, light to import; one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "synth": ("flirdata.commands.synth", "write a synthetic dataset in the FLIR ADAS v2 layout"),
    "check": ("flirdata.commands.check", "scan a dataset: every image and annotation"),
    "preview": ("flirdata.commands.preview", "draw a grid of augmented samples with their boxes"),
    "bench": ("flirdata.commands.bench", "sweep backends x workers x dataset sizes"),
    "export": ("flirdata.commands.export", "write augmented copies with their annotations"),
    "eval": ("flirdata.commands.eval", "score a detector's saved detections: the 12 COCO box metrics"),
}


def _one_line(text: str) -> str:
    return "; ".join(line.strip() for line in text.splitlines() if line.strip())


def error_line(prog: str, exc: BaseException) -> tuple[str, int] | None:
    """The line and exit code an expected failure maps to; ``None`` for a bug (let it raise)."""
    if isinstance(exc, KeyboardInterrupt):  # the command may say how to continue: str(exc)
        detail = f"; {_one_line(str(exc))}" if str(exc) else ""
        if isinstance(exc, Terminated):
            return f"{prog}: terminated (SIGTERM){detail}", EXIT_TERMINATED
        return f"{prog}: interrupted{detail}", EXIT_INTERRUPTED
    if isinstance(exc, UsageError):  # the parser that refused it names the subcommand
        return f"{exc.prog or prog}: error: {_one_line(str(exc))}", EXIT_USAGE
    if isinstance(exc, WorkerError):
        return f"{prog}: error: {_one_line(str(exc))}", EXIT_FAILED
    # FlirdataError covers our own checks; a plain ValueError is a library refusing a value the
    # user gave (make_loader(workers=-1), build_transform("nope")), so it is user input too.
    if isinstance(exc, (FlirdataError, ValueError, FileNotFoundError, NotADirectoryError, PermissionError)):
        return f"{prog}: error: {_one_line(str(exc)) or type(exc).__name__}", EXIT_USAGE
    if isinstance(exc, OSError):  # disk full, read-only file system, ...
        where = f" ({exc.filename})" if exc.filename else ""
        return f"{prog}: error: {_one_line(exc.strerror or str(exc))}{where}", EXIT_USAGE
    return None


@contextlib.contextmanager
def _sigterm_as_interrupt() -> Iterator[threading.Event]:
    """While the block runs, SIGTERM raises ``Terminated`` in the main thread (not installed elsewhere).

    Yields an event set once SIGTERM came: code that turns every ``KeyboardInterrupt`` into a
    plain one (Ray's ``ray.get``) loses the class, not the fact.
    """
    received = threading.Event()
    if threading.current_thread() is not threading.main_thread():
        yield received
        return

    def handler(signum: int, frame: FrameType | None) -> None:
        received.set()
        # Further SIGTERMs wait until the clean-up this one starts is done (the handler is
        # restored below): a second one would break it off and leave workers and segments.
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        raise Terminated()

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield received
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_DFL if previous is None else previous)  # None: set outside Python


def run_translated(prog: str, run: Callable[[], int | None]) -> int:
    """Call ``run``; an expected failure becomes one line on stderr and its exit code (``error_line``).

    SIGTERM is handled as Ctrl-C is (``Terminated``), exit code 143.
    """
    terminated = threading.Event()
    try:
        with _sigterm_as_interrupt() as terminated:
            return int(run() or 0)
    except (KeyboardInterrupt, Exception) as exc:
        if terminated.is_set() and type(exc) is KeyboardInterrupt:
            exc = Terminated(*exc.args)
        mapped = error_line(prog, exc)
        if mapped is None:
            raise
        print(mapped[0], file=sys.stderr)
        return mapped[1]


def _selected(argv: Sequence[str]) -> str | None:
    """The subcommand named on the command line (the first argument that is one)."""
    return next((arg for arg in argv if arg in COMMANDS), None)


def build_parser(argv: Sequence[str] = ()) -> argparse.ArgumentParser:
    """The parser; only the selected subcommand's module is imported to configure it."""
    parser = OneLineParser(
        prog="flirdata",
        description="On-the-fly detection data pipeline for FLIR ADAS v2 thermal images. "
        "Every command reads `flirdata COMMAND ROOT [options]`; `flirdata COMMAND --help` lists its options.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    selected = _selected(argv)
    for name, (module_name, help_text) in COMMANDS.items():
        command_parser = sub.add_parser(name, help=help_text, description=help_text)
        if name == selected:
            importlib.import_module(module_name).configure_parser(command_parser)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run one subcommand; every user error is one line on stderr and exit code 2 (see ``error_line``)."""
    argv = sys.argv[1:] if argv is None else list(argv)
    selected = _selected(argv)
    prog = f"flirdata {selected}" if selected else "flirdata"

    def run() -> int | None:
        args, extra = build_parser(argv).parse_known_args(argv)
        if extra:  # reported by the command that refused them, not by `flirdata`
            raise UsageError(f"unrecognized arguments: {' '.join(extra)} (see --help)", prog)
        args = resolve_root(args, prog)
        return importlib.import_module(COMMANDS[args.command][0]).run_command(args)

    return run_translated(prog, run)
