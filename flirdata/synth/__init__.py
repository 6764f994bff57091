"""``flirdata synth``: a synthetic dataset in exactly the FLIR ADAS v2 on-disk layout.

``ROOT/images_thermal_{train,val}/`` (and ``video_thermal_test/``), each holding ``data/*.jpg``
and ``coco.json``; with ``rgb=True`` also ``images_rgb_{train,val}/`` (and ``video_rgb_test/``),
colour frames of several sizes. Pixels come from ``flirdata.synth.thermal`` (and ``flirdata.synth.rgb``);
this module plans videos and file names, renders images (in worker processes when there are
many) and writes the COCO file as FLIR's looks, flaws included: frames without boxes, zero-size
boxes, boxes reaching past the frame.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import shutil
import time
from collections.abc import Iterable, Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from datetime import datetime, timedelta
from functools import partial
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from tqdm import tqdm

from flirdata._cores import usable_cores
from flirdata._validate import is_int
from flirdata.cliargs import MAX_COUNT, MAX_SEED, MAX_WORKERS
from flirdata.coco import write_coco
from flirdata.errors import DataError
from flirdata.mapping import executor_map
from flirdata.names import SIZES  # name -> train images, defined where the parsers read it
from flirdata.synth.plan import CAMERA, FLAWS, SPLIT_FOLDERS, VIDEO, FramePlan, n_flawed, plan_split, stream
from flirdata.synth.rgb import colour_frame, make_palette
from flirdata.synth.thermal import DrawnObject, make_scene, render_frame

__all__ = [
    "SIZES",
    "MAX_IMAGES",
    "SPLIT_FOLDERS",
    "CATEGORIES",
    "GENERATOR",
    "FramePlan",
    "RenderJob",
    "parse_size",
    "default_val",
    "render_job",
    "synthesize",
]

# Images per split at most, and rendering processes: the command line's bounds (see cliargs).
MAX_IMAGES = MAX_COUNT
# Split -> (folder in the FLIR download, code in the seeds of its images). Kept here rather
# than imported from flirdata.dataset so that ``flirdata synth`` does not import torch.
GENERATOR = "flirdata-synth/1"  # bump when the pixels change, so cached datasets are rebuilt
JPEG_QUALITY = 90
_CHUNK = 8  # images per task sent to a worker
# FLIR v2 declares the 80 COCO classes with contiguous ids, renaming the ones it uses.
_COCO80 = """person bicycle car motorcycle airplane bus train truck boat traffic_light fire_hydrant
stop_sign parking_meter bench bird cat dog horse sheep cow elephant bear zebra giraffe backpack
umbrella handbag tie suitcase frisbee skis snowboard sports_ball kite baseball_bat baseball_glove
skateboard surfboard tennis_racket bottle wine_glass cup fork knife spoon bowl banana apple sandwich
orange broccoli carrot hot_dog pizza donut cake chair couch potted_plant bed dining_table toilet tv
laptop mouse remote keyboard cell_phone microwave oven toaster sink refrigerator book clock vase
scissors teddy_bear hair_drier toothbrush""".split()
_FLIR_NAMES = {
    2: "bike",
    4: "motor",
    10: "light",
    11: "hydrant",
    12: "sign",
    73: "stroller",
    77: "scooter",
    79: "other vehicle",
}
CATEGORIES: list[dict[str, Any]] = [
    {"id": k, "name": _FLIR_NAMES.get(k, name.replace("_", " ")), "supercategory": "unknown"}
    for k, name in enumerate(_COCO80, start=1)
]


def parse_size(text: str | int) -> int:
    """Number of train images for ``--size``: small, medium, big, or an integer 1..MAX_IMAGES."""
    key = str(text).strip().lower()
    if key in SIZES:
        return SIZES[key]
    # The length test first: int() of a string of over 4300 digits raises ValueError.
    if key.isascii() and key.isdigit() and len(key) < 100 and 0 < int(key) <= MAX_IMAGES:
        return int(key)
    raise DataError(f"size {text!r}: expected one of {sorted(SIZES)} or an integer from 1 to {MAX_IMAGES}")


def default_val(train: int) -> int:
    """Val images when not given: a tenth of train, but at least 50 (or all of train if fewer)."""
    return max(train // 10, min(train, 50))


@dataclass(frozen=True)
class RenderJob:
    """Consecutive frames of one split for one worker; small and picklable."""

    split_dir: str  # the folder that holds data/
    seed: int
    split_code: int
    frames: tuple[FramePlan, ...]
    rgb: bool = False  # colour frames at each plan's size, else grey 640x512 ones


def render_job(job: RenderJob) -> list[tuple[int, list[DrawnObject]]]:
    """Render and write the job's JPEGs; return each image's drawn objects by index."""
    scenes, out = {}, []
    for f in job.frames:
        if f.video not in scenes:
            scene = make_scene(stream(job.seed, job.split_code, f.video, VIDEO))
            camera = stream(job.seed, job.split_code, f.video, CAMERA)
            scenes[f.video] = (scene, make_palette(camera, scene) if job.rgb else None)
        rng = stream(job.seed, job.split_code, f.index)
        scene, palette = scenes[f.video]
        img, objects = render_frame(rng, scene, f.frame_pos, empty=f.empty)
        if palette is not None:
            img, objects = colour_frame(rng, img, scene, palette, objects, (f.width, f.height))
        ok, buf = cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY])
        if not ok:  # pragma: no cover - OpenCV built without JPEG
            raise DataError(f"{f.file_name}: OpenCV could not encode a JPEG")
        Path(job.split_dir, f.file_name).write_bytes(buf.tobytes())
        out.append((f.index, objects))
    return out


def _render_pool(workers: int) -> ProcessPoolExecutor:
    method = "forkserver" if "forkserver" in multiprocessing.get_all_start_methods() else "spawn"
    ctx = multiprocessing.get_context(method)  # not fork: the parent may hold threads
    # One OpenCV thread per worker: the pool is the parallelism, more threads would oversubscribe.
    return ProcessPoolExecutor(workers, mp_context=ctx, initializer=cv2.setNumThreads, initargs=(1,))


def _iter_results(jobs: Iterable[RenderJob], workers: int) -> Iterator[list[tuple[int, list[DrawnObject]]]]:
    """Run jobs in order, at most ``2 * workers`` in flight; ``workers <= 1`` runs inline."""
    make_pool = partial(_render_pool, workers) if workers > 1 else None
    return executor_map(make_pool, render_job, jobs, 2 * workers)


_OCCLUSION = (
    (0.99, "no_(fully_visible)"),
    (0.3, "1%_-_70%_occluded_(partially_occluded)"),
    (0.1, "70%_-_90%_occluded_(difficult_to_see)"),
)


def _occlusion(visible: float) -> str | None:
    """FLIR's occlusion label by visible share; None where annotators would not see it at all."""
    return next((label for least, label in _OCCLUSION if visible >= least), None)


