"""Pictures of samples with their boxes, for a person to judge: ``draw_boxes`` and ``flirdata preview``.

Drawing is done with OpenCV at the pixel grid of the (scaled) sample, not with a plotting
library that would resample the image after the boxes are drawn: a box that is one pixel off
should look one pixel off. Colours are saturated and every line has a dark outline, so boxes
stay visible on both black (cold) and white (hot) thermal pixels. RGB samples are drawn in
their own colours.
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from flirdata.errors import DataError, ImageError
from flirdata.images import as_hwc

__all__ = [
    "GAP",
    "OUTLINE",
    "PALETTE",
    "class_colour",
    "draw_boxes",
    "choose_indices",
    "render_tile",
    "tile_grid",
    "render_preview",
    "write_image",
    "run_command",
]

RGB = tuple[int, int, int]

# Label 1, 2, 3 (person, bike, car: most FLIR boxes) get the three most distinct colours.
PALETTE: tuple[RGB, ...] = (
    (255, 48, 48),  # red
    (255, 225, 0),  # yellow
    (0, 200, 255),  # sky blue
    (60, 235, 60),  # green
    (255, 70, 220),  # magenta
    (255, 140, 0),  # orange
    (150, 110, 255),  # violet
    (0, 255, 190),  # aqua
    (190, 255, 0),  # lime
    (255, 120, 150),  # pink
)
OUTLINE: RGB = (0, 0, 0)
BACKGROUND: RGB = (28, 28, 28)
TITLE_BAR: RGB = (50, 50, 50)
TITLE_TEXT: RGB = (235, 235, 235)
GAP = 6  # pixels between tiles and around the grid
FONT = cv2.FONT_HERSHEY_SIMPLEX


def class_colour(label: int) -> RGB:
    """The colour of a label: fixed per class, so a class looks the same in every tile."""
    return PALETTE[(int(label) - 1) % len(PALETTE)]


def _as_rgb(image: Any) -> np.ndarray:
    """A fresh ``uint8 [H, W, 3]`` copy of a gray ``[H, W]``/``[1, H, W]``/``[H, W, 1]`` or RGB image."""
    arr = np.asarray(image)
    if arr.dtype != np.uint8:
        raise ValueError(f"image must be uint8, got {arr.dtype}")
    if arr.ndim == 3 and arr.shape[0] == 1:
        arr = arr[0]
    elif arr.ndim == 3 and arr.shape[2] == 1:
        arr = arr[:, :, 0]
    if arr.ndim == 2:
        return cv2.cvtColor(np.ascontiguousarray(arr), cv2.COLOR_GRAY2RGB)
    if arr.ndim == 3 and arr.shape[2] == 3:
        return np.array(arr, copy=True, order="C")
    raise ValueError(f"image must be [H, W], [1, H, W] or [H, W, 3], got shape {arr.shape}")


def _class_name(label: int, classes: Sequence[str] | None) -> str:
    if classes is not None and 0 <= label < len(classes):
        return str(classes[label])
    return f"#{label}"


def _put_tag(canvas: np.ndarray, text: str, x: int, y: int, colour: RGB, scale: float) -> None:
    """A filled name tag sitting on a box's top edge ``y`` (inside the box where there is no room above)."""
    (tw, th), base = cv2.getTextSize(text, FONT, scale, 1)
    h, w = canvas.shape[:2]
    tag_h = th + base + 2
    top = y - tag_h if y >= tag_h else int(np.clip(y, 0, max(h - tag_h, 0)))
    x = int(np.clip(x, 0, max(w - tw - 4, 0)))
    cv2.rectangle(canvas, (x, top), (x + tw + 3, top + tag_h - 1), colour, cv2.FILLED)
    cv2.putText(canvas, text, (x + 2, top + th + 1), FONT, scale, OUTLINE, 1, cv2.LINE_AA)


