"""Which frames a synthetic split holds: its videos, file names, sizes, and the streams they draw from.

Every random choice comes from a ``SeedSequence`` keyed by (seed, split, index[, tag]), so a
split's plan, pixels and annotations are the same in any process and any order.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from flirdata.synth.rgb import frame_size
from flirdata.synth.thermal import HEIGHT, WIDTH

__all__ = ["SPLIT_FOLDERS", "FramePlan", "plan_split", "n_flawed", "stream", "VIDEO", "LAYOUT", "FLAWS", "CAMERA"]

# split -> (folder, split code in every random key)
SPLIT_FOLDERS: dict[str, tuple[str, int]] = {
    "train": ("images_thermal_train", 0),
    "val": ("images_thermal_val", 1),
    "test": ("video_thermal_test", 2),
    "rgb_train": ("images_rgb_train", 3),
    "rgb_val": ("images_rgb_val", 4),
    "rgb_test": ("video_rgb_test", 5),
}

_ALPHABET = np.array(list("0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"))
VIDEO, LAYOUT, FLAWS, CAMERA = 1, 2, 3, 4  # stream tags; image streams carry none


def stream(seed: int, split_code: int, index: int, tag: int = 0) -> np.random.Generator:
    """Image ``index`` draws from ``[seed, split, index]``; videos and layout add a tag.

    ``SeedSequence`` pads short keys with zeros, so a non-zero tag keeps the streams apart.
    """
    key = [seed, split_code, index] + ([tag] if tag else [])
    return np.random.default_rng(np.random.SeedSequence(key))


@dataclass(frozen=True)
class FramePlan:
    """Where one image sits: its video, its place in it, its file name."""

    index: int  # image id and position in coco.json
    video: int
    frame_pos: int  # frames since the video's first one in this split
    video_id: str
    frame_index: int
    file_name: str
    empty: bool  # drawn without objects: FLIR has a few frames without any box
    width: int = WIDTH  # of the file; RGB frames take one of rgb_synth.FRAME_SIZES
    height: int = HEIGHT


def _alnum(rng: np.random.Generator) -> str:
    return "".join(_ALPHABET[rng.integers(0, len(_ALPHABET), 17)])


def n_flawed(n_items: int, rate: float, guarantee: bool) -> int:
    """How many items get a flaw: ``rate`` of them, at least one if ``guarantee``."""
    return min(n_items, max(int(guarantee), round(rate * n_items)))


def plan_split(seed: int, split: str, n: int) -> list[FramePlan]:
    """Group ``n`` frames into videos with consecutive frame numbers, as FLIR's are."""
    rng = stream(seed, SPLIT_FOLDERS[split][1], 0, LAYOUT)
    lo, hi = (150, 400) if split.endswith("test") else (8, 60)
    empty = set(rng.choice(n, n_flawed(n, 0.02, n >= 20), replace=False).tolist())
    frames: list[FramePlan] = []
    video = 0
    while len(frames) < n:
        video_id, start = _alnum(rng), int(rng.integers(0, 5000))
        for pos in range(min(int(rng.integers(lo, hi)), n - len(frames))):
            k, number = len(frames), start + pos
            name = f"data/video-{video_id}-frame-{number:06d}-{_alnum(rng)}.jpg"
            size = frame_size(k) if split.startswith("rgb") else (WIDTH, HEIGHT)
            frames.append(FramePlan(k, video, pos, video_id, number, name, k in empty, *size))
        video += 1
    return frames
