"""``flirdata check``: scan every annotation file and decode every image of a dataset.

A training run should not find a truncated JPEG in hour three. This module reads each split's
``coco.json`` with the same validation the dataset uses, then decodes every referenced image
(in a thread pool: OpenCV releases the GIL while decoding) and checks its size against
``coco.json`` and its channels against the split's modality (grey frames in thermal splits,
colour frames in RGB ones, as ``FlirDetection`` reads them). What it finds is a list of
``Problem``s:

* errors: an image or annotation file the dataset cannot use (missing, empty, truncated,
  corrupt, wrong size, wrong channels, non-finite pixels, not JSON, not COCO, two categories
  sharing an id; a header declaring a size other than coco.json's or over the pixel cap, found
  before decoding, so a decompression bomb costs nothing; a ``file_name`` leaving its split
  folder, a symlink out of the dataset folder, a FIFO, device or socket, a file over the size
  limit: these four found from the path and ``os.stat`` alone, without opening the file). Any
  error makes the command exit 1.
* warnings: a file referenced by two image entries, an image file no entry references.

Boxes the index repairs on load (degenerate ones dropped, ones past the frame clipped,
unknown categories dropped) are how the real FLIR data ships, so they are counted in the
summary but are neither errors nor warnings.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Literal

from tqdm import tqdm

from flirdata.coco import CocoIndex, load_coco
from flirdata.errors import AnnotationError, DataError, ImageError
from flirdata.images import check_modality, dataset_folder, infer_modality, read_image
from flirdata.mapping import executor_map
from flirdata.names import SPLITS

__all__ = ["Problem", "CheckReport", "find_split_dirs", "check_dataset", "run_command"]

IMAGE_SUFFIXES = frozenset(  # every format flirdata.headers reads
    {".jpg", ".jpeg", ".png", ".tif", ".tiff", ".bmp", ".webp", ".pbm", ".pgm", ".ppm", ".pnm", ".pam", ".pfm"}
)
MAX_WARNINGS = 20  # per kind and split: a folder of 10,000 stray files needs one line, not 10,000
# stats key of CocoIndex -> how the summary words it
REPAIRS = {
    "degenerate_dropped": "degenerate boxes dropped",
    "clipped": "boxes clipped to the frame",
    "unknown_category": "boxes of unknown category dropped",
}

# (file, (height, width) in coco.json, modality, the dataset folder the file must resolve inside)
ImageJob = tuple[Path, tuple[int, int], str, Path]


@dataclass(frozen=True)
class Problem:
    """One thing wrong with one file; ``str()`` is the line the CLI prints."""

    severity: Literal["error", "warning"]
    path: str
    message: str

    def __str__(self) -> str:
        return f"{self.severity}: {self.path}: {self.message}"


@dataclass
class CheckReport:
    """What ``check_dataset`` found: problems in the order found and counts per split folder.

    ``splits[folder]`` counts ``images`` (entries in coco.json), ``bad_images``,
    ``bad_annotation_files``, ``annotations``, ``boxes`` (kept after repair) and the repairs
    ``degenerate_dropped``, ``clipped``, ``unknown_category``; ``modalities[folder]`` is the
    modality its images were checked against.
    """

    root: str
    problems: list[Problem] = field(default_factory=list)
    splits: dict[str, Counter[str]] = field(default_factory=dict)
    modalities: dict[str, str] = field(default_factory=dict)

    @property
    def errors(self) -> list[Problem]:
        return [p for p in self.problems if p.severity == "error"]

    @property
    def warnings(self) -> list[Problem]:
        return [p for p in self.problems if p.severity == "warning"]

    @property
    def ok(self) -> bool:
        """True when every image and annotation file is usable (warnings allowed)."""
        return not self.errors

    @property
    def counts(self) -> Counter[str]:
        """The per-split counts summed over all splits."""
        return sum(self.splits.values(), Counter())

    def summary(self) -> list[str]:
        """One line per split and a verdict line."""
        lines = [_split_line(f"{folder} ({self.modalities[folder]})", c) for folder, c in self.splits.items()]
        total = self.counts
        scope = f"{total['images']} images in {len(self.splits)} split(s)"
        if self.ok:
            lines.append(f"OK: {scope}, {len(self.warnings)} warning(s)")
        else:
            lines.append(
                f"FAILED: {total['bad_images']} bad image(s), {total['bad_annotation_files']} bad "
                f"annotation file(s), {len(self.warnings)} warning(s) ({scope})"
            )
        return lines


def _split_line(folder: str, c: Counter[str]) -> str:
    if c["bad_annotation_files"]:
        return f"{folder}: coco.json unusable, images not checked"
    repairs = ", ".join(f"{c[key]} {words}" for key, words in REPAIRS.items())
    images = f"{c['images']} images ({c['bad_images']} bad)"
    return f"{folder}: {images}, {c['boxes']} boxes; repaired on load: {repairs}"


def find_split_dirs(root: str | Path, splits: Sequence[str] | None = None) -> list[Path]:
    """The split folders to check.

    Args:
        root: dataset folder, or a split folder holding ``coco.json``.
        splits: names (keys of ``SPLITS``: ``train``, ``rgb_train``, ...), folder names of ``root`` or paths;
            ``None`` takes ``root`` itself if it holds ``coco.json``, else every FLIR split
            folder present.
    """
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"{root}: dataset folder not found")
    if splits is None:
        if (root / "coco.json").is_file():
            return [root]
        found = [root / name for name in SPLITS.values() if (root / name).is_dir()]
        if not found:
            raise DataError(f"{root}: holds no coco.json and none of the split folders {list(SPLITS.values())}")
        return found
    return list(dict.fromkeys(_split_dir(root, name) for name in splits))


def _split_dir(root: Path, name: str) -> Path:
    candidates = ([root / SPLITS[name]] if name in SPLITS else []) + [root / name, Path(name)]
    for folder in candidates:
        if folder.is_dir():
            return folder
    raise DataError(
        f"split {name!r}: no folder {candidates[0]}; expected one of {sorted(SPLITS)}, a folder of {root} or a path"
    )


def _load_split(folder: Path, report: CheckReport, note: Callable[[Problem], None]) -> CocoIndex | None:
    """Validate ``coco.json`` and record its counts; ``None`` if it is unusable."""
    counts = report.splits.setdefault(str(folder), Counter())
    path = folder / "coco.json"
    try:
        index = load_coco(path)
    except AnnotationError as exc:
        message = _strip_path(str(exc), path)
    else:
        counts.update({key: int(index.stats.get(key, 0)) for key in ("images", "annotations", "boxes", *REPAIRS)})
        return index
    counts["bad_annotation_files"] += 1
    note(Problem("error", str(path), message))
    return None


def _strip_path(message: str, path: Path | str) -> str:
    """Errors already start with the file name; a Problem keeps it in ``path`` alone."""
    prefix = f"{path}: "
    return message[len(prefix) :] if message.startswith(prefix) else message


def _reference_warnings(folder: Path, index: CocoIndex) -> Iterator[Problem]:
    """Files two image entries share, and image files in the image folders no entry names."""
    names = Counter(index.file_name(k) for k in range(len(index)))
    dupes = [(folder / name, f"referenced by {n} image entries in coco.json") for name, n in names.items() if n > 1]
    yield from _capped(folder, dupes, "more files referenced twice")
    referenced = {os.path.normpath(folder / name) for name in names}
    dirs = {os.path.dirname(p) for p in referenced} | {os.path.normpath(folder / "data")}
    stray = sorted(
        entry.path
        for d in sorted(dirs)
        if os.path.isdir(d)
        for entry in os.scandir(d)
        if entry.is_file()
        and Path(entry.name).suffix.lower() in IMAGE_SUFFIXES
        and os.path.normpath(entry.path) not in referenced
    )
    yield from _capped(
        folder, [(p, "image file not referenced by coco.json") for p in stray], "more unreferenced files"
    )


def _capped(folder: Path, items: list[tuple[Path | str, str]], more: str) -> Iterator[Problem]:
    for path, message in items[:MAX_WARNINGS]:
        yield Problem("warning", str(path), message)
    if len(items) > MAX_WARNINGS:
        yield Problem("warning", str(folder), f"{len(items) - MAX_WARNINGS} {more} (not listed)")


def _image_jobs(folder: Path, index: CocoIndex, modality: str, within: Path) -> list[ImageJob]:
    """One job per distinct file: ``(path, (height, width), modality, within)`` as coco.json declares it."""
    jobs: dict[Path, tuple[int, int]] = {}
    for k in range(len(index)):
        jobs.setdefault(folder / index.file_name(k), (int(index.heights[k]), int(index.widths[k])))
    return [(path, hw, modality, within) for path, hw in jobs.items()]


def _check_image(job: ImageJob) -> str | None:
    """``None`` if the image decodes at the declared size and channels, else what is wrong with it."""
    path, expect_hw, modality, within = job
    try:  # stat before open: a FIFO or device is reported without being read, so the scan never hangs
        read_image(path, expect_hw, modality, within=within)
    except ImageError as exc:
        return _strip_path(str(exc), path)
    except OSError as exc:  # permission denied, I/O error: the file is as unusable as a corrupt one
        return f"cannot read ({exc.strerror or exc})"
    return None


def _default_workers() -> int:
    return max(1, min(16, 2 * (os.cpu_count() or 1)))


def check_dataset(
    root: str | Path,
    splits: Sequence[str] | None = None,
    progress: bool = True,
    *,
    workers: int | None = None,
    on_problem: Callable[[Problem], None] | None = None,
    modality: str | None = None,
) -> CheckReport:
    """Validate every ``coco.json`` and decode every image of a dataset.

    Args:
        root: dataset folder (or one split folder holding ``coco.json``).
        splits: which splits to check (see ``find_split_dirs``); default all present.
        progress: show a tqdm bar on stderr while decoding.
        workers: decoding threads; default twice the CPU count (at most 16), ``1`` = serial.
        on_problem: called with each problem as it is found (the CLI prints them).
        modality: "thermal" or "rgb" for every split; default inferred from each split
            folder's name, as ``FlirDetection`` does (``images_rgb_*``, ``video_rgb_*``: rgb).

    Raises:
        DataError: ``root`` or a requested split folder does not exist.
    """
    report = CheckReport(root=str(root))
    if modality is not None:
        check_modality(modality)

    def note(problem: Problem) -> None:
        report.problems.append(problem)
        if on_problem is not None:
            on_problem(problem)

    jobs: list[tuple[Counter[str], ImageJob]] = []
    for folder in find_split_dirs(root, splits):
        report.modalities[str(folder)] = modality or infer_modality(folder)
        index = _load_split(folder, report, note)
        if index is not None:
            for problem in _reference_warnings(folder, index):
                note(problem)
            folder_jobs = _image_jobs(folder, index, report.modalities[str(folder)], dataset_folder(root, folder))
            jobs += [(report.splits[str(folder)], job) for job in folder_jobs]
    workers = _default_workers() if workers is None else workers
    with tqdm(total=len(jobs), desc="checking images", unit="img", file=sys.stderr, disable=not progress) as bar:
        # Threads: OpenCV releases the GIL while decoding. Closing the map stops the decoding.
        pool = partial(ThreadPoolExecutor, workers, thread_name_prefix="flirdata-check") if workers > 1 else None
        results = executor_map(pool, _check_image, (job for _, job in jobs), 4 * workers)
        for (counts, (path, *_)), message in zip(jobs, results, strict=True):
            bar.update()
            if message is not None:
                counts["bad_images"] += 1
                note(Problem("error", str(path), message))
    return report


# -- command line --------------------------------------------------------------------------


def run_command(args: argparse.Namespace) -> int:
    """Run ``flirdata check`` (its arguments: ``flirdata.commands.check``); 1 if anything is wrong."""
    splits = [s.strip() for s in args.split.split(",") if s.strip()] if args.split else None
    if args.split is not None and not splits:
        raise DataError(f"--split {args.split!r}: no split name given")

    def show(problem: Problem) -> None:
        tqdm.write(str(problem), file=sys.stdout)  # above the progress bar, not through it

    report = check_dataset(
        args.root, splits, progress=args.progress, workers=args.workers, on_problem=show, modality=args.modality
    )
    for line in report.summary():
        print(line)
    return 0 if report.ok else 1