def _annotation(image_id: int, obj: DrawnObject) -> dict[str, Any]:
    x, y, w, h = obj.box
    return {
        "id": 0,
        "image_id": image_id,
        "category_id": obj.category_id,
        "segmentation": [],
        "area": w * h,
        "bbox": [x, y, w, h],
        "iscrowd": 0,
        "extra_info": {"occluded": _occlusion(obj.visible)},
    }


def _push_out(ann: dict[str, Any], rng: np.random.Generator, width: int, height: int) -> None:
    """Drag a box past the frame edge it touches; clipping gives the tight box back."""
    x, y, w, h = ann["bbox"]
    k = int(rng.integers(1, 12))
    if x == 0:
        x, w = -k, w + k
    elif x + w == width or y + h == height:
        w, h = (w + k, h) if x + w == width else (w, h + k)
    elif y == 0:
        y, h = -k, h + k
    else:  # no edge to extend: past the right edge, no longer tight once clipped
        w = width - x + k
    ann.update(bbox=[x, y, w, h], area=w * h)


def _add_flaws(per_image: list[list[dict[str, Any]]], rng: np.random.Generator, sizes: list[tuple[int, int]]) -> None:
    """Mimic FLIR's annotation slips on ~1% of boxes (at least 1 of each from 20 images): boxes
    dragged past the frame, and zero-width or zero-height duplicates (a click without a drag).
    ``sizes[i]`` is image ``i``'s ``(width, height)``."""
    flat = [(i, j) for i, group in enumerate(per_image) for j in range(len(group))]
    n = n_flawed(len(flat), 0.005, len(per_image) >= 20)
    edge = [(i, j) for i, j in flat if _at_edge(per_image[i][j]["bbox"], *sizes[i])]
    pool = edge if len(edge) >= n else flat
    for k in rng.choice(len(pool), n, replace=False):
        _push_out(per_image[pool[k][0]][pool[k][1]], rng, *sizes[pool[k][0]])
    for k in sorted(rng.choice(len(flat), n, replace=False).tolist(), reverse=True):
        i, j = flat[k]
        dup = {**per_image[i][j], "area": 0, "bbox": list(per_image[i][j]["bbox"])}
        dup["bbox"][2 + int(rng.integers(2))] = 0
        per_image[i].insert(j + 1, dup)