def draw_boxes(
    image_gray: Any,
    boxes_xyxy: Any,
    labels: Any,
    classes: Sequence[str] | None = None,
    *,
    thickness: int | None = None,
    font_scale: float | None = None,
) -> np.ndarray:
    """Draw corner boxes and their class names on a copy of an image.

    Args:
        image_gray: ``uint8`` image, ``[H, W]``, ``[1, H, W]`` (a dataset tensor) or ``[H, W, 3]`` RGB.
        boxes_xyxy: ``[N, 4]`` boxes ``[x1, y1, x2, y2]`` in pixels (numpy or torch).
        labels: ``[N]`` integer labels; ``classes[label]`` is drawn next to each box.
        classes: names indexed by label (``FlirDetection.classes``); ``None`` draws ``#label``.
        thickness: line width in pixels; default scales with the image.
        font_scale: OpenCV font scale of the names; default scales with the image.

    Returns:
        A new ``uint8 [H, W, 3]`` RGB image; the input is not modified.
    """
    canvas = _as_rgb(image_gray)
    boxes = np.asarray(boxes_xyxy, dtype=np.float64).reshape(-1, 4)
    labels = np.asarray(labels, dtype=np.int64).reshape(-1)
    if len(boxes) != len(labels):
        raise ValueError(f"got {len(boxes)} boxes but {len(labels)} labels")
    short_side = min(canvas.shape[:2])
    thickness = thickness or max(1, round(short_side / 256))
    font_scale = font_scale or max(0.35, short_side / 900)
    keep = np.isfinite(boxes).all(axis=1)
    # x2/y2 are exclusive edges; cv2 draws inclusive pixels.
    rects = [((x1, y1), (max(x1, x2 - 1), max(y1, y2 - 1))) for x1, y1, x2, y2 in np.rint(boxes[keep]).astype(int)]
    colours = [class_colour(label) for label in labels[keep]]
    # Names first, boxes on top: in a crowd of small boxes a neighbour's name may be crossed
    # by a line, but no box is ever hidden, and the boxes are what the picture is for.
    for ((x1, y1), _), label, colour in zip(rects, labels[keep], colours, strict=True):
        name = _class_name(int(label), classes)
        _put_tag(canvas, name, x1 - thickness // 2, y1 - thickness // 2 - 1, colour, font_scale)
    for p1, p2 in rects:
        cv2.rectangle(canvas, p1, p2, OUTLINE, thickness + 2, cv2.LINE_8)
    for (p1, p2), colour in zip(rects, colours, strict=True):
        cv2.rectangle(canvas, p1, p2, colour, thickness, cv2.LINE_8)
    return canvas


def choose_indices(length: int, n: int, seed: int = 0) -> np.ndarray:
    """``min(n, length)`` distinct sample indices, sorted, drawn from ``seed`` alone.

    The epoch is deliberately not part of the draw: previews of epoch 0 and epoch 1 show the
    same images, so the difference between them is the augmentation.
    """
    if n < 1:
        raise ValueError(f"n must be at least 1, got {n}")
    rng = np.random.default_rng([0x50726576, int(seed)])  # "Prev": apart from other seed users
    return np.sort(rng.choice(length, size=min(n, length), replace=False))


def _fit_text(text: str, width: int, scale: float) -> str:
    """``text`` shortened in the middle with "..." until it fits ``width`` pixels.

    The middle, because FLIR file names differ at both ends (video id, frame number, hash).
    """
    cut = 0
    while len(text) - cut > 6 and cv2.getTextSize(_elide(text, cut), FONT, scale, 1)[0][0] > width:
        cut += 1
    return _elide(text, cut)


def _elide(text: str, cut: int) -> str:
    if cut == 0:
        return text
    keep = len(text) - cut - 3
    return text[: (keep + 1) // 2] + "..." + text[len(text) - keep // 2 :]


def _file_name(dataset: Any, image_id: int) -> str | None:
    """The file a sample came from, found by its image id (a skipped sample is replaced)."""
    index = getattr(dataset, "index", None)
    rows = np.flatnonzero(index.image_ids == image_id) if index is not None else []
    return Path(index.file_name(int(rows[0]))).name if len(rows) else None


def _title_bar(width: int, left: str, right: str) -> np.ndarray:
    """A bar with ``right`` flush right and ``left`` shortened to fit the rest."""
    scale = max(0.4, width / 1000)
    (_, th), base = cv2.getTextSize("Ag", FONT, scale, 1)
    bar = np.empty((th + base + 8, width, 3), dtype=np.uint8)
    bar[:] = TITLE_BAR
    right_w = cv2.getTextSize(right, FONT, scale, 1)[0][0]
    cv2.putText(bar, right, (max(width - right_w - 4, 4), th + 4), FONT, scale, TITLE_TEXT, 1, cv2.LINE_AA)
    left = _fit_text(left, width - right_w - 20, scale)
    cv2.putText(bar, left, (4, th + 4), FONT, scale, TITLE_TEXT, 1, cv2.LINE_AA)
    return bar


def render_tile(dataset: Any, i: int, epoch: int | None = None, tile_width: int | None = 480) -> np.ndarray:
    """Sample ``i`` (augmented as in ``epoch``) with its boxes under a title bar, RGB ``uint8``.

    ``tile_width`` scales the sample before drawing, so lines and text stay sharp; ``None``
    keeps the sample's own size.
    """
    image, target = dataset.sample(i, epoch) if hasattr(dataset, "sample") else dataset[i]
    pixels = as_hwc(np.asarray(image))
    boxes = np.asarray(target["boxes"], dtype=np.float64).reshape(-1, 4)
    scale = tile_width / pixels.shape[1] if tile_width else 1.0
    if scale != 1.0:
        size = (int(tile_width), max(1, round(pixels.shape[0] * scale)))
        pixels = cv2.resize(pixels, size, interpolation=cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR)
        boxes = boxes * scale
    drawn = draw_boxes(pixels, boxes, target["labels"], getattr(dataset, "classes", None))
    image_id = int(target.get("image_id", i))
    count = f"{len(boxes)} box" + ("" if len(boxes) == 1 else "es")
    name = _file_name(dataset, image_id) or f"sample {i}"
    return np.concatenate([_title_bar(drawn.shape[1], name, f"id={image_id}  {count}"), drawn], axis=0)


def tile_grid(tiles: Sequence[np.ndarray], cols: int | None = None, caption: str | None = None) -> np.ndarray:
    """Lay RGB tiles out row by row, ``GAP`` pixels apart, under an optional caption line.

    Cells take the size of the largest tile, so tiles of a user pipeline without a fixed
    output size still line up. ``cols`` defaults to a near-square grid.
    """
    if not tiles:
        raise ValueError("tile_grid needs at least one tile")
    cols = max(1, min(cols or math.ceil(math.sqrt(len(tiles))), len(tiles)))
    rows = math.ceil(len(tiles) / cols)
    cell_h = max(t.shape[0] for t in tiles)
    cell_w = max(t.shape[1] for t in tiles)
    width = cols * cell_w + (cols + 1) * GAP
    head = _caption_bar(caption, width) if caption else np.zeros((0, width, 3), dtype=np.uint8)
    grid = np.empty((rows * cell_h + (rows + 1) * GAP, width, 3), dtype=np.uint8)
    grid[:] = BACKGROUND
    for k, tile in enumerate(tiles):
        y = GAP + (k // cols) * (cell_h + GAP)
        x = GAP + (k % cols) * (cell_w + GAP)
        grid[y : y + tile.shape[0], x : x + tile.shape[1]] = tile
    return np.concatenate([head, grid], axis=0)


def _caption_bar(caption: str, width: int) -> np.ndarray:
    scale = max(0.5, width / 2400)
    (_, th), base = cv2.getTextSize("Ag", FONT, scale, 1)
    bar = np.empty((th + base + 2 * GAP + 4, width, 3), dtype=np.uint8)
    bar[:] = BACKGROUND
    text = _fit_text(caption, width - 2 * GAP, scale)
    cv2.putText(bar, text, (GAP, GAP + th + 2), FONT, scale, TITLE_TEXT, 1, cv2.LINE_AA)
    return bar


def render_preview(
    dataset: Any,
    n: int = 16,
    *,
    seed: int = 0,
    epoch: int | None = None,
    cols: int | None = None,
    tile_width: int | None = 480,
    caption: str | None = None,
) -> np.ndarray:
    """A grid of ``min(n, len(dataset))`` samples with their boxes, as one RGB ``uint8`` image.

    Args:
        dataset: a ``FlirDetection`` (or any dataset returning its ``(image, target)``).
        n: number of samples; which ones depends on ``seed`` only (see ``choose_indices``).
        seed: selects the samples.
        epoch: augmentation epoch (default: the dataset's current one).
        cols: grid columns (default: near-square).
        tile_width: width each sample is scaled to; ``None`` keeps its size.
        caption: a line of text above the grid (e.g. split, preset, epoch).
    """
    if len(dataset) == 0:
        raise DataError(f"{getattr(dataset, 'split_dir', 'dataset')}: no images to preview")
    indices = choose_indices(len(dataset), n, seed)
    tiles = [render_tile(dataset, int(i), epoch, tile_width) for i in indices]
    return tile_grid(tiles, cols, caption)


def write_image(path: str | Path, rgb: np.ndarray) -> Path:
    """Encode an RGB image by the file's suffix and write it, creating the parent folder."""
    path = Path(path)
    ok, encoded = cv2.imencode(path.suffix.lower(), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    if not ok:
        raise DataError(f"{path}: cannot encode an image of this type")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(encoded.tobytes())
    return path


# -- command line --------------------------------------------------------------------------


def run_command(args: argparse.Namespace) -> int:
    """Run ``flirdata preview`` (its arguments: ``flirdata.commands.preview``)."""
    # Imported here so that reusing draw_boxes does not import torch.
    from flirdata.dataset import FlirDetection, resolve_split
    from flirdata.images import infer_modality
    from flirdata.transforms import MODALITY_PRESETS, build_transform

    modality = args.modality or infer_modality(resolve_split(args.root, args.split))
    preset = args.preset or MODALITY_PRESETS[modality]
    transform = build_transform(preset)  # an unknown preset's ValueError is one line (flirdata.cli)
    dataset = FlirDetection(args.root, args.split, transform, seed=args.seed, modality=modality)
    caption = f"{dataset.split_dir}  preset={preset}  seed={args.seed}  epoch={args.epoch}"
    try:
        grid = render_preview(
            dataset,
            args.n,
            seed=args.seed,
            epoch=args.epoch,
            cols=args.cols,
            tile_width=args.tile_width or None,
            caption=caption,
        )
    except ImageError as exc:
        raise ImageError(f"{exc} (run 'flirdata check {args.root}' to list every bad file)") from None
    path = write_image(args.out, grid)
    shown = min(args.n, len(dataset))
    print(f"wrote {path} ({shown} samples of {args.split}, {grid.shape[1]}x{grid.shape[0]} px)")
    return 0
