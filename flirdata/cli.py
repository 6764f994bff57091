"""The ``flirdata`` command line: one ``main(argv) -> int`` dispatching to subcommands.

Each subcommand lives in the module that owns the concept and exposes two functions,
``configure_parser(parser)`` and ``run_command(args) -> int``. Modules are imported only
when their subcommand runs, so ``flirdata synth`` does not pay for importing torch.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from flirdata.errors import FlirdataError, WorkerError

__all__ = ["COMMANDS", "main"]

# name -> (module, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "synth": ("flirdata.synth", "write a synthetic dataset in the FLIR ADAS v2 layout"),
    "check": ("flirdata.tools.check", "scan a dataset: every image and annotation"),
    "preview": ("flirdata.tools.preview", "draw a grid of augmented samples with their boxes"),
    "bench": ("flirdata.tools.bench", "sweep backends x workers x dataset sizes"),
    "export": ("flirdata.tools.export", "write augmented copies with their annotations"),
}


def _selected(argv: Sequence[str]) -> str | None:
    """The subcommand named on the command line (the first argument that is one)."""
    return next((arg for arg in argv if arg in COMMANDS), None)


def build_parser(argv: Sequence[str] = ()) -> argparse.ArgumentParser:
    """The parser; only the selected subcommand's module is imported to configure it."""
    parser = argparse.ArgumentParser(
        prog="flirdata",
        description="On-the-fly detection data pipeline for FLIR ADAS v2 thermal images.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    selected = _selected(argv)
    for name, (module_name, help_text) in COMMANDS.items():
        command_parser = sub.add_parser(name, help=help_text, description=help_text)
        if name == selected:
            importlib.import_module(module_name).configure_parser(command_parser)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run one subcommand; user errors become one line on stderr and exit code 2."""
    argv = sys.argv[1:] if argv is None else list(argv)
    args = build_parser(argv).parse_args(argv)
    module = importlib.import_module(COMMANDS[args.command][0])
    try:
        return int(module.run_command(args) or 0)
    except KeyboardInterrupt:
        print("flirdata: interrupted", file=sys.stderr)
        return 130
    except WorkerError as exc:  # the run failed (a worker died or hung), not the user's input
        print(f"flirdata {args.command}: error: {exc}", file=sys.stderr)
        return 1
    except (FlirdataError, FileNotFoundError, NotADirectoryError, PermissionError) as exc:
        print(f"flirdata {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:  # disk full, read-only file system, ...
        where = f" ({exc.filename})" if exc.filename else ""
        print(f"flirdata {args.command}: error: {exc.strerror or exc}{where}", file=sys.stderr)
        return 2
