"""``flirdata export`` against a hostile or careless user: one export per folder, verified resumes,
temporaries never written through a symlink, names too long, SIGTERM handled as Ctrl-C."""

from __future__ import annotations

import fcntl
import functools
import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from support import export_argv, write_split

import flirdata.files
import flirdata.tools.export
from flirdata.cli import main
from flirdata.dataset import FlirDetection
from flirdata.files import atomic_file, write_atomic
from flirdata.synth import synthesize
from flirdata.tools.export import WORK_DIR, ExportError, export_augmented, output_stem
from flirdata.transforms import build_transform

REPO = Path(__file__).resolve().parent.parent
SIZE = (128, 160)
SEED = 7
LOCK = ".flirdata-export.lock"  # the lock file README names


def _digest(folder: Path) -> dict[str, str]:
    """sha256 of every file under ``folder`` (hidden ones included), by relative path; symlinks as such."""
    return {
        str(p.relative_to(folder)): "link" if p.is_symlink() else hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file() or p.is_symlink()
    }


def _dataset(root: Path, size: tuple[int, int] = SIZE) -> FlirDetection:
    return FlirDetection(root, "train", transform=build_transform("thermal", size=size), seed=SEED)


def _raise(exc: type[BaseException], *args: object, **kwargs: object) -> None:
    raise exc


