"""The output folder of ``flirdata export``: new, interrupted or finished, and its final file.

``prepare_output`` decides what a folder holds before an export starts: nothing (create the
folders and record the settings in the work folder's ``params.json``), an interrupted run with
the same settings (resume), or a finished one (nothing to do). ``finish_output`` has the format
merge the batches' shards into its final file, written last and atomically, and removes the
work folder. What the folders and the final file are is the format's ``Layout``.

An export of a format of one split per folder (COCO) owns its whole folder. One of a format of
several splits (YOLO) owns its split's folders and work folder, and shares the final file, which
records each split's settings and totals.

``pending_batches`` trusts a finished batch of an interrupted export only after checking each of
its files against the size and digest its shard recorded: a file since removed, truncated,
rewritten or replaced by a symlink (or anything but a regular file) has its batch written again.
That reads every finished file once per resume. One export at a time writes into a folder: the
caller holds ``LOCK_FILE`` (``flirdata.files.folder_lock``), which no check here counts as content.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import shutil
import stat
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from flirdata.files import remove_temporaries, write_atomic
from flirdata.tools.export.batch import ExportPlan, file_record, output_stem, shard_path
from flirdata.tools.export.layout import WORK_DIR, ExportError, has_content

__all__ = ["Pending", "finish_output", "pending_batches", "prepare_output"]


# -- the output folder: new, interrupted or finished ------------------------------------------
def _read_params(params: Path) -> dict[str, Any]:
    """An interrupted export's recorded settings; a damaged file is one line naming it."""
    try:
        recorded = json.loads(params.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise ExportError(f"{params}: unreadable ({exc}); choose an empty folder") from None
    if not isinstance(recorded, dict):
        raise ExportError(f"{params}: not an export's settings (a JSON object); choose an empty folder")
    return recorded


def _check_same(out: Path, recorded: dict[str, Any], expected: dict[str, Any]) -> None:
    if recorded.get("version") != expected.get("version"):  # its shards are not what this version reads
        raise ExportError(
            f"{out}: holds an export written by another version of flirdata (export format "
            f"{recorded.get('version')!r}, this one writes {expected.get('version')!r}) that cannot be resumed; "
            "choose an empty folder, or delete this one and export again"
        )
    keys = sorted(expected.keys() | recorded.keys())
    diff = [f"{k} {recorded.get(k)!r}, now {expected.get(k)!r}" for k in keys if recorded.get(k) != expected.get(k)]
    if diff:
        raise ExportError(
            f"{out}: holds an export made with other settings ({'; '.join(diff)}); "
            "rerun with the same settings or choose an empty folder"
        )


def _read_final(plan: ExportPlan) -> dict[str, Any] | None:
    """The metadata a finished export recorded in its final file (``coco.json``, ``data.yaml``), if any."""
    meta = plan.layout.read_final(Path(plan.out), plan.split)
    return meta if isinstance(meta, dict) and isinstance(meta.get("settings"), dict) else None


def _occupied(plan: ExportPlan) -> bool:
    """Whether ``out`` already holds (part of) this export: the whole folder, or the split where splits share it."""
    out = Path(plan.out)
    if not plan.layout.splits:
        return has_content(out)
    folders = [out / plan.images, out / plan.work] + ([out / plan.labels] if plan.labels else [])
    return any(has_content(f) for f in folders) or _read_final(plan) is not None


def _create(plan: ExportPlan, work_settings: dict[str, Any]) -> None:
    """Create the folders and record the settings; a killed run's ``.tmp`` files are deleted."""
    out = Path(plan.out)
    try:
        folders = [out, out / plan.work, out / plan.work / "shards", out / plan.images]
        for folder in folders + ([out / plan.labels] if plan.labels else []):
            folder.mkdir(parents=True, exist_ok=True)
            remove_temporaries(folder)
        write_atomic(out / plan.work / "params.json", json.dumps(work_settings, indent=1).encode())
    except OSError as exc:
        raise ExportError(f"{out}: cannot write the output folder ({exc.strerror or exc})") from None


def prepare_output(plan: ExportPlan, settings: dict[str, Any], resume: bool) -> dict | None:
    """Make ``out`` ready to write; return the recorded metadata if it already holds this export."""
    out = Path(plan.out)
    if out.exists() and not out.is_dir():
        raise ExportError(f"{out}: exists and is not a folder")
    plan.layout.check_out(out, settings["classes"])
    work_settings = {**settings, "batch_size": plan.batch_size}
    params = out / plan.work / "params.json"
    if _occupied(plan):
        if not resume:
            what = f"split {plan.split!r} is already there" if plan.layout.splits else "output folder is not empty"
            raise ExportError(
                f"{out}: {what}; pass --resume to finish an interrupted export there, or choose an empty folder"
            )
        if not params.is_file():
            recorded = _read_final(plan)
            if recorded is None:
                raise ExportError(
                    f"{out}: not empty and holds no interrupted flirdata export "
                    f"({plan.work}/params.json not found); choose an empty folder"
                )
            _check_same(out, recorded["settings"], settings)
            _remove_work(plan)  # a kill in finish_output's clean-up left it
            return recorded
        _check_same(out, _read_params(params), work_settings)
    _create(plan, work_settings)
    return None


@dataclass(frozen=True)
class Pending:
    """The batches an export still has to write, and how many finished files failed their check."""

    batches: list[int]
    damaged: int = 0


def _intact(path: Path, record: Any) -> bool:
    """Whether ``path`` is a regular file (not a symlink) with the size and digest ``record`` holds."""
    try:
        info = os.lstat(path)
        recorded = isinstance(record, list) and len(record) == 2  # [size, digest]
        if not (stat.S_ISREG(info.st_mode) and recorded and info.st_size == record[0]):
            return False
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
        with open(fd, "rb") as f:
            return file_record(f.read()) == record
    except OSError:
        return False


def _read_shard_files(plan: ExportPlan, batch: int) -> dict[str, Any] | None:
    """The ``files`` a batch's shard recorded; ``None`` if it has no readable shard."""
    try:
        files = json.loads(shard_path(plan, batch).read_text(encoding="utf-8")).get("files")
    except (OSError, ValueError, AttributeError):
        return None
    return files if isinstance(files, dict) else None


def pending_batches(plan: ExportPlan, dataset: Any, total: int) -> Pending:
    """Batches without a shard, or with one whose files are not all there as written (see the docstring)."""
    out, n, size, pending, damaged = Path(plan.out), len(dataset), plan.batch_size, [], 0
    for batch in range(-(-total // size)):
        files = _read_shard_files(plan, batch)
        if files is None:
            pending.append(batch)
            continue
        stems = [
            output_stem(dataset.index.file_name(j % n), j // n)
            for j in range(batch * size, min(total, (batch + 1) * size))
        ]
        names = [name for stem in stems for name in plan.files(stem)]
        bad = [name for name in names if not _intact(out / name, files.get(name))]
        damaged += sum((out / name).exists() or (out / name).is_symlink() for name in bad)  # not merely deleted
        if bad:
            pending.append(batch)
    return Pending(pending, damaged)


# -- the final file, merged from the shards ---------------------------------------------------
def _iter_shards(plan: ExportPlan, batches: int) -> Iterator[dict[str, Any]]:
    for batch in range(batches):
        path = shard_path(plan, batch)
        try:
            yield json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise ExportError(f"{path}: shard of batch {batch} is missing; rerun with --resume") from None


def _remove_work(plan: ExportPlan) -> None:
    out = Path(plan.out)
    shutil.rmtree(out / plan.work, ignore_errors=True)
    with contextlib.suppress(OSError):
        (out / WORK_DIR).rmdir()  # where splits share out: once no other split is in progress


def finish_output(plan: ExportPlan, settings: dict[str, Any], index: Any, batches: int) -> dict[str, int]:
    """Have the format write its final file from the shards (last, atomically), then drop the work folder."""
    totals = {"images": 0, "boxes_kept": 0, "boxes_dropped": 0}
    for shard in _iter_shards(plan, batches):
        totals["images"] += len(shard["images"])
        totals["boxes_kept"] += shard["kept"]
        totals["boxes_dropped"] += shard["dropped"]
    meta = {"settings": settings, "totals": totals}
    plan.layout.write_final(Path(plan.out), plan.split, meta, index, functools.partial(_iter_shards, plan, batches))
    (Path(plan.out) / plan.work / "params.json").unlink()  # first: a kill while deleting leaves "complete"
    _remove_work(plan)
    return totals
