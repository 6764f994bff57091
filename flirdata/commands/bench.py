"""``flirdata bench ROOT``: the arguments of the backend sweep and ``--profile`` (``flirdata.tools.bench``)."""

from __future__ import annotations

import argparse

from flirdata.cliargs import NON_NEGATIVE, POSITIVE, SEED, WORKERS, IntList, add_progress, add_root, choices_text
from flirdata.names import BACKEND_NAMES, PRESET_NAMES

__all__ = ["configure_parser", "run_command"]


def configure_parser(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``flirdata bench``."""
    add = parser.add_argument
    add_root(parser, "dataset folder to measure (make one with `flirdata synth`)", data_alias=True)
    add(
        "--backends",
        metavar="LIST",
        help=f"comma-separated, from {choices_text(list(BACKEND_NAMES))} "
        "(default: all whose optional extra is installed)",
    )
    add("--workers", metavar="LIST", type=IntList(WORKERS), default="1,2,4", help="worker counts (default: 1,2,4)")
    add(
        "--sizes",
        metavar="LIST",
        default="small,medium,big",
        help="dataset sizes: small=500, medium=2000, big=10000 or a number of images; "
        "each is a prefix of ROOT's train split (default: small,medium,big)",
    )
    add("--batch-size", metavar="N", type=POSITIVE, default=32, help="images per batch (default: 32)")
    add(
        "--batches",
        metavar="N",
        type=NON_NEGATIVE,
        default=20,
        help="batches timed per repeat after warm-up, 0 = rest of the epoch (default: 20)",
    )
    add("--repeats", metavar="N", type=POSITIVE, default=3, help="repeats per point (default: 3)")
    add("--seed", metavar="N", type=SEED, default=0, help="augmentation and shuffle seed (default: 0)")
    add(
        "--preset",
        default="thermal",
        help=f"augmentation preset ({choices_text(sorted(PRESET_NAMES))}) or an albumentations .json/.yaml file "
        "(default: thermal)",
    )
    add(
        "--profile",
        action="store_true",
        help="instead of the sweep, print what each transform of the pipeline costs per image on ROOT's train "
        "images (one thread; --batches x --batch-size images, decode and collate included)",
    )
    add("--json", metavar="FILE", help="write one record per point")
    add("--markdown", metavar="FILE", help="write the tables as markdown")
    add("--plot", metavar="FILE.png", help="plot speedup against workers")
    add_progress(parser)


def run_command(args: argparse.Namespace) -> int:
    """Run the sweep or the profile (imported now: they need torch and the backends)."""
    from flirdata.tools.bench import run_command

    return run_command(args)
