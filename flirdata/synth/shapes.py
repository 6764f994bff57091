"""The object classes FLIR annotates, drawn as thermal silhouettes: shapes, sizes, placement, heat.

A shape draws part labels into an ``h x w`` patch from a generator; ``heat[label]`` scales each
part's contrast. ``CLASSES`` says, per FLIR category id, how an object is sized (metres), placed
and warmed, and how often it appears.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import cv2
import numpy as np

__all__ = ["CLASSES", "SHAPES", "ObjectClass", "Shape"]

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
