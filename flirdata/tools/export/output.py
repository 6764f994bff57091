"""The output folder of ``flirdata export``: new, interrupted or finished, and its final file.

``prepare_output`` decides what a folder holds before an export starts: nothing (create the
folders and record the settings in the work folder's ``params.json``), an interrupted run with
the same settings (resume), or a finished one (nothing to do). ``finish_output`` merges the
batches' shards into the final file, written last and atomically, and removes the work folder.

A COCO export owns its whole folder (``coco.json``, ``data/``). A YOLO export owns one split of
a dataset (``images/S``, ``labels/S``, its work folder) and shares ``data.yaml``, whose
``flirdata_export`` entry records each split's settings and totals; finishing a split rewrites
it to list every split present, in a fixed order, so its bytes do not depend on the order
the splits were exported in.

``pending_batches`` trusts a finished batch of an interrupted export only after checking each of
its files against the size and digest its shard recorded: a file since removed, truncated,
rewritten or replaced by a symlink (or anything but a regular file) has its batch written again.
That reads every finished file once per resume. One export at a time writes into a folder: the
caller holds ``LOCK_FILE`` (``flirdata.files.folder_lock``), which no check here counts as content.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import stat
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from flirdata.coco import write_coco
from flirdata.files import remove_temporaries, write_atomic
from flirdata.tools.export.batch import WORK_DIR, ExportError, ExportPlan, file_record, output_stem, shard_path
from flirdata.tools.export.yolo import YOLO_SPLITS, data_yaml_text, read_data_yaml

__all__ = ["LOCK_FILE", "VERSION", "Pending", "finish_output", "pending_batches", "prepare_output", "yolo_record"]

# 2: segmentation in coco.json; YOLO splits in images/S and labels/S; 3: reseeding in place (other bytes);
# 4: un-augmented exports keep the source image ids; boxes under a pixel (boxes.box_exists) dropped;
#    shards record each file's size and digest
VERSION = 4
LOCK_FILE = ".flirdata-export.lock"  # held while an export writes into OUT; removed when it ends


# -- the output folder: new, interrupted or finished ------------------------------------------
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


def yolo_record(out: Path) -> tuple[list[str], dict[str, Any]] | None:
    """``(class names, {split: metadata})`` of a YOLO dataset this version of export wrote."""
    data = read_data_yaml(out / "data.yaml") or {}
    meta, names = data.get("flirdata_export"), data.get("names")
    ours = isinstance(meta, dict) and meta.get("version") == VERSION and isinstance(meta.get("splits"), dict)
    if not (ours and isinstance(names, dict)):
        return None
    return [names[k] for k in sorted(names)], meta["splits"]


def _read_final(plan: ExportPlan) -> dict[str, Any] | None:
    """The metadata a finished export recorded in its ``coco.json``/``data.yaml``, if any."""
    out = Path(plan.out)
    if plan.fmt == "coco":
        try:
            meta = json.loads((out / "coco.json").read_text(encoding="utf-8"))["info"]["flirdata_export"]
        except (OSError, ValueError, KeyError, TypeError):
            return None
    else:
        meta = (yolo_record(out) or ([], {}))[1].get(plan.split)
    return meta if isinstance(meta, dict) and isinstance(meta.get("settings"), dict) else None


def _has_content(folder: Path) -> bool:
    """Whether ``folder`` is a folder holding anything but the lock of the export running now."""
    return folder.is_dir() and any(p.name != LOCK_FILE for p in folder.iterdir())


def _check_yolo_out(out: Path, names: Sequence[str]) -> None:
    """A YOLO split may join a non-empty ``out`` only if it is a flirdata YOLO dataset of the same classes."""
    if not _has_content(out):
        return
    record = yolo_record(out)
    if record is None and not (out / WORK_DIR).is_dir():
        raise ExportError(
            f"{out}: not empty and not a YOLO dataset written by this flirdata export "
            "(no data.yaml of it); choose an empty folder"
        )
    if record is not None and record[0] != list(names):
        raise ExportError(
            f"{out}: data.yaml names the classes {record[0]}, this split has {list(names)}; "
            "export every split with the same classes (--split train,val in one call does)"
        )


def _occupied(plan: ExportPlan) -> bool:
    """Whether ``out`` already holds (part of) this export: all of it for coco, the split for yolo."""
    out = Path(plan.out)
    if plan.fmt == "coco":
        return _has_content(out)
    folders = [out / plan.images, out / plan.work] + ([out / plan.labels] if plan.labels else [])
    return any(_has_content(f) for f in folders) or _read_final(plan) is not None


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
    if plan.fmt == "yolo":
        _check_yolo_out(out, settings["classes"])
    work_settings = {**settings, "batch_size": plan.batch_size}
    params = out / plan.work / "params.json"
    if _occupied(plan):
        if not resume:
            what = "output folder is not empty" if plan.fmt == "coco" else f"split {plan.split!r} is already there"
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
        _check_same(out, json.loads(params.read_text(encoding="utf-8")), work_settings)
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
        if not (stat.S_ISREG(info.st_mode) and isinstance(record, list) and info.st_size == record[0]):
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
        names = [f"{plan.images}/{s}.jpg" for s in stems]
        names += [f"{plan.labels}/{s}.txt" for s in stems] if plan.labels else []
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


def _write_coco(plan: ExportPlan, meta: dict[str, Any], index: Any, batches: int) -> None:
    """Stream ``coco.json`` from the shards (two passes), numbering annotations in order."""
    labels = [label for label in range(1, len(index.classes) + 1) if index.category_ids[label] > 0]
    categories = sorted(
        ({"id": int(index.category_ids[label]), "name": index.classes[label - 1]} for label in labels),
        key=lambda c: c["id"],
    )
    info = {"description": "augmented copies written by flirdata export", "flirdata_export": meta}
    images = (image for shard in _iter_shards(plan, batches) for image in shard["images"])
    anns = (ann for shard in _iter_shards(plan, batches) for ann in shard["annotations"])
    numbered = ({"id": n, **ann} for n, ann in enumerate(anns, start=1))
    header = {"info": info, "licenses": [], "categories": categories}
    write_coco(Path(plan.out) / "coco.json", header, images, numbered, layout="lines")


def _write_data_yaml(plan: ExportPlan, meta: dict[str, Any], names: Sequence[str]) -> None:
    """Rewrite ``data.yaml`` listing every split present: the ones recorded plus this one."""
    out = Path(plan.out)
    _check_yolo_out(out, names)  # another split may have finished since this one started
    splits = {**(yolo_record(out) or ([], {}))[1], plan.split: meta}
    ordered = {split: splits[split] for split in YOLO_SPLITS if split in splits}  # same bytes in any order
    text = data_yaml_text(names, ordered, {"version": VERSION, "splits": ordered})
    write_atomic(out / "data.yaml", text.encode())


def _remove_work(plan: ExportPlan) -> None:
    out = Path(plan.out)
    shutil.rmtree(out / plan.work, ignore_errors=True)
    with contextlib.suppress(OSError):
        (out / WORK_DIR).rmdir()  # yolo: once no other split is in progress


def finish_output(plan: ExportPlan, settings: dict[str, Any], index: Any, batches: int) -> dict[str, int]:
    """Write the final file from the shards (last, atomically), then drop the work folder."""
    totals = {"images": 0, "boxes_kept": 0, "boxes_dropped": 0}
    for shard in _iter_shards(plan, batches):
        totals["images"] += len(shard["images"])
        totals["boxes_kept"] += shard["kept"]
        totals["boxes_dropped"] += shard["dropped"]
    meta = {"settings": settings, "totals": totals}
    if plan.fmt == "coco":
        _write_coco(plan, meta, index, batches)
    else:
        _write_data_yaml(plan, meta, index.classes)
    (Path(plan.out) / plan.work / "params.json").unlink()  # first: a kill while deleting leaves "complete"
    _remove_work(plan)
    return totals
