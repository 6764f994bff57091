"""The floor: the bare pixel work of the preset in use, next to the pipeline's CPU per image.

The floor of one image is what no pipeline can avoid, as bare library calls on the user's own
frames at one thread: the ``simplejpeg`` decode, one ``cv2.warpAffine`` to the output size (its
matrix drawn from the preset's flip, scale, shift and rotation ranges, as OpenCV's cost depends
on it), one
``cv2.LUT``, and the blur and the noise weighted by the preset's probabilities of drawing them
(``p`` of the blur's ``OneOf`` and of the noise step: a 5-pixel Gaussian and motion blur half
each, the noise bank's ``cv2.addWeighted``). With ``cache="ram"`` the frames are decoded already,
so that floor has no decode. The pipeline's cost is ``collate_detection([dataset[i], ...])`` over
the same images, so the ratio is the price of everything that is not pixel work: Python per
sample, box maths, reseeding, targets, collate.

Both are CPU time of this process (``time.process_time``), measured in turns over ``repeats``
rounds, and each ratio is taken within one round: on a shared machine the ratio holds where
wall-clock rates drift. The ratio reported is the median over rounds.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

__all__ = ["FLOOR_STEPS", "floor_weights", "measure_floor", "format_floor"]

FLOOR_STEPS = ("decode", "warpAffine", "LUT", "blur", "noise")
BLUR_NAMES = frozenset({"GaussianBlur", "MotionBlur", "Blur", "MedianBlur"})
NOISE_NAMES = frozenset({"NoiseBank", "GaussNoise", "ISONoise"})
INTENSITY_NAMES = frozenset({"IntensityLUT", "RandomBrightnessContrast", "RandomGamma", "ColorJitter"})


def _nodes(transform: Any, p: float = 1.0, forced: bool = False) -> list[tuple[Any, float]]:
    """Every leaf of a pipeline tree with the probability that it runs per image.

    A ``OneOf`` runs with its ``p`` and then forces one child, drawn by the children's weights.
    """
    children = getattr(transform, "transforms", None) or []
    own = 1.0 if forced else float(getattr(transform, "p", 1.0))
    if not children:
        return [(transform, p * own)]
    weights = getattr(transform, "transforms_ps", None)
    if weights is None:  # a Compose-like sequence: every child in turn, each by its own p
        return [node for child in children for node in _nodes(child, p * own)]
    return [node for child, w in zip(children, weights, strict=True) for node in _nodes(child, p * own * w, True)]


def floor_weights(transform: Any) -> dict[str, float]:
    """How often each floor step runs per image: decode and warp once, the LUT once if the preset changes
    intensity, blur and noise by the preset's ``p``."""
    nodes = _nodes(transform)
    lut = float(any(type(node).__name__ in INTENSITY_NAMES for node, _ in nodes))
    blur = sum(p for node, p in nodes if type(node).__name__ in BLUR_NAMES)
    noise = sum(p for node, p in nodes if type(node).__name__ in NOISE_NAMES)
    return {"decode": 1.0, "warpAffine": 1.0, "LUT": lut, "blur": min(blur, 1.0), "noise": min(noise, 1.0)}


def _geometry(transform: Any) -> Any:
    """The preset's ``FusedAffine``, or None."""
    return next((node for node, _ in _nodes(transform) if type(node).__name__ == "FusedAffine"), None)


def _output_size(transform: Any, frame: np.ndarray) -> tuple[int, int]:
    """(width, height) the preset writes: a ``FusedAffine``'s or letterbox's size, else the frame's."""
    for node, _ in _nodes(transform):
        size = getattr(node, "size", None)
        if size is not None:
            return int(size[1]), int(size[0])
    return frame.shape[1], frame.shape[0]


def _warp_matrices(geometry: Any, shape: tuple[int, int], count: int) -> list[np.ndarray]:
    """One warp per frame drawn as the preset draws a warped one: OpenCV's cost depends on the matrix
    (a rotation costs 20x a shift), so a fixed matrix would not be the preset's work.

    ``geometry`` is the preset's ``FusedAffine`` (its ranges), or None for the thermal preset's ranges.
    """
    from flirdata.fused import FusedAffine, affine_matrix

    geometry = geometry if isinstance(geometry, FusedAffine) else FusedAffine()
    rng = np.random.default_rng(0)
    height, width = shape
    flip = np.array([[-1.0, 0.0, width], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]])
    half, back = np.array([[1.0, 0, -0.5], [0, 1, -0.5], [0, 0, 1]]), np.array([[1.0, 0, 0.5], [0, 1, 0.5], [0, 0, 1]])
    matrices = []
    for _ in range(count):
        tx, ty = rng.uniform(*geometry.translate_percent, size=2)
        scale = tuple(rng.uniform(*geometry.scale, size=2))
        matrix = affine_matrix(shape, (int(tx * width), int(ty * height)), scale, rng.uniform(*geometry.rotate))
        matrix = matrix @ flip if rng.random() < geometry.flip_p else matrix
        matrices.append((half @ matrix @ back)[:2])
    return matrices


