"""``flirdata export ROOT --out OUT``: the arguments of the exporter (``flirdata.tools.export``)."""

from __future__ import annotations

import argparse

from flirdata.cliargs import POSITIVE, QUALITY, SEED, WORKERS, add_progress, add_root, choices_text
from flirdata.names import BACKEND_NAMES, EXPORT_FORMATS, PRESET_NAMES

__all__ = ["configure_parser", "run_command"]


def configure_parser(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``flirdata export``."""
    add = parser.add_argument
    add_root(parser, "dataset folder (holding images_thermal_train/ ...)", data_alias=True)
    add(
        "--split",
        default="train",
        metavar="SPLITS",
        help="train, val, test (rgb_train, ...), or a folder holding coco.json (default: train); yolo takes "
        "several, comma-separated, into one dataset (images/S, labels/S, data.yaml), and a later call "
        "with another split adds it to the same --out",
    )
    add(
        "--out",
        required=True,
        metavar="OUT",
        help="output folder: new or empty, an interrupted export, or (yolo) a dataset export wrote before",
    )
    add(
        "--copies",
        type=POSITIVE,
        default=1,
        metavar="N",
        help="augmented copies of every train image (default: 1); val and test are written once, "
        "un-augmented (the original frames and boxes), unless --augment-all",
    )
    add("--augment-all", action="store_true", help="augment val and test too, with --preset and --copies")
    add("--format", dest="fmt", choices=EXPORT_FORMATS, default="coco", help="output layout (default: coco)")
    add("--quality", type=QUALITY, default=95, metavar="Q", help="JPEG quality, 0 to 100 (default: 95)")
    add("--seed", type=SEED, default=0, help="augmentation seed (default: 0)")
    add(
        "--preset",
        default=None,
        help=f"augmentation preset ({choices_text(sorted(PRESET_NAMES))}) or an albumentations .json/.yaml file "
        "(default: the split's own, thermal or rgb)",
    )
    add("--resume", action="store_true", help="finish an interrupted export into OUT")
    add("--backend", choices=sorted(BACKEND_NAMES), default="sequential", help="loader backend (default: sequential)")
    add("--workers", type=WORKERS, default=1, metavar="N", help="loader workers, 1 = no pool (default: 1)")
    add("--batch-size", type=POSITIVE, default=16, metavar="N", help="images per batch (default: 16)")
    add("--limit", type=POSITIVE, default=None, metavar="N", help="export only the first N images (of each split)")
    add_progress(parser)


def run_command(args: argparse.Namespace) -> int:
    """Run the export (imported now: it needs torch, OpenCV and albumentations)."""
    from flirdata.tools.export.cli import run_command

    return run_command(args)
