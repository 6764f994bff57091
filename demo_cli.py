"""The command line of ``train_demo.py``: its parser, its defaults and the interactive questions.

The parser is built from ``flirdata.cliargs``, so counts, seeds and worker numbers are checked
as every ``flirdata`` command checks them, and a bad one is one line (``flirdata.cli``
translates it). ROOT is positional and optional, as the demo's default dataset is a synthetic
one in the cache; ``--data ROOT`` is the deprecated spelling, accepted until the next release.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Sequence
from typing import Any

from flirdata.cliargs import POSITIVE, SEED, WORKERS, OneLineParser, add_root, choices_text, resolve_root
from flirdata.names import BACKEND_NAMES, SIZES  # names only: --help answers without torch

__all__ = [
    "DEFAULT_BATCH",
    "DEFAULT_STEPS",
    "PROG",
    "RUN_TIME",
    "ask_interactive",
    "build_parser",
    "cores",
    "parse_args",
]

PROG = "train_demo.py"
DEFAULT_STEPS = 200
DEFAULT_BATCH = 16
# The default run (`python train_demo.py`, first run included), measured on the project's 2-core machine while other
# jobs shared it (load average ~12): 1 min 37 s, of which writing the dataset ~15 s. README.md quotes this text as is.
RUN_TIME = (  # measured: 24 s from a fresh clone, empty cache, load 0.7; 97-130 s at load 9-15
    "~25 s on 2 quiet cores, the first run included (writing the dataset takes ~4 s of it); "
    "about 1.5 minutes when other jobs share them"
)


def cores() -> int:
    """This process's share of the cores: torchrun's processes on one node split them evenly."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    local = os.environ.get("LOCAL_WORLD_SIZE", "1")
    return max(1, cores // int(local)) if local.isdigit() and int(local) > 0 else cores


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(
        prog=PROG,
        description="Train a tiny detector on FLIR-like thermal images and show what the data loader costs.",
        epilog=f"Defaults ({DEFAULT_STEPS} steps of {DEFAULT_BATCH} images, the small synthetic dataset) "
        f"finish in {RUN_TIME}. Cache folder: $FLIRDATA_CACHE, else ~/.cache/flirdata.",
    )
    add = parser.add_argument
    add_root(parser, "FLIR ADAS v2 folder (default: a synthetic dataset in the cache)", data_alias=True)
    add("--split", default="train", help="train, val, test or a folder holding coco.json (default: train)")
    sizes = ", ".join(f"{name} ({n})" for name, n in SIZES.items())
    add("--size", help=f"synthetic dataset without ROOT: {sizes} or N (default: small)")
    add(
        "--backend",
        default="process",
        choices=list(BACKEND_NAMES),
        help=f"how batches are made: {choices_text(list(BACKEND_NAMES))} (default: process)",
    )
    add(
        "--workers",
        type=WORKERS,
        default=cores(),
        metavar="N",
        help=f"worker processes or threads; 1 = in the training thread (default: {cores()}, the cores)",
    )
    add("--batch-size", type=POSITIVE, default=DEFAULT_BATCH, metavar="N", help=f"(default: {DEFAULT_BATCH})")
    add("--epochs", type=POSITIVE, metavar="N", help="stop after N epochs (default: as many as --steps needs)")
    add(
        "--steps",
        type=POSITIVE,
        metavar="N",
        help=f"stop after N steps (default: {DEFAULT_STEPS}, or unlimited with --epochs)",
    )
    add("--seed", type=SEED, default=0, help="data, shuffle and model seed (default: 0)")
    add("--save-samples", metavar="DIR", help="write the first batches' augmented images with their boxes (COCO)")
    add("--compare", action="store_true", help="also run the sequential baseline; print speedup and efficiency")
    add("--interactive", action="store_true", help="ask for dataset size, technique and cores")
    add(
        "--distributed",
        action="store_true",
        help="DDP (gloo) over the processes torchrun starts; each rank runs its own loader on its shard",
    )
    add("--record", metavar="DIR", help="write DIR/rank-R.json: each step's image ids and losses, per rank")
    return parser


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """The demo's arguments, ``--data`` folded into ``root`` (``None``: the synthetic dataset)."""
    return resolve_root(build_parser().parse_args(argv), PROG, required=False)


# -- interactive -------------------------------------------------------------------------------
def _ask(question: str, default: str, check: Callable[[str], Any], read: Callable[[str], str]) -> Any:
    """Ask until ``check`` accepts the answer; Enter takes the default, end of input too."""
    while True:
        try:
            answer = read(f"{question} [{default}]: ").strip() or default
        except EOFError:
            answer = default
        if not sys.stdin.isatty():  # piped answers are not echoed: keep the transcript readable
            print(answer)
        try:
            return check(answer)
        except (ValueError, argparse.ArgumentTypeError) as exc:
            print(f"  {exc}; try again", file=sys.stderr)
            if answer == default:  # a bad default cannot get better by asking again
                raise


def _choice(options: Sequence[str]) -> Callable[[str], str]:
    def check(answer: str) -> str:
        if answer.lower() not in options:
            raise ValueError(f"{answer!r} is not one of {', '.join(options)}")
        return answer.lower()

    return check


def ask_interactive(args: argparse.Namespace, read: Callable[[str], str] = input) -> argparse.Namespace:
    """The seed program's questions: dataset size, technique, cores (if not sequential)."""
    from flirdata.synth import parse_size

    def size(answer: str) -> str:
        parse_size(answer)  # DataError is a ValueError
        return answer.lower()

    changes: dict[str, Any] = {}
    if args.root is None:
        question = "Dataset size (small/medium/big or a number of images)"
        changes["size"] = _ask(question, args.size or "small", size, read)
    backend = _ask(f"Technique ({'/'.join(BACKEND_NAMES)})", args.backend, _choice(list(BACKEND_NAMES)), read)
    changes["backend"] = backend
    if backend != "sequential":
        changes["workers"] = _ask(f"Number of cores (1-{cores()} recommended)", str(args.workers), WORKERS, read)
    return argparse.Namespace(**{**vars(args), **changes})
