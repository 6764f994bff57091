"""Rendering of synthetic thermal frames: cold sky, warm road, skyline and warm objects.

Pure numpy/OpenCV, no files and no COCO: ``render_frame`` draws one 640x512 8-bit frame from a
generator and returns, for every object it drew, the category id, the tight pixel box of the
object's own mask (clipped to the frame) and how much of it nearer objects left visible.
Objects stand on a flat ground plane seen by a pinhole camera, so size follows distance and
nearer objects occlude farther ones.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from flirdata.synth.shapes import CLASSES, SHAPES, ObjectClass

__all__ = ["WIDTH", "HEIGHT", "CLASSES", "SHAPES", "ObjectClass", "Scene", "DrawnObject", "make_scene", "render_frame"]

# The shapes and classes live in ``shapes.py``; they are re-exported here, where scenes use them.

WIDTH, HEIGHT = 640, 512
_SKYLINE_PAD = 400  # extra skyline columns, so the view can drift along a video
_MIN_PIXELS = 3  # objects smaller than this (either side) are neither drawn nor annotated

_IDS = np.array(sorted(CLASSES))
_P = np.array([CLASSES[i].weight for i in _IDS]) / sum(c.weight for c in CLASSES.values())


@dataclass(frozen=True)
class Scene:
    """What stays fixed along one video: camera, weather, time of day, skyline."""

    horizon: float  # row of the horizon
    vanish_x: float  # column of the vanishing point
    cam_height: float  # metres: ground row y shows (y - horizon) / cam_height pixels per metre
    sky: tuple[float, float]  # intensity at the top and at the horizon
    road: tuple[float, float]  # intensity at the horizon and at the bottom
    skyline: np.ndarray  # float32 [2, WIDTH + pad]: height above the horizon, intensity
    drift: float  # skyline columns moved per frame
    density: float  # mean number of objects placed per frame
    night: bool
    weather: str


def make_scene(rng: np.random.Generator) -> Scene:
    """Draw one video's look; cloudy skies are warmer than clear ones, nights colder."""
    weather = ("clear", "partly_cloudy", "cloudy")[int(rng.integers(3))]
    night = bool(rng.random() < 0.35)
    cold = -12.0 if night else 0.0
    sky_top = {"clear": 20.0, "partly_cloudy": 35.0, "cloudy": 50.0}[weather] + rng.uniform(0, 15) + cold
    sky_low = sky_top + rng.uniform(15, 30)  # the sky warms towards the horizon
    road_far = sky_low + rng.uniform(10, 30)
    road_near = road_far + rng.uniform(20, 45)
    n = WIDTH + _SKYLINE_PAD
    edges = np.cumsum(rng.integers(15, 110, n // 15))
    block = np.searchsorted(edges, np.arange(n), side="right")
    heights = rng.uniform(0, 110, len(edges) + 1) * (rng.random(len(edges) + 1) < 0.7)
    heat = rng.uniform(sky_low - 5, road_far - 3, len(edges) + 1)  # between sky and road
    skyline = np.stack([heights[block] + rng.uniform(0, 4, n), heat[block]]).astype(np.float32)
    return Scene(
        horizon=rng.uniform(0.3, 0.48) * HEIGHT,
        vanish_x=WIDTH / 2 + rng.uniform(-60, 60),
        cam_height=rng.uniform(1.2, 1.7),
        sky=(sky_top, sky_low),
        road=(road_far, road_near),
        skyline=skyline,
        drift=rng.uniform(0, 3),
        density=rng.uniform(6, 34),
        night=night,
        weather=weather,
    )


def _background(rng: np.random.Generator, scene: Scene, hz: float, frame_pos: int) -> np.ndarray:
    """Sky gradient, road gradient, skyline blocks, lane markings, low-frequency texture."""
    rows = np.arange(HEIGHT, dtype=np.float32)[:, None]
    t_sky = np.clip(rows / hz, 0, 1) ** 1.5
    t_road = np.clip((rows - hz) / (HEIGHT - hz), 0, 1)
    column = np.where(
        rows < hz,
        scene.sky[0] + (scene.sky[1] - scene.sky[0]) * t_sky,
        scene.road[0] + (scene.road[1] - scene.road[0]) * t_road,
    )
    img = np.repeat(column, WIDTH, axis=1)
    start = int(frame_pos * scene.drift) % _SKYLINE_PAD
    tall, heat = scene.skyline[:, start : start + WIDTH]
    building = (rows < hz) & (rows >= hz - tall[None, :])
    img = np.where(building, heat[None, :], img)
    lanes = np.zeros((HEIGHT, WIDTH), np.uint8)
    bottom = (HEIGHT - hz) / scene.cam_height  # pixels per metre at the bottom row
    corners = ((-0.07, 0.01, hz + 1), (0.07, 0.01, hz + 1), (0.07, bottom, HEIGHT), (-0.07, bottom, HEIGHT))
    for lat in (-5.25, -1.75, 1.75, 5.25):  # lane lines, 3.5 m apart
        pts = np.array([(scene.vanish_x + (lat + d) * ppm, y) for d, ppm, y in corners], np.int32)
        cv2.fillConvexPoly(lanes, pts, 1)
    img -= 7.0 * lanes
    for cells, amp in (((4, 5), 7.0), ((24, 30), 2.5)):
        noise = rng.standard_normal(cells, dtype=np.float32)
        img += amp * cv2.resize(noise, (WIDTH, HEIGHT), interpolation=cv2.INTER_CUBIC)
    return img


@dataclass(frozen=True)
class DrawnObject:
    """One object as drawn: its tight in-frame box and the share nearer objects left visible."""

    category_id: int
    box: tuple[int, int, int, int]  # x, y, w, h in pixels
    visible: float


@dataclass(frozen=True)
class _Placed:
    category_id: int
    distance: float  # rows below the horizon of the ground point: larger is nearer
    x: int  # patch position and size in pixels
    y: int
    w: int
    h: int


def _place(rng: np.random.Generator, category_id: int, scene: Scene, hz: float) -> _Placed | None:
    """Stand one object on the ground plane; None if too small to see or out of view.

    ``d`` (rows below the horizon, inversely proportional to distance) has density
    ``d ** -1.3``: most objects are far and small, as in FLIR where ~80% of boxes cover
    under 0.5% of the frame.
    """
    spec = CLASSES[category_id]
    lo, hi = 3.0**-0.3, (HEIGHT - hz + 120) ** -0.3
    d = float((lo - rng.random() * (lo - hi)) ** (-1 / 0.3))
    ppm = d / scene.cam_height
    side = spec.length is not None and rng.random() < (0.35 if spec.shape in ("car", "boxy") else 0.6)
    width_m = rng.uniform(*spec.length) if side and spec.length else rng.uniform(*spec.front[:2])
    w, h = round(width_m * ppm), round(rng.uniform(*spec.front[2:]) * ppm)
    if min(w, h) < _MIN_PIXELS or h > 3 * HEIGHT or w > 4 * WIDTH:
        return None
    lateral = rng.uniform(*spec.lateral) * (1 if rng.random() < 0.5 else -1)
    x = round(scene.vanish_x + lateral * ppm - w / 2)
    y = round(hz + d - rng.uniform(*spec.lift) * ppm - h)
    if x >= WIDTH or y >= HEIGHT or x + w <= 0 or y + h <= 0:
        return None
    return _Placed(category_id, d, x, y, w, h)


def _paste(
    img: np.ndarray, ids: np.ndarray, obj: _Placed, lab: np.ndarray, values: np.ndarray, index: int
) -> tuple[tuple[int, int, int, int], int] | None:
    """Paint the in-frame part of a patch; return its tight box and pixel count."""
    x0, y0 = max(obj.x, 0), max(obj.y, 0)
    x1, y1 = min(obj.x + obj.w, WIDTH), min(obj.y + obj.h, HEIGHT)
    sub = lab[y0 - obj.y : y1 - obj.y, x0 - obj.x : x1 - obj.x]
    mask = sub > 0
    if not mask.any():
        return None
    img[y0:y1, x0:x1][mask] = values[sub][mask]
    ids[y0:y1, x0:x1][mask] = index
    rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    box = (x0 + int(cols[0]), y0 + int(rows[0]), int(cols[-1] - cols[0] + 1), int(rows[-1] - rows[0] + 1))
    return box, int(mask.sum())


def _finish(rng: np.random.Generator, img: np.ndarray) -> np.ndarray:
    """Optics blur, vignetting, column fixed-pattern noise and temporal noise, to uint8."""
    img = cv2.GaussianBlur(img, (3, 3), 0.7) * _VIGNETTE
    img += rng.normal(0.0, 1.2, WIDTH).astype(np.float32)[None, :]
    img += rng.standard_normal((HEIGHT, WIDTH), dtype=np.float32) * np.float32(rng.uniform(1.5, 3.5))
    return np.clip(img + 0.5, 0, 255).astype(np.uint8)


_R2 = np.add.outer(np.linspace(-1, 1, HEIGHT) ** 2, np.linspace(-1, 1, WIDTH) ** 2)
_VIGNETTE = (1.0 - 0.06 * _R2).astype(np.float32)  # corners a little darker, as thermal optics make them


def render_frame(
    rng: np.random.Generator, scene: Scene, frame_pos: int, *, empty: bool = False
) -> tuple[np.ndarray, list[DrawnObject]]:
    """Draw one frame: far objects first so nearer ones occlude them.

    Returns the ``HEIGHT x WIDTH`` uint8 image and the drawn objects, far to near.
    """
    hz = scene.horizon + rng.normal(0.0, 2.0)
    background = _background(rng, scene, hz, frame_pos)
    img = background.copy()
    n = 0 if empty else int(rng.poisson(scene.density))
    placed = [p for c in rng.choice(_IDS, n, p=_P) if (p := _place(rng, int(c), scene, hz)) is not None]
    placed.sort(key=lambda p: p.distance)
    ids = np.zeros((HEIGHT, WIDTH), np.int16)
    drawn: list[tuple[int, tuple[int, int, int, int], int]] = []
    for obj in placed:
        spec = CLASSES[obj.category_id]
        lab, heat = SHAPES[spec.shape](rng, obj.w, obj.h)
        if rng.random() < 0.5:
            lab = lab[:, ::-1]
        x0, y0 = min(max(obj.x, 0), WIDTH - 1), min(max(obj.y, 0), HEIGHT - 1)
        # The warmest row under the box: objects stay warmer than their surroundings top to bottom.
        base = background[y0 : max(obj.y + obj.h, y0 + 1), x0 : max(obj.x + obj.w, x0 + 1)].mean(1).max()
        contrast = rng.uniform(*spec.contrast) * (1.2 if scene.night else 1.0)
        got = _paste(img, ids, obj, lab, (base + contrast * heat).astype(np.float32), len(drawn) + 1)
        if got is not None:
            drawn.append((obj.category_id, got[0], got[1]))
    seen = np.bincount(ids.ravel(), minlength=len(drawn) + 1)
    objects = [DrawnObject(c, box, float(seen[k] / total)) for k, (c, box, total) in enumerate(drawn, 1)]
    return _finish(rng, img), objects