@pytest.fixture(scope="module")
def source(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("guards-source")
    synthesize(root, train=12, val=0, seed=3, progress=False)
    return root


@pytest.fixture(scope="module")
def clean(source: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("clean") / "out"
    export_augmented(_dataset(source), out, copies=2, batch_size=5, progress=False)
    return out


def _interrupted(source: Path, out: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """An export of 24 items in 5 batches, every batch written, stopped before the merge."""
    with monkeypatch.context() as patch:
        patch.setattr(flirdata.tools.export, "finish_output", functools.partial(_raise, KeyboardInterrupt))
        with pytest.raises(KeyboardInterrupt):
            export_augmented(_dataset(source), out, copies=2, batch_size=5, progress=False)


# -- row 7: one export per output folder ----------------------------------------------------------
def test_an_export_holding_the_folder_refuses_a_second_at_once(
    source: Path, tmp_path: Path, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "out"
    argv = ["export", str(source), "--out", str(out), "--copies", "2", "--batch-size", "5", "--no-progress"]
    with monkeypatch.context() as patch:  # every batch written, stopped before the merge
        patch.setattr(flirdata.tools.export, "finish_output", functools.partial(_raise, KeyboardInterrupt))
        assert main(argv) == 130
    capsys.readouterr()
    fd = os.open(out / LOCK, os.O_RDWR | os.O_CREAT)  # what a running export holds
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        before = _digest(out)
        assert main([*argv, "--resume"]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and f"{out}: another flirdata export is writing into this folder" in err
        assert _digest(out) == before  # nothing touched
    finally:
        os.close(fd)
    assert main([*argv, "--resume"]) == 0  # once it is free


def test_the_lock_goes_with_the_export_whatever_its_end(source: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    export_augmented(_dataset(source), out, copies=1, batch_size=5, progress=False)
    assert sorted(p.name for p in out.iterdir()) == ["coco.json", "data"]  # no lock file left
    with pytest.raises(ExportError, match="other settings"):  # refused while holding the lock
        export_augmented(_dataset(source), out, copies=2, batch_size=5, resume=True, progress=False)
    assert sorted(p.name for p in out.iterdir()) == ["coco.json", "data"]
    with flirdata.files.folder_lock(out, LOCK):  # free again
        with pytest.raises(flirdata.files.FolderBusyError):
            with flirdata.files.folder_lock(out, LOCK):
                pass


# -- row 8: finished files are checked before a resume trusts them -------------------------------
def test_resume_rewrites_finished_files_that_changed(
    source: Path, clean: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "out"
    _interrupted(source, out, monkeypatch)
    names = _dataset(source).index
    link, cut, same_size = (
        out / "data" / f"{output_stem(names.file_name(i), k)}.jpg" for i, k in ((0, 0), (7, 0), (3, 1))
    )
    (tmp_path / "notes.txt").write_text("not an image")
    link.unlink()
    link.symlink_to(tmp_path / "notes.txt")
    cut.write_bytes(cut.read_bytes()[:100])
    same_size.write_bytes(bytes(reversed(same_size.read_bytes())))
    summary = export_augmented(_dataset(source), out, copies=2, batch_size=5, resume=True, progress=False)
    assert (summary.written, summary.damaged) == (15, 3)
    assert "3 finished files had changed since they were written" in str(summary)
    assert _digest(out) == _digest(clean) and (tmp_path / "notes.txt").read_text() == "not an image"


def test_resume_of_an_export_of_another_format_version_is_one_clear_line(
    source: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "out"
    _interrupted(source, out, monkeypatch)
    params = out / WORK_DIR / "params.json"
    params.write_text(json.dumps({**json.loads(params.read_text()), "version": 3}))  # shards without digests
    with pytest.raises(ExportError, match=r"another version of flirdata \(export format 3, this one writes 4\)"):
        export_augmented(_dataset(source), out, copies=2, batch_size=5, resume=True, progress=False)


def test_resume_over_damaged_work_records_is_one_line_or_a_rewrite(
    source: Path, clean: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "out"
    _interrupted(source, out, monkeypatch)
    shard = next((out / WORK_DIR / "shards").glob("*.json"))
    record = json.loads(shard.read_text())
    record["files"] = {name: [] for name in record["files"]}  # records without size and digest
    shard.write_text(json.dumps(record))
    summary = export_augmented(_dataset(source), out, copies=2, batch_size=5, resume=True, progress=False)
    assert summary.damaged > 0 and _digest(out) == _digest(clean)  # that batch written again
    again = tmp_path / "again"
    _interrupted(source, again, monkeypatch)
    for text, message in (("{trunc", r"params.json: unreadable"), ("[1, 2]", r"params.json: not an export's")):
        (again / WORK_DIR / "params.json").write_text(text)
        with pytest.raises(ExportError, match=message):
            export_augmented(_dataset(source), again, copies=2, batch_size=5, resume=True, progress=False)


# -- row 9: a temporary is a new file, never a link ----------------------------------------------
def test_a_symlink_at_the_temporary_name_is_never_written_through(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    target = tmp_path / "victim.txt"
    target.write_text("precious")
    planted = tmp_path / ".out.jpg.planted.tmp"
    planted.symlink_to(target)
    names = iter([planted, tmp_path / ".out.jpg.free.tmp"])  # the first name is taken by the link
    monkeypatch.setattr(flirdata.files, "_temporary", lambda path: next(names))
    write_atomic(tmp_path / "out.jpg", b"image bytes")
    assert target.read_text() == "precious" and planted.is_symlink()
    assert (tmp_path / "out.jpg").read_bytes() == b"image bytes"


def test_temporaries_get_random_names_of_at_most_255_bytes(tmp_path: Path) -> None:
    seen = set()
    for name in ("a.jpg", "é" * 125 + ".jpg"):  # 254 bytes: the temporary's copy of it is shortened
        for _ in range(2):
            with atomic_file(tmp_path / name) as f:
                (tmp,) = [p for p in os.listdir(tmp_path) if p.endswith(".tmp")]
                seen.add(tmp)
                assert len(tmp.encode()) <= 255 and tmp.startswith(f".{name[:5]}")
                f.write(b"x")
    assert len(seen) == 4 and sorted(os.listdir(tmp_path)) == sorted(["a.jpg", "é" * 125 + ".jpg"])
    assert oct(os.stat(tmp_path / "a.jpg").st_mode & 0o777) == oct(0o666 & ~_umask())


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


# -- row 14: an output name too long is refused before anything is written ------------------------
def test_output_name_over_255_bytes_is_refused_up_front(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    frame = np.full((32, 40), 128, np.uint8)
    split = write_split(tmp_path / "split", [frame] * 3, [[[4, 4, 10, 10]]] * 3, [[1]] * 3)
    coco = json.loads((split / "coco.json").read_text())
    long_name = f"data/{'d' * 120}/{'f' * 130}.png"  # each part fits; the output name does not
    (split / long_name).parent.mkdir(parents=True)
    os.replace(split / coco["images"][1]["file_name"], split / long_name)
    coco["images"][1]["file_name"] = long_name
    (split / "coco.json").write_text(json.dumps(coco))
    out = tmp_path / "out"
    assert (
        main(["export", str(split), "--split", str(split), "--out", str(out), "--copies", "12", "--no-progress"]) == 2
    )
    err = capsys.readouterr().err
    expected = f"{'d' * 120}__{'f' * 130}_c11.jpg"  # the last copy's name is the longest
    assert err.count("\n") == 1 and f"{long_name!r} gives the output name {expected!r} of 260 bytes" in err
    assert "over the 255" in err and not out.exists()


# -- row 10: SIGTERM is handled as Ctrl-C is -------------------------------------------------------
def _shm_segments(pid: int) -> list[str]:
    return sorted(p.name for p in Path("/dev/shm").glob(f"flirdata-{pid}-*")) if Path("/dev/shm").is_dir() else []


@pytest.mark.slow
@pytest.mark.timeout(300)
@pytest.mark.parametrize("backend", ["process", "loky", "ray"])
def test_sigterm_mid_export_is_one_line_exit_143_and_resumes(
    source: Path, tmp_path: Path, backend: str, capsys: pytest.CaptureFixture
) -> None:
    if backend == "ray":
        pytest.importorskip("ray")
    out = tmp_path / "out"
    argv = export_argv(source, out, backend)
    proc = subprocess.Popen([sys.executable, "-m", "flirdata", *argv], cwd=REPO, stderr=subprocess.PIPE)
    shards = out / WORK_DIR / "shards"
    deadline = time.monotonic() + 250
    while proc.poll() is None and time.monotonic() < deadline:
        if shards.is_dir() and len(list(shards.glob("*.json"))) >= 2:  # the workers are writing
            proc.send_signal(signal.SIGTERM)
            break
        time.sleep(0.005)
    _, err = proc.communicate(timeout=120)
    text = err.decode()
    assert proc.returncode == 143, text
    hint = "what was written is kept: run the same command with --resume to finish"
    assert text == f"flirdata export: terminated (SIGTERM); {hint}\n"
    assert _shm_segments(proc.pid) == [] and not (out / LOCK).exists()
    assert main(export_argv(source, out, "threads", "--resume")) == 0, capsys.readouterr().err
    fresh = tmp_path / "fresh"
    export_augmented(_dataset(source, (512, 640)), fresh, copies=8, batch_size=4, progress=False)
    assert _digest(out) == _digest(fresh)
