"""``flirdata eval ROOT --detections FILE.json``: the 12 COCO metrics of saved detections.

FILE.json is a list of what ``flirdata.evaluate`` takes, one object per image, as a detector
returned it with lists for tensors::

    [{"image_id": 0, "boxes": [[x1, y1, x2, y2], ...], "scores": [0.9, ...], "labels": [3, ...]}, ...]

Boxes are in the frame of the samples the detector saw: ``--transform none`` (the default) is
``build_transform("none")``'s letterbox, ``original`` the image's own pixels. Only argument parsing
happens at import; the dataset and pycocotools are imported when the command runs.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from flirdata.cliargs import add_root
from flirdata.errors import FlirdataError

__all__ = ["TRANSFORMS", "configure_parser", "read_detections", "run_command"]

TRANSFORMS = ("none", "original")  # or an albumentations .json/.yaml pipeline file


def configure_parser(parser: argparse.ArgumentParser) -> None:
    add_root(parser, "dataset folder (holding images_thermal_val/ ...), or a COCO export")
    add = parser.add_argument
    add(
        "--split",
        default="val",
        help="val, test, ... or a folder holding coco.json: a COCO export is `flirdata eval OUT --split OUT` "
        "(default: val)",
    )
    add(
        "--detections",
        required=True,
        type=Path,
        metavar="FILE",
        help='JSON list of {"image_id", "boxes" (xyxy), "scores", "labels" (1..K)}, one object per image',
    )
    add(
        "--transform",
        default="none",
        metavar="T",
        help="the frame the boxes are in: none (build_transform('none'), the letterbox to 512x640), original "
        "(the image's own pixels) or the albumentations .json/.yaml pipeline the samples went through "
        "(default: none)",
    )
    add("--json", type=Path, metavar="OUT", help="also write the 12 metrics to OUT as a JSON object")


def read_detections(path: Path) -> list[Any]:
    """The detections a file holds: a JSON list; errors name the file."""
    try:
        data = json.loads(Path(path).read_bytes())
    except FileNotFoundError:
        raise FlirdataError(f"{path}: detections file not found") from None
    except (ValueError, RecursionError) as exc:
        raise FlirdataError(f"{path}: not valid JSON ({exc})") from None
    if not isinstance(data, list):
        raise FlirdataError(
            f"{path}: expected a JSON list of detections, one object per image; got {type(data).__name__}"
        )
    return data


def _transform(name: str) -> Any:
    from flirdata.transforms import build_transform

    return None if name == "original" else build_transform(name)


def run_command(args: argparse.Namespace) -> int:
    from flirdata.dataset import FlirDetection
    from flirdata.evaluation import DetectionError, evaluate, stats_table
    from flirdata.files import write_atomic

    dataset = FlirDetection(args.root, args.split, transform=_transform(args.transform))
    detections = read_detections(args.detections)
    try:
        stats = evaluate(dataset, detections)
    except DetectionError as exc:
        raise DetectionError(f"{args.detections}: {exc}") from None
    print(f"{len(detections)} images with detections, {len(dataset)} images in {dataset.index.path}")
    print(stats_table(stats))
    if args.json is not None:
        write_atomic(args.json, (json.dumps(stats, indent=1) + "\n").encode())
    return 0
