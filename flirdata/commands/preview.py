"""``flirdata preview ROOT --out FILE.png``: the arguments of the sample grid (``flirdata.tools.preview``)."""

from __future__ import annotations

import argparse
from pathlib import Path

from flirdata.cliargs import NON_NEGATIVE, POSITIVE, SEED, add_progress, add_root, choices_text
from flirdata.names import MODALITIES, PRESET_NAMES

__all__ = ["IMAGE_SUFFIXES", "configure_parser", "run_command"]

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")  # what --out may end in: formats write_image encodes


def _image_file(text: str) -> Path:
    if Path(text).suffix.lower() not in IMAGE_SUFFIXES:
        endings = " or ".join(IMAGE_SUFFIXES)
        raise argparse.ArgumentTypeError(f"{text!r}: expected a file name ending in {endings}")
    return Path(text)


def configure_parser(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``flirdata preview``."""
    add = parser.add_argument
    add_root(parser, "dataset folder", data_alias=True)
    add("--out", required=True, type=_image_file, metavar="FILE.png", help="image to write (parent folders created)")
    add("--n", type=POSITIVE, default=16, metavar="N", help="number of samples (default: 16)")
    add("--seed", type=SEED, default=0, help="selects the samples and seeds their augmentation (default: 0)")
    add(
        "--split",
        default="train",
        help="train, val, test, rgb_train, rgb_val, rgb_test or a folder holding coco.json (default: train)",
    )
    add(
        "--modality",
        choices=sorted(MODALITIES),
        default=None,
        help="thermal (grey) or rgb (colour) frames (default: rgb for images_rgb_*/video_rgb_* folders)",
    )
    add(
        "--epoch",
        type=NON_NEGATIVE,
        default=0,
        metavar="N",
        help="augmentation epoch: same seed, other epoch = same images, new augmentations (default: 0)",
    )
    add(
        "--preset",
        default=None,
        help=f"augmentation preset ({choices_text(sorted(PRESET_NAMES))}) or an albumentations .json/.yaml file "
        "(default: thermal, or rgb for an RGB split)",
    )
    add("--cols", type=POSITIVE, default=None, metavar="N", help="grid columns (default: near-square)")
    add(
        "--tile-width",
        type=NON_NEGATIVE,
        default=480,
        metavar="PX",
        help="pixel width of each sample in the grid, 0 = unscaled (default: 480)",
    )
    add_progress(parser, help_text="accepted as by every command; preview draws a few samples and shows no progress")


def run_command(args: argparse.Namespace) -> int:
    """Draw the grid (imported now: it needs OpenCV and torch) and write it to ``--out``."""
    from flirdata.tools.preview import run_command

    return run_command(args)