def _at_edge(box: list[int], width: int, height: int) -> bool:
    x, y, w, h = box
    return x == 0 or y == 0 or x + w == width or y + h == height


def _video_meta(seed: int, split_code: int, video: int) -> tuple[datetime, str, str]:
    """(start time, hours, weather) of a video, consistent with how it is rendered."""
    rng = stream(seed, split_code, video, VIDEO)
    scene = make_scene(rng)  # the same draws render_job makes, then the date
    hour = int(rng.choice([20, 21, 22, 23, 0, 1, 2, 3, 4] if scene.night else list(range(8, 18))))
    offset = timedelta(days=int(rng.integers(365)), seconds=int(rng.integers(3600)))
    start = datetime(2021, 1, 1, hour) + offset
    return start, "night" if scene.night else "day", scene.weather


def _build_coco(seed: int, split: str, plans: list[FramePlan], drawn: dict[int, list[DrawnObject]]) -> dict[str, Any]:
    """The split's coco.json: FLIR's top-level keys, image ``extra_info``, flawed boxes."""
    code = SPLIT_FOLDERS[split][1]
    meta = {v: _video_meta(seed, code, v) for v in sorted({p.video for p in plans})}
    images, per_image = [], []
    for p in plans:
        start, hours, weather = meta[p.video]
        images.append(
            {
                "id": p.index,
                "width": p.width,
                "height": p.height,
                "file_name": p.file_name,
                "license": 1,
                "flickr_url": "",
                "coco_url": "",
                "date_captured": (start + timedelta(seconds=p.frame_pos / 30)).isoformat(timespec="seconds"),
                "extra_info": {
                    "video_id": p.video_id,
                    "frame_index": p.frame_index,
                    "hours": hours,
                    "weather": weather,
                },
            }
        )
        per_image.append([_annotation(p.index, o) for o in drawn[p.index] if _occlusion(o.visible)])
    _add_flaws(per_image, stream(seed, code, 0, FLAWS), [(p.width, p.height) for p in plans])
    annotations = [ann for group in per_image for ann in group]
    for k, ann in enumerate(annotations, start=1):
        ann["id"] = k
    kind = "colour" if split.startswith("rgb") else "thermal"
    info = {
        "description": f"Synthetic {kind} frames in the Teledyne FLIR ADAS v2 layout",
        "url": "",
        "version": "2.0",
        "year": 2022,
        "contributor": "flirdata synth",
        "date_created": "2022-01-19",
        "flirdata_synth": _stamp(seed, split, len(plans)),
    }
    licenses = [{"id": 1, "name": "synthetic, no restrictions", "url": ""}]
    return {"info": info, "licenses": licenses, "categories": CATEGORIES, "images": images, "annotations": annotations}


def _stamp(seed: int, split: str, n: int) -> dict[str, Any]:
    return {"generator": GENERATOR, "seed": seed, "split": split, "images": n}


def _cached_boxes(folder: Path, stamp: dict[str, Any], force: bool) -> int | None:
    """Box count of a split already written with ``stamp``; None if it must be (re)written.
    Raises DataError if the folder holds anything else, unless ``force``."""
    if not folder.exists() or (folder.is_dir() and not any(folder.iterdir())):
        return None
    try:
        made = json.loads((folder / "coco.json").read_bytes())
        found = made["info"]["flirdata_synth"]
    except (OSError, ValueError, KeyError, TypeError):
        made, found = None, None
    if found == stamp:
        return len(made["annotations"])
    if force:
        return None
    what = f"was written by flirdata synth with {found}" if found else "holds other data"
    raise DataError(f"{folder} {what}, not {stamp}; pass --force (force=True) to replace it")


