"""``flirdata synth ROOT``: the arguments of the synthetic-data generator (``flirdata.synth``)."""

from __future__ import annotations

import argparse
from pathlib import Path

from flirdata.cliargs import NON_NEGATIVE, SEED, WORKERS, add_progress, add_root
from flirdata.names import SIZES

__all__ = ["configure_parser", "run_command"]


def configure_parser(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``flirdata synth``."""
    add = parser.add_argument
    add_root(
        parser,
        "dataset folder (created if missing): gets images_thermal_train/ and images_thermal_val/ "
        "(and video_thermal_test/), each with data/*.jpg and coco.json",
    )
    sizes = ", ".join(f"{name} ({n})" for name, n in SIZES.items())
    add("--size", default="small", help=f"train images: {sizes} or a positive integer (default: small)")
    add(
        "--val",
        type=NON_NEGATIVE,
        default=None,
        metavar="N",
        help="val images (default: a tenth of the train images, at least 50, or all of them if fewer)",
    )
    add("--test", type=NON_NEGATIVE, default=0, metavar="N", help="frames in video_thermal_test/ (default: 0, none)")
    add("--seed", type=SEED, default=0, help="same seed, byte-identical files (default: 0)")
    add(
        "--workers",
        type=WORKERS,
        default=None,
        metavar="N",
        help="rendering processes (default: one per CPU; 1 below 1000 images)",
    )
    add(
        "--force",
        action="store_true",
        help="a split already written with the same seed and size is skipped; one holding anything else "
        "is an error, unless --force, which deletes and rewrites it",
    )
    add(
        "--rgb",
        action="store_true",
        help="also write images_rgb_train/ and images_rgb_val/ (and video_rgb_test/): "
        "colour frames of several sizes (2048x1536, 1800x1600, 1224x1024), as many as the thermal ones",
    )
    add_progress(parser, "--quiet")


def run_command(args: argparse.Namespace) -> int:
    """Run ``flirdata synth`` and print one line per split and the speed."""
    from flirdata.synth import parse_size, synthesize

    summary = synthesize(
        args.root,
        train=parse_size(args.size),
        val=args.val,
        test=args.test,
        seed=args.seed,
        progress=args.progress,
        workers=args.workers,
        force=args.force,
        rgb=args.rgb,
    )
    for split in summary["splits"].values():
        state = "up to date, skipped" if split["skipped"] else "written"
        print(
            f"{Path(summary['root']) / split['folder']}: {split['images']} images, "
            f"{split['annotations']} boxes ({state})"
        )
    if summary["images"]:
        speed = f"{summary['images_per_s']:.1f} images/s"
        print(f"{summary['images']} images in {summary['seconds']:.1f} s ({speed})")
    return 0