def _pixel_steps(
    frames: Sequence[np.ndarray], out_wh: tuple[int, int], geometry: Any
) -> dict[str, Callable[[int], Any]]:
    """One bare call per floor step (decode apart), on frame ``j``."""
    import cv2

    from flirdata.fused import noise_bank

    matrices = _warp_matrices(geometry, frames[0].shape[:2], len(frames))
    table = np.clip(np.arange(256) * 1.1 + 8, 0, 255).astype(np.uint8)
    motion = np.zeros((5, 5), np.float32)
    motion[2, :] = 1 / 5

    def warp(j: int) -> np.ndarray:
        return cv2.warpAffine(frames[j], matrices[j], out_wh, flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT)

    def blur(j: int) -> np.ndarray:  # the preset draws either blur with equal weight: take turns
        if j % 2:
            return cv2.filter2D(frames[j], -1, motion)
        return cv2.GaussianBlur(frames[j], (5, 5), 0)

    def noise(j: int) -> np.ndarray:
        image = frames[j]
        crop = noise_bank(image.shape, 0.5, 0)[: image.shape[0], : image.shape[1]]
        return cv2.addWeighted(image, 1.0, crop, 6.0, -0.5, dtype=cv2.CV_8U)

    return {"warpAffine": warp, "LUT": lambda j: cv2.LUT(frames[j], table), "blur": blur, "noise": noise}


def _cpu_ms(call: Callable[[int], Any], count: int) -> float:
    start = time.process_time()
    for j in range(count):
        call(j)
    return (time.process_time() - start) * 1e3 / count


def _pipeline_ms(dataset: Any, rows: Sequence[int], batch_size: int) -> float:
    from flirdata.collate import collate_detection

    start = time.process_time()
    for k in range(0, len(rows), batch_size):
        collate_detection([dataset[i] for i in rows[k : k + batch_size]])
    return (time.process_time() - start) * 1e3 / len(rows)


def measure_floor(dataset: Any, images: int, repeats: int = 5, batch_size: int = 32) -> dict[str, Any]:
    """The floor and the pipeline's CPU ms per image on the first ``images`` images of ``dataset``.

    Call inside ``single_threaded()``. With a RAM cache the dataset is read once first (filling
    it) and the floor has no decode. Returns per-step ms (unweighted), the weights, and per
    round the floor, the pipeline and their ratio; ``ratio`` is the median of the rounds'.
    """
    import simplejpeg

    from flirdata.images import read_image_bytes

    rows = list(range(min(images, len(dataset))))
    files = [read_image_bytes(dataset.image_path(i)) for i in rows]
    colour = "GRAY" if dataset.channels == 1 else "RGB"
    frames = [dataset.load_raw(i)[0] for i in rows]  # fills a RAM cache; the pixel steps' input
    _pipeline_ms(dataset, rows[:batch_size], batch_size)  # warm-up: first calls, the noise bank
    weights = floor_weights(dataset.transform)
    cached = getattr(dataset, "_cache", None) is not None
    if cached:
        weights["decode"] = 0.0
    steps = _pixel_steps(frames, _output_size(dataset.transform, frames[0]), _geometry(dataset.transform))
    steps["decode"] = lambda j: simplejpeg.decode_jpeg(files[j], colorspace=colour)
    rounds = []
    for _ in range(repeats):
        step_ms = {name: _cpu_ms(steps[name], len(rows)) for name in FLOOR_STEPS if weights[name] > 0}
        pipeline = _pipeline_ms(dataset, rows, batch_size)
        floor = sum(weights[name] * ms for name, ms in step_ms.items())
        rounds.append({"steps": step_ms, "floor": floor, "pipeline": pipeline, "ratio": pipeline / floor})
    median = statistics.median(r["ratio"] for r in rounds)
    return {"images": len(rows), "cache": cached, "weights": weights, "rounds": rounds, "ratio": median}


def format_floor(result: dict[str, Any]) -> str:
    """One line: the floor's steps, the pipeline, and the ratio (the median round's figures)."""
    best = min(result["rounds"], key=lambda r: abs(r["ratio"] - result["ratio"]))
    weights = result["weights"]
    parts = " + ".join(
        f"{name} {ms:.3f}" if weights[name] == 1 else f"{weights[name]:.2f}x{name} {ms:.3f}"
        for name, ms in best["steps"].items()
    )
    spread = [r["ratio"] for r in result["rounds"]]
    return (
        f"floor{' (RAM cache, no decode)' if result['cache'] else ''}: {best['floor']:.3f} CPU ms/image ({parts}); "
        f"pipeline {best['pipeline']:.3f} CPU ms/image = {result['ratio']:.2f}x the floor "
        f"(median of {len(spread)} rounds, {min(spread):.2f}-{max(spread):.2f}; {result['images']} images)"
    )