def _write_split(root: Path, split: str, n: int, seed: int, workers: int, progress: bool) -> int:
    """Render into a hidden staging folder, write coco.json last, then rename it into place:
    an interrupted run leaves only that folder (the next run deletes it), never a coco.json
    naming missing images."""
    folder, code = SPLIT_FOLDERS[split]
    stage, final = root / f".{folder}.partial", root / folder
    if stage.exists():
        shutil.rmtree(stage)
    (stage / "data").mkdir(parents=True)
    plans = plan_split(seed, split, n)
    rgb = split.startswith("rgb")
    jobs = (RenderJob(str(stage), seed, code, tuple(plans[i : i + _CHUNK]), rgb) for i in range(0, n, _CHUNK))
    drawn: dict[int, list[DrawnObject]] = {}
    with tqdm(total=n, desc=folder, unit="img", disable=not progress) as bar:
        for results in _iter_results(jobs, workers):
            drawn.update(results)
            bar.update(len(results))
    coco = _build_coco(seed, split, plans, drawn)
    header = {key: value for key, value in coco.items() if key not in ("images", "annotations")}
    write_coco(stage / "coco.json", header, coco["images"], coco["annotations"])
    if final.exists():
        shutil.rmtree(final)  # empty, or replaced on purpose (force)
    os.replace(stage, final)
    return len(coco["annotations"])


def _check_count(name: str, value: Any, minimum: int, maximum: int | None = None) -> int:
    if not is_int(value, minimum, maximum):
        bound = f" and <= {maximum}" if maximum is not None else ""
        raise DataError(f"{name}={value!r}: expected an integer >= {minimum}{bound}")
    return int(value)


def _auto_workers(n: int) -> int:
    """One per CPU, but 1 below 1000 images: each worker starts by importing flirdata (and so
    torch), seconds that 2 workers only win back after ~1000 images (measured on 2 cores)."""
    if n < 1000:
        return 1
    return usable_cores()


def synthesize(
    root: str | Path,
    *,
    train: int = 500,
    val: int | None = None,
    test: int = 0,
    seed: int = 0,
    progress: bool = True,
    workers: int | None = None,
    force: bool = False,
    rgb: bool = False,
) -> dict[str, Any]:
    """Write a synthetic FLIR ADAS v2 dataset under ``root``; same seed, same bytes.

    A split already written by this generator with the same seed and size is skipped, so callers
    can use this as a cache; a split folder holding anything else raises DataError unless
    ``force``, which deletes and rewrites it. Splits not asked for are left alone.

    Args:
        val: val images; ``None`` takes ``default_val(train)``.
        test: frames in ``video_thermal_test/``; 0 writes no test split.
        workers: rendering processes; ``None`` is one per CPU, or 1 below 1000 images.
        rgb: also write the RGB splits (``images_rgb_train/`` ...) with as many colour frames
            as their thermal twins, each video at one of ``rgb_synth.FRAME_SIZES``.

    Returns:
        ``{"root", "seed", "splits": {split: {"folder", "images", "annotations", "skipped"}},
        "images", "seconds", "images_per_s"}``, counting only images written by this call.
    """
    train = _check_count("train", train, 1, MAX_IMAGES)
    val = default_val(train) if val is None else _check_count("val", val, 0, MAX_IMAGES)
    counts = {"train": train, "val": val, "test": _check_count("test", test, 0, MAX_IMAGES)}
    counts.update({f"rgb_{split}": n for split, n in counts.items()} if rgb else {})
    seed = _check_count("seed", seed, 0, MAX_SEED)
    workers = None if workers is None else _check_count("workers", workers, 1, MAX_WORKERS)
    root = Path(root)
    if root.exists() and not root.is_dir():
        raise DataError(f"{root}: not a directory")
    # Check every split before writing any, so a conflict fails fast and changes nothing.
    cached = {s: _cached_boxes(root / SPLIT_FOLDERS[s][0], _stamp(seed, s, n), force) for s, n in counts.items() if n}
    root.mkdir(parents=True, exist_ok=True)
    summary: dict[str, Any] = {"root": str(root), "seed": seed, "splits": {}}
    made, start = 0, time.perf_counter()
    for split, boxes in cached.items():
        n, skipped = counts[split], boxes is not None
        if boxes is None:
            boxes = _write_split(root, split, n, seed, workers or _auto_workers(n), progress)
            made += n
        summary["splits"][split] = {
            "folder": SPLIT_FOLDERS[split][0],
            "images": n,
            "annotations": boxes,
            "skipped": skipped,
        }
    seconds = time.perf_counter() - start
    rate = round(made / seconds, 1) if made else 0.0
    summary.update(images=made, seconds=round(seconds, 3), images_per_s=rate)
    return summary
