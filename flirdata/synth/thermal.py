"""Rendering of synthetic thermal frames: cold sky, warm road, skyline and warm objects.

Pure numpy/OpenCV, no files and no COCO: ``render_frame`` draws one 640x512 8-bit frame from a
generator and returns, for every object it drew, the category id, the tight pixel box of the
object's own mask (clipped to the frame) and how much of it nearer objects left visible.
Objects stand on a flat ground plane seen by a pinhole camera, so size follows distance and
nearer objects occlude farther ones.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import cv2
import numpy as np

__all__ = ["WIDTH", "HEIGHT", "CLASSES", "SHAPES", "ObjectClass", "Scene", "DrawnObject", "make_scene", "render_frame"]

WIDTH, HEIGHT = 640, 512
_SKYLINE_PAD = 400  # extra skyline columns, so the view can drift along a video
_MIN_PIXELS = 3  # objects smaller than this (either side) are neither drawn nor annotated

# A shape draws part labels into an h x w patch; ``heat[label]`` scales the object's contrast.
Shape = Callable[[np.random.Generator, int, int], tuple[np.ndarray, np.ndarray]]


def _px(v: float, n: int) -> int:
    return int(round(v * (n - 1)))


def _rect(lab: np.ndarray, x0: float, y0: float, x1: float, y1: float, part: int) -> None:
    h, w = lab.shape
    cv2.rectangle(lab, (_px(x0, w), _px(y0, h)), (_px(x1, w), _px(y1, h)), part, -1)


def _oval(lab: np.ndarray, cx: float, cy: float, rx: float, ry: float, part: int) -> None:
    h, w = lab.shape
    cv2.ellipse(lab, (_px(cx, w), _px(cy, h)), (_px(rx, w), _px(ry, h)), 0, 0, 360, part, -1)


def _poly(lab: np.ndarray, points: list[tuple[float, float]], part: int) -> None:
    h, w = lab.shape
    cv2.fillPoly(lab, [np.array([(_px(x, w), _px(y, h)) for x, y in points], np.int32)], part)


def _heat(*values: float) -> np.ndarray:  # the heat of parts 1, 2, ...; 0 is outside
    return np.array((0.0, *values), np.float32)


def draw_person(rng: np.random.Generator, w: int, h: int) -> tuple[np.ndarray, np.ndarray]:
    """Head, torso with arms, two legs apart by a random stride; skin is the warmest part."""
    lab = np.zeros((h, w), np.uint8)
    s = rng.uniform(0.0, 0.3)
    _poly(lab, [(0.1, 0.15), (0.9, 0.15), (0.8, 0.56), (0.2, 0.56)], 1)
    _poly(lab, [(0.22, 0.5), (0.48, 0.5), (0.5 - s, 1.0), (0.28 - s, 1.0)], 3)
    _poly(lab, [(0.52, 0.5), (0.78, 0.5), (0.72 + s, 1.0), (0.5 + s, 1.0)], 3)
    _oval(lab, 0.5, 0.085, 0.2, 0.085, 2)
    return lab, _heat(0.75, 1.0, 0.85)


def draw_car(rng: np.random.Generator, w: int, h: int) -> tuple[np.ndarray, np.ndarray]:
    """Body, cabin with cold windows (they mirror the sky), warm tyres and lamps."""
    lab = np.zeros((h, w), np.uint8)
    if w > 2 * h:  # side view
        _poly(lab, [(0.22, 0.0), (0.68, 0.0), (0.84, 0.42), (0.08, 0.42)], 1)
        _rect(lab, 0.0, 0.38, 1.0, 0.8, 1)
        _poly(lab, [(0.26, 0.1), (0.65, 0.1), (0.76, 0.38), (0.17, 0.38)], 3)
        for cx in (0.18, 0.8):
            _oval(lab, cx, 0.8, 0.09, 0.2, 2)
    else:  # seen from behind or in front
        _poly(lab, [(0.14, 0.0), (0.86, 0.0), (0.96, 0.42), (0.04, 0.42)], 1)
        _rect(lab, 0.0, 0.38, 1.0, 0.84, 1)
        _poly(lab, [(0.2, 0.08), (0.8, 0.08), (0.87, 0.36), (0.13, 0.36)], 3)
        for x0 in (0.03, 0.8):
            _rect(lab, x0, 0.8, x0 + 0.17, 1.0, 2)
            _rect(lab, x0 + 0.01, 0.46, x0 + 0.13, 0.56, 2)
    return lab, _heat(0.6, 1.0, -0.1)


def draw_boxy(rng: np.random.Generator, w: int, h: int) -> tuple[np.ndarray, np.ndarray]:
    """Bus, truck, train, van: a tall box with a window band, a cab sometimes, hot wheels."""
    lab = np.zeros((h, w), np.uint8)
    if w > 1.6 * h:
        cab = rng.random() < 0.5
        _rect(lab, 0.0, 0.0, 0.76 if cab else 1.0, 0.86, 1)
        if cab:
            _poly(lab, [(0.78, 0.25), (0.93, 0.25), (1.0, 0.55), (1.0, 0.86), (0.78, 0.86)], 1)
        _rect(lab, 0.82 if cab else 0.04, 0.32 if cab else 0.14, 0.93, 0.46 if cab else 0.4, 3)
        for cx in np.linspace(0.08, 0.9, max(2, round(w / h))):
            _oval(lab, cx, 0.86, min(0.05, 0.4 * h / w), 0.14, 2)
    else:
        _rect(lab, 0.0, 0.0, 1.0, 0.9, 1)
        _rect(lab, 0.1, 0.08, 0.9, 0.38, 3)
        _rect(lab, 0.04, 0.86, 0.22, 1.0, 2)
        _rect(lab, 0.78, 0.86, 0.96, 1.0, 2)
    return lab, _heat(0.5, 1.0, -0.2)


def _two_wheels(lab: np.ndarray, radius: float) -> tuple[tuple[int, int], tuple[int, int]]:
    """Draw two wheel rims touching the patch's bottom corners; return the hubs."""
    h, w = lab.shape
    r = max(1, int(radius))
    t = max(1, r // 5)
    hubs = ((r, h - 1 - r), (w - 1 - r, h - 1 - r))
    for hub in hubs:
        cv2.circle(lab, hub, max(1, r - t // 2), 1, t)
    return hubs


def draw_two_wheeler(rng: np.random.Generator, w: int, h: int) -> tuple[np.ndarray, np.ndarray]:
    """Bike, motorbike or scooter: two rims, a frame and handlebars; the hub area runs hot."""
    lab = np.zeros((h, w), np.uint8)
    if w < 0.8 * h:  # head-on: a thin tyre under wide handlebars
        _rect(lab, 0.35, 0.3, 0.65, 1.0, 1)
        _rect(lab, 0.0, 0.0, 1.0, 0.08, 1)
        _rect(lab, 0.4, 0.45, 0.6, 0.7, 2)
        return lab, _heat(0.5, 1.0)
    back, front = _two_wheels(lab, min(0.22 * w, 0.4 * h))
    t = max(1, w // 30)
    seat, bar = (int(0.4 * w), int(0.25 * h)), (int(0.72 * w), 0)
    for a, b in ((back, seat), (seat, front), (back, (front[0] - w // 4, front[1])), (front, bar)):
        cv2.line(lab, a, b, 1, t)
    cv2.line(lab, (bar[0] - w // 10, 0), (bar[0] + w // 12, 0), 1, t)
    _oval(lab, 0.5, 0.68, 0.1 + 0.1 * rng.random(), 0.1, 2)
    return lab, _heat(0.5, 1.0)


def draw_light(rng: np.random.Generator, w: int, h: int) -> tuple[np.ndarray, np.ndarray]:
    """Traffic light: a housing with three lamps, the lit one much hotter."""
    lab = np.ones((h, w), np.uint8)
    lit = int(rng.integers(3))
    r = int(0.3 * min(w, h))
    for k in range(3):
        centre = (w // 2, int((k + 0.5) * h / 3)) if h >= w else (int((k + 0.5) * w / 3), h // 2)
        cv2.circle(lab, centre, r, 2 if k == lit else 3, -1)
    return lab, _heat(0.35, 1.3, 0.6)


def draw_sign(rng: np.random.Generator, w: int, h: int) -> tuple[np.ndarray, np.ndarray]:
    """A plate: rectangle, diamond, disc or octagon, evenly warmed by the sun."""
    lab = np.zeros((h, w), np.uint8)
    kind = int(rng.integers(4))
    if kind == 0:
        lab[:] = 1
    elif kind == 1:
        _poly(lab, [(0.5, 0.0), (1.0, 0.5), (0.5, 1.0), (0.0, 0.5)], 1)
    elif kind == 2:
        _oval(lab, 0.5, 0.5, 0.5, 0.5, 1)
    else:
        a = np.pi / 8 + np.arange(8) * np.pi / 4
        _poly(lab, (0.5 + 0.5 / np.cos(np.pi / 8) * np.stack([np.cos(a), np.sin(a)], 1)).tolist(), 1)
    return lab, _heat(1.0)


def draw_hydrant(rng: np.random.Generator, w: int, h: int) -> tuple[np.ndarray, np.ndarray]:
    """Domed post with side nozzles."""
    lab = np.zeros((h, w), np.uint8)
    _rect(lab, 0.22, 0.18, 0.78, 1.0, 1)
    _oval(lab, 0.5, 0.2, 0.3, 0.2, 1)
    _rect(lab, 0.0, 0.4, 1.0, 0.55, 2)
    return lab, _heat(0.8, 1.0)


def draw_dog(rng: np.random.Generator, w: int, h: int) -> tuple[np.ndarray, np.ndarray]:
    """Side view: body, head, four legs; fur keeps it a little cooler than skin."""
    lab = np.zeros((h, w), np.uint8)
    _oval(lab, 0.45, 0.45, 0.33, 0.2, 1)
    _oval(lab, 0.84, 0.22, 0.16, 0.22, 2)
    for x0 in (0.15, 0.3, 0.55, 0.68):
        _rect(lab, x0, 0.5, x0 + 0.08, 1.0, 1)
    return lab, _heat(0.8, 1.0)


def draw_stroller(rng: np.random.Generator, w: int, h: int) -> tuple[np.ndarray, np.ndarray]:
    """Hooded basket on small wheels with a push handle; the child inside is warm."""
    lab = np.zeros((h, w), np.uint8)
    _poly(lab, [(0.05, 0.15), (0.55, 0.15), (0.7, 0.45), (0.65, 0.7), (0.1, 0.7)], 1)
    _oval(lab, 0.35, 0.45, 0.15, 0.12, 2)
    _two_wheels(lab, min(0.12 * w, 0.15 * h))
    cv2.line(lab, (int(0.65 * w), int(0.7 * h)), (w - 1, 0), 1, max(1, w // 25))
    return lab, _heat(0.5, 1.0)


def draw_skateboard(rng: np.random.Generator, w: int, h: int) -> tuple[np.ndarray, np.ndarray]:
    """Flat deck on two wheels, warmed by the road."""
    lab = np.zeros((h, w), np.uint8)
    _rect(lab, 0.0, 0.0, 1.0, 0.5, 1)
    for x0 in (0.12, 0.72):
        _rect(lab, x0, 0.5, x0 + 0.16, 1.0, 2)
    return lab, _heat(0.7, 1.0)


SHAPES: dict[str, Shape] = {
    "person": draw_person,
    "car": draw_car,
    "boxy": draw_boxy,
    "two_wheeler": draw_two_wheeler,
    "light": draw_light,
    "sign": draw_sign,
    "hydrant": draw_hydrant,
    "dog": draw_dog,
    "stroller": draw_stroller,
    "skateboard": draw_skateboard,
}


@dataclass(frozen=True)
class ObjectClass:
    """How one FLIR class is sized, placed and warmed (metres, intensity levels)."""

    name: str
    shape: str  # key of SHAPES
    # Placement weight: FLIR v2 train counts (rare classes floored at 50), raised for thin or
    # small classes whose far instances are too small to draw, so annotated counts match FLIR.
    weight: float
    front: tuple[float, float, float, float]  # width lo, hi, height lo, hi seen head-on
    length: tuple[float, float] | None  # width range seen side-on; None: always head-on
    lateral: tuple[float, float]  # |offset| from the camera's axis
    lift: tuple[float, float]  # height of the bottom edge above the ground
    contrast: tuple[float, float]  # intensity above the local background


_G = (0.0, 0.0)  # stands on the ground
CLASSES: dict[int, ObjectClass] = {
    cid: ObjectClass(*row)
    for cid, row in {
        1: ("person", "person", 85000, (0.45, 0.65, 1.5, 1.9), None, (1.5, 12), _G, (45, 80)),
        2: ("bike", "two_wheeler", 9500, (0.5, 0.6, 1.0, 1.1), (1.6, 1.8), (1.5, 10), _G, (20, 35)),
        3: ("car", "car", 73623, (1.7, 1.9, 1.4, 1.6), (4.0, 4.8), (0, 9), _G, (20, 40)),
        4: ("motor", "two_wheeler", 1116, (0.7, 0.9, 1.1, 1.3), (1.9, 2.2), (0, 8), _G, (25, 45)),
        6: ("bus", "boxy", 2245, (2.5, 2.6, 3.0, 3.3), (10, 12.5), (0, 9), _G, (18, 35)),
        7: ("train", "boxy", 50, (3.0, 3.2, 3.8, 4.2), (20, 26), (8, 20), _G, (15, 30)),
        8: ("truck", "boxy", 829, (2.4, 2.6, 3.0, 3.8), (6, 9), (0, 9), _G, (18, 35)),
        10: ("light", "light", 40000, (0.3, 0.4, 0.8, 1.1), None, (3, 12), (3.5, 5.5), (35, 70)),
        11: ("hydrant", "hydrant", 2000, (0.35, 0.45, 0.6, 0.8), None, (3, 9), _G, (20, 35)),
        12: ("sign", "sign", 33000, (0.6, 1.2, 0.6, 0.9), None, (3, 12), (1.8, 3.0), (18, 35)),
        17: ("dog", "dog", 50, (0.3, 0.4, 0.5, 0.7), (0.7, 1.0), (1.5, 10), _G, (35, 60)),
        37: ("skateboard", "skateboard", 50, (0.2, 0.25, 0.1, 0.12), (0.75, 0.85), (1.5, 8), _G, (18, 30)),
        73: ("stroller", "stroller", 50, (0.55, 0.65, 0.95, 1.1), (0.8, 1.0), (1.5, 10), _G, (18, 30)),
        77: ("scooter", "two_wheeler", 50, (0.4, 0.5, 1.0, 1.2), (0.9, 1.2), (1.5, 10), _G, (18, 30)),
        79: ("other vehicle", "boxy", 1373, (2.0, 2.4, 1.8, 2.6), (4.5, 6.0), (0, 9), _G, (18, 35)),
    }.items()
}
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
