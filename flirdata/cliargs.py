"""The conventions every command line shares: its parser, its number validators, ROOT and progress.

``flirdata CMD ROOT ...`` and ``train_demo.py`` build their parsers from these pieces, so a count,
a seed or a worker number is checked the same way everywhere, and a bad one is one line naming
the option, the value and the allowed range. The parser raises ``UsageError`` instead of
printing its usage block and exiting: the error translator (``flirdata.cli.run_translated``)
turns it into one line on stderr and exit code 2, as it does for every other user error.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import NoReturn

from flirdata.errors import FlirdataError

__all__ = [
    "MAX_COUNT",
    "MAX_SEED",
    "MAX_WORKERS",
    "NON_NEGATIVE",
    "POSITIVE",
    "QUALITY",
    "SEED",
    "WORKERS",
    "IntList",
    "IntRange",
    "OneLineParser",
    "UsageError",
    "add_progress",
    "add_root",
    "choices_text",
    "resolve_root",
]

# Far beyond any real run (FLIR ADAS v2 has ~26,000 frames), small enough that a typo such as
# 10**20 is refused here instead of failing deep in numpy with an OverflowError.
MAX_COUNT = 10_000_000
MAX_WORKERS = 1024  # processes or threads: far beyond any machine, small enough for the OS
MAX_SEED = 2**32 - 1  # numpy's SeedSequence takes any size, but torch.manual_seed wants 64 bits at most
_MAX_DIGITS = 30  # int() of thousands of digits raises ValueError: refuse long strings before converting


class UsageError(FlirdataError, ValueError):
    """A command line that does not parse; ``prog`` is the command whose parser refused it."""

    def __init__(self, message: str, prog: str | None = None) -> None:
        super().__init__(message)
        self.prog = prog


class OneLineParser(argparse.ArgumentParser):
    """An ``ArgumentParser`` whose errors are a ``UsageError`` (one line), not a usage block and exit.

    Subparsers made by ``add_subparsers`` are of the parent's class, so they raise it too.
    """

    def error(self, message: str) -> NoReturn:
        raise UsageError(f"{message} (see --help)", self.prog)


@dataclass(frozen=True)
class IntRange:
    """An argparse ``type``: a decimal integer from ``low`` to ``high`` (inclusive)."""

    low: int
    high: int

    def __call__(self, text: str) -> int:
        digits = str(text).strip()
        value = int(digits) if digits.isascii() and digits.isdigit() and len(digits) <= _MAX_DIGITS else None
        if value is None or value < self.low:
            raise argparse.ArgumentTypeError(f"expected an integer >= {self.low}, got {text!r}")
        if value > self.high:
            raise argparse.ArgumentTypeError(f"expected an integer <= {self.high}, got {text!r}")
        return value


@dataclass(frozen=True)
class IntList:
    """An argparse ``type``: comma-separated integers, each checked by ``item``, duplicates dropped."""

    item: IntRange

    def __call__(self, text: str) -> list[int]:
        values = [self.item(part) for part in str(text).split(",") if part.strip()]
        if not values:
            raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}")
        return list(dict.fromkeys(values))


POSITIVE = IntRange(1, MAX_COUNT)  # counts: images, samples, copies, steps, batch sizes
NON_NEGATIVE = IntRange(0, MAX_COUNT)  # counts where 0 means none (or "the default"), epochs
SEED = IntRange(0, MAX_SEED)
WORKERS = IntRange(1, MAX_WORKERS)  # 1 = no pool: in the calling thread
QUALITY = IntRange(0, 100)  # JPEG quality, as OpenCV takes it


def add_root(parser: argparse.ArgumentParser, help_text: str, *, data_alias: bool = False) -> None:
    """The dataset folder, positional; ``data_alias`` also accepts the old ``--data ROOT``.

    With the alias, ROOT is optional for argparse and ``resolve_root`` checks it after parsing,
    so ``--data ROOT`` alone keeps working (for one release) and both at once must agree.
    """
    if not data_alias:
        parser.add_argument("root", type=Path, metavar="ROOT", help=help_text)
        return
    parser.add_argument("root", type=Path, metavar="ROOT", nargs="?", default=None, help=help_text)
    parser.add_argument(
        "--data",
        dest="data_alias",
        type=Path,
        metavar="ROOT",
        default=None,
        help="deprecated alias of ROOT, accepted until the next release",
    )


def resolve_root(args: argparse.Namespace, prog: str | None = None, *, required: bool = True) -> argparse.Namespace:
    """Fold ``--data`` into ``args.root``; two different roots, or none when ``required``, is a ``UsageError``."""
    if not hasattr(args, "data_alias"):
        return args
    alias = args.data_alias
    del args.data_alias
    if args.root is not None and alias is not None and args.root != alias:
        raise UsageError(f"ROOT {args.root} and --data {alias} name different folders; give ROOT alone", prog)
    args.root = args.root if args.root is not None else alias
    if args.root is None and required:
        raise UsageError("the following arguments are required: ROOT (see --help)", prog)
    return args


def add_progress(parser: argparse.ArgumentParser, *aliases: str, help_text: str = "no progress bar on stderr") -> None:
    """``--no-progress`` (and older spellings in ``aliases``) set ``args.progress`` to False."""
    parser.add_argument("--no-progress", *aliases, dest="progress", action="store_false", help=help_text)


def choices_text(names: Sequence[str]) -> str:
    """``a, b or c``: how a help text lists the valid names."""
    names = list(names)
    return names[0] if len(names) == 1 else f"{', '.join(names[:-1])} or {names[-1]}"
