"""``flirdata check ROOT``: the arguments of the dataset scan (``flirdata.tools.check``)."""

from __future__ import annotations

import argparse

from flirdata.cliargs import WORKERS, add_progress, add_root
from flirdata.names import MODALITIES

__all__ = ["EPILOG", "configure_parser", "run_command"]

EPILOG = """\
exit status:
  0  every image and coco.json is usable (warnings may have been printed)
  1  at least one image or coco.json is missing, empty, truncated, corrupt, of the wrong size
     (read from the image's header, before decoding), over the pixel cap, of the wrong channels
     (a colour image in a thermal split, a grey one in an RGB split), with non-finite pixels,
     or an image lies outside the dataset folder, is not a regular file or is over the size limit
  2  usage error, or the dataset / a requested split folder does not exist

Boxes repaired on load (degenerate boxes dropped, boxes past the frame clipped, unknown
categories dropped) are how the real FLIR data ships: they are counted in the summary and
do not fail the check. Files referenced twice and image files no entry references are
warnings, which do not fail the check either.
"""


def configure_parser(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``flirdata check``."""
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.epilog = EPILOG
    add_root(parser, "dataset folder, or a split folder with coco.json")
    parser.add_argument(
        "--split",
        default=None,
        metavar="NAMES",
        help="comma-separated splits: train, val, test, rgb_train, rgb_val, rgb_test, folder names or paths "
        "(default: every split folder present)",
    )
    parser.add_argument(
        "--workers",
        type=WORKERS,
        default=None,
        metavar="N",
        help="decoding threads, 1 = serial (default: 2 x CPUs, at most 16)",
    )
    parser.add_argument(
        "--modality",
        choices=sorted(MODALITIES),
        default=None,
        help="channels every image must have: thermal (grey) or rgb (colour) "
        "(default: rgb for images_rgb_*/video_rgb_* folders, else thermal)",
    )
    add_progress(parser)


def run_command(args: argparse.Namespace) -> int:
    """Scan the dataset (imported now: it needs OpenCV and torch) and print what is wrong."""
    from flirdata.tools.check import run_command

    return run_command(args)
