"""Synthetic colour frames for ``flirdata synth --rgb``: the thermal scene painted in colour.

FLIR ADAS v2's RGB frames come from a separate colour camera, at several resolutions. A
synthetic colour frame reuses a scene ``flirdata.synth.thermal.render_frame`` drew (at 640x512,
with its objects and tight boxes), paints the sky, the ground and each object in colours of
its own, and scales the frame, boxes and all, to one of those resolutions. Like
``flirdata.synth.thermal`` this module is pure numpy/OpenCV: no files, no COCO.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from flirdata.synth.thermal import DrawnObject, Scene

__all__ = ["FRAME_SIZES", "Palette", "frame_size", "make_palette", "colour_frame"]

# (width, height) of the colour frames in the FLIR ADAS v2 download.
FRAME_SIZES: tuple[tuple[int, int], ...] = ((2048, 1536), (1800, 1600), (1224, 1024))
_MIN_CONTRAST = 6.0  # grey levels: an object fainter than this over its surroundings stays unpainted


def frame_size(index: int) -> tuple[int, int]:
    """The ``(width, height)`` of a split's frame ``index``.

    The sizes take turns frame by frame (the real download keeps one per video) so that any
    three consecutive frames, a tiny split and every batch hold all of them: mixed sizes are
    what a loader of FLIR's RGB frames has to cope with.
    """
    return FRAME_SIZES[index % len(FRAME_SIZES)]


@dataclass(frozen=True)
class Palette:
    """One video's colours (RGB, 0..1): sky and ground from dark to light, and the light's tint."""

    sky: np.ndarray  # float32 [2, 3]
    ground: np.ndarray  # float32 [2, 3]
    light: np.ndarray  # float32 [3], multiplies the whole frame


def make_palette(rng: np.random.Generator, scene: Scene) -> Palette:
    """Blue skies over grey-brown ground by day; dark skies under warm street light by night."""
    blue = np.array([0.35, 0.5, 0.8]) + rng.uniform(-0.08, 0.08, 3)
    sky = np.stack([blue * 0.6, np.minimum(blue + 0.35, 1.0)])
    earth = np.array([0.42, 0.4, 0.37]) + rng.uniform(-0.05, 0.05, 3)
    ground = np.stack([earth * 0.35, np.minimum(earth * 1.6, 1.0)])
    light = np.array([1.0, 0.85, 0.6]) * 0.45 if scene.night else np.array([1.0, 1.0, 1.0])
    light = light * rng.uniform(0.92, 1.08, 3)
    return Palette(sky.astype(np.float32), ground.astype(np.float32), light.astype(np.float32))


def _lerp(pair: np.ndarray, t: np.ndarray) -> np.ndarray:
    """``pair[0]`` where ``t`` is 0 to ``pair[1]`` where it is 1, per pixel: ``[..., 3]``."""
    return pair[0] + (pair[1] - pair[0]) * t[..., None]


def _paint_objects(
    rng: np.random.Generator, img: np.ndarray, grey: np.ndarray, t: np.ndarray, objects: list[DrawnObject]
) -> None:
    """Give each object a colour of its own where it stands out from its surroundings.

    The background level is the median of a window twice the box's size, where the object
    covers at most a quarter of the pixels; objects are painted far to near, so nearer ones
    cover farther ones as in the grey frame.
    """
    h, w = grey.shape
    for obj in objects:
        x, y, bw, bh = obj.box
        window = grey[max(0, y - bh // 2) : y + bh + bh // 2, max(0, x - bw // 2) : x + bw + bw // 2]
        region = grey[y : y + bh, x : x + bw]
        background = float(np.median(window))
        paint = rng.uniform(0.1, 1.0, 3).astype(np.float32)
        if float(region.max()) - background < _MIN_CONTRAST:
            continue
        mask = region > background + 0.3 * (float(region.max()) - background)
        img[y : y + bh, x : x + bw][mask] = paint * (0.3 + 0.7 * t[y : y + bh, x : x + bw][mask, None])


def _scale_box(obj: DrawnObject, sx: float, sy: float) -> DrawnObject:
    x, y, w, h = obj.box
    x0, y0, x1, y1 = round(x * sx), round(y * sy), round((x + w) * sx), round((y + h) * sy)
    return DrawnObject(obj.category_id, (x0, y0, x1 - x0, y1 - y0), obj.visible)


def colour_frame(
    rng: np.random.Generator,
    grey: np.ndarray,
    scene: Scene,
    palette: Palette,
    objects: list[DrawnObject],
    size: tuple[int, int],
) -> tuple[np.ndarray, list[DrawnObject]]:
    """Paint a rendered grey frame and scale it to ``size = (width, height)``.

    Returns the ``uint8 [height, width, 3]`` frame in OpenCV's B, G, R order (ready for
    ``cv2.imencode``) and the objects with their boxes scaled to it.
    """
    h, w = grey.shape
    t = grey.astype(np.float32) / 255.0
    sky = (np.arange(h, dtype=np.float32) < scene.horizon)[:, None, None]
    img = np.where(sky, _lerp(palette.sky, t), _lerp(palette.ground, t))
    _paint_objects(rng, img, grey, t, objects)
    img = img * palette.light * 255.0 + rng.normal(0.0, 2.0, img.shape).astype(np.float32)  # sensor noise
    rgb = np.clip(img + 0.5, 0, 255).astype(np.uint8)
    out = cv2.resize(rgb, size, interpolation=cv2.INTER_LINEAR)
    sx, sy = size[0] / w, size[1] / h
    return cv2.cvtColor(out, cv2.COLOR_RGB2BGR), [_scale_box(obj, sx, sy) for obj in objects]
