"""Image files a dataset should not trust: damaged JPEGs, paths leaving the dataset, special and huge files.

Each case is one a download, a copy or a hand-edited ``coco.json`` can produce: entropy-coded
data damaged with header and end marker intact (OpenCV decodes it with only a libjpeg warning on
stderr), camera metadata after the end marker (valid), a ``file_name`` of ``../x`` or an absolute
path, a symlink out of the dataset, a FIFO or device in place of an image, a file too large to
be an image. Every one must be an error naming the file (or accepted, for the valid one) in the
dataset, on every backend, and in ``flirdata check``, which must never hang on them.
"""

from __future__ import annotations

import json
import os
import pickle
import re
import socket
import stat
from pathlib import Path

import cv2
import numpy as np
import pytest
from support import backend_params, use_shared_ray_for

import flirdata.images
from flirdata import BACKENDS, BadImageWarning, FlirDetection, ImageError, make_loader
from flirdata.cli import main
from flirdata.errors import AnnotationError
from flirdata.images import MAX_IMAGE_BYTES, decode_image, read_image_bytes
from flirdata.synth.rgb import colour_frame, make_palette
from flirdata.synth.thermal import make_scene, render_frame
from flirdata.tools.check import check_dataset

FRAMES = 4
SPLIT = "images_thermal_train"


def _frame(seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return render_frame(rng, make_scene(rng), 0)[0]


def _jpeg(image: np.ndarray) -> bytes:
    return cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, 95])[1].tobytes()


def damage_jpeg(data: bytes) -> bytes:
    """``data`` with the second half of its entropy-coded data zeroed, header and end-of-image marker
    intact: a copy or download that stopped half way into a file already allocated at full size."""
    scan, end = data.index(b"\xff\xda"), data.rindex(b"\xff\xd9")  # start of scan, end of image
    assert end - scan > 1000, "the frame's scan is too short to damage in its middle"
    middle = (scan + end) // 2
    return data[:middle] + bytes(end - middle) + data[end:]


@pytest.fixture(scope="module")
def frames() -> list[bytes]:
    """``FRAMES`` thermal-like 640x512 JPEGs (quality 95), as FLIR's grey frames are stored."""
    return [_jpeg(_frame(seed)) for seed in range(FRAMES)]


@pytest.fixture
def root(tmp_path: Path, frames: list[bytes]) -> Path:
    """A fresh dataset ``root/images_thermal_train`` of ``FRAMES`` JPEGs, one box each."""
    root = tmp_path / "dataset"
    (root / SPLIT / "data").mkdir(parents=True)
    images = []
    for k, data in enumerate(frames):
        (root / SPLIT / f"data/frame-{k}.jpg").write_bytes(data)
        images.append({"id": k, "file_name": f"data/frame-{k}.jpg", "width": 640, "height": 512})
    anns = [{"id": k, "image_id": k, "category_id": 1, "bbox": [10, 20, 30, 40]} for k in range(FRAMES)]
    coco = {"images": images, "annotations": anns, "categories": [{"id": 1, "name": "person"}]}
    (root / SPLIT / "coco.json").write_text(json.dumps(coco))
    return root


def _at(path: Path) -> str:
    """A regex matching a message that starts with ``path``."""
    return "^" + re.escape(str(path))


def _frame_path(root: Path, k: int) -> Path:
    return root / SPLIT / f"data/frame-{k}.jpg"


def _set_file_name(root: Path, k: int, name: str) -> None:
    path = root / SPLIT / "coco.json"
    coco = json.loads(path.read_text())
    coco["images"][k]["file_name"] = name
    path.write_text(json.dumps(coco))


def _check_lines(root: Path, capsys: pytest.CaptureFixture[str], *extra: str) -> tuple[int, list[str]]:
    code = main(["check", str(root), "--no-progress", *extra])
    return code, capsys.readouterr().out.splitlines()


def _one_error_line(lines: list[str], path: Path | str, message: str) -> str:
    matching = [line for line in lines if str(path) in line]
    assert len(matching) == 1, f"{path} should be named on exactly one line:\n" + "\n".join(lines)
    assert matching[0].startswith("error: ") and message in matching[0], matching[0]
    return matching[0]


# -- damaged JPEG: the decoder's own report, everywhere ----------------------------------
def test_damaged_jpeg_decodes_silently_in_opencv_but_raises_here(frames: list[bytes]) -> None:
    damaged = damage_jpeg(frames[0])
    clean = cv2.imdecode(np.frombuffer(frames[0], np.uint8), cv2.IMREAD_UNCHANGED)
    silent = cv2.imdecode(np.frombuffer(damaged, np.uint8), cv2.IMREAD_UNCHANGED)
    assert silent is not None and silent.shape == clean.shape, "OpenCV should return pixels: the case of the issue"
    assert not np.array_equal(silent, clean), "the damage should change the pixels OpenCV returns"
    with pytest.raises(ImageError, match=r"^frame\.jpg: corrupt JPEG \(the decoder reports: Corrupt JPEG data"):
        decode_image(damaged, "frame.jpg")


def test_damaged_colour_jpeg_raises_in_an_rgb_split() -> None:
    rng = np.random.default_rng(0)
    scene = make_scene(rng)
    grey, objects = render_frame(rng, scene, 0)
    bgr, _ = colour_frame(rng, grey, scene, make_palette(rng, scene), objects, (320, 256))
    data = _jpeg(bgr)
    assert decode_image(data, "colour.jpg", "rgb").shape == (256, 320, 3)
    with pytest.raises(ImageError, match=r"^colour\.jpg: corrupt JPEG"):
        decode_image(damage_jpeg(data), "colour.jpg", "rgb")


def test_truncated_jpeg_is_reported_by_the_decoder(frames: list[bytes]) -> None:
    with pytest.raises(ImageError, match=r"^cut\.jpg: truncated JPEG \(the decoder reports: Premature end"):
        decode_image(frames[0][: len(frames[0]) // 2], "cut.jpg")


@pytest.mark.parametrize("backend", backend_params(sorted(BACKENDS)))
def test_damaged_jpeg_fails_on_every_backend(
    root: Path, frames: list[bytes], backend: str, request: pytest.FixtureRequest
) -> None:
    use_shared_ray_for(backend, request)
    bad = _frame_path(root, 2)
    bad.write_bytes(damage_jpeg(frames[2]))
    dataset = FlirDetection(root, "train")
    workers = 1 if backend == "sequential" else 2
    with make_loader(dataset, backend=backend, workers=workers, batch_size=2) as loader:
        with pytest.raises(ImageError, match=_at(bad) + ": corrupt JPEG"):
            list(loader)


def test_skip_counts_the_damaged_jpeg(root: Path, frames: list[bytes]) -> None:
    bad = _frame_path(root, 1)
    bad.write_bytes(damage_jpeg(frames[1]))
    dataset = FlirDetection(root, "train", on_error="skip")
    with pytest.warns(BadImageWarning, match=rf"skipping bad image: {re.escape(str(bad))}: corrupt JPEG"):
        images = [dataset[i][0] for i in range(len(dataset))]
    assert dataset.skipped == 1 and dataset.stats["skipped_images"] == 1
    assert images[1].equal(images[2]), "the damaged frame is replaced by the next good one"


def test_check_reports_the_damaged_jpeg(root: Path, frames: list[bytes], capsys: pytest.CaptureFixture[str]) -> None:
    bad = _frame_path(root, 3)
    bad.write_bytes(damage_jpeg(frames[3]))
    code, lines = _check_lines(root, capsys)
    assert code == 1
    _one_error_line(lines, bad, "corrupt JPEG (the decoder reports: Corrupt JPEG data")
    assert lines[-1].startswith("FAILED: 1 bad image(s)")


# -- bytes after the end marker: valid ----------------------------------------------------
def test_bytes_after_the_end_marker_are_accepted(
    root: Path, frames: list[bytes], capsys: pytest.CaptureFixture[str]
) -> None:
    metadata = b"FLIR\x00" + bytes(range(256)) * 2  # cameras append their own records after EOI
    _frame_path(root, 0).write_bytes(frames[0] + metadata)
    clean = decode_image(frames[0], "clean.jpg")
    assert np.array_equal(decode_image(frames[0] + metadata, "with-metadata.jpg"), clean)
    assert np.array_equal(FlirDetection(root, "train")[0][0][0].numpy(), clean)
    code, lines = _check_lines(root, capsys)
    assert code == 0 and lines[-1].startswith("OK: 4 images"), lines


# -- file_name leaving the split folder: rejected when coco.json is parsed ----------------
@pytest.mark.parametrize("kind", ["dotdot", "nested dotdot", "absolute", "device"])
def test_file_name_outside_the_split_folder_is_an_annotation_error(root: Path, kind: str) -> None:
    outside = root.parent / "outside.jpg"
    outside.write_bytes(_frame_path(root, 0).read_bytes())  # a readable image: only the path is wrong
    name = {
        "dotdot": "../outside.jpg",
        "nested dotdot": "data/../../../outside.jpg",
        "absolute": str(outside),
        "device": "/dev/zero",
    }[kind]
    _set_file_name(root, 2, name)
    with pytest.raises(AnnotationError, match="image file outside the split folder") as info:
        FlirDetection(root, "train")
    assert f"image id 2: file_name {name!r} must be a relative path inside the split folder" in str(info.value)
    assert str(info.value).startswith(str(root / SPLIT / "coco.json"))


def test_check_reports_a_file_name_outside_in_one_line(root: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _set_file_name(root, 1, "../../outside.jpg")
    code, lines = _check_lines(root, capsys)
    assert code == 1
    _one_error_line(lines, root / SPLIT / "coco.json", "file_name '../../outside.jpg' must be a relative path")


# -- symlinks: fine inside the dataset folder, an error out of it --------------------------
@pytest.mark.parametrize("target", ["outside.jpg", "/dev/null"])
def test_symlinks_may_point_inside_the_dataset_only(
    root: Path, target: str, capsys: pytest.CaptureFixture[str]
) -> None:
    shared = root / "shared"  # inside the dataset folder, outside the split folder: fine
    shared.mkdir()
    _frame_path(root, 1).rename(shared / "frame-1.jpg")
    _frame_path(root, 1).symlink_to(Path("../../shared/frame-1.jpg"))
    outside = root.parent / "outside.jpg"
    outside.write_bytes(_frame_path(root, 0).read_bytes())
    link = _frame_path(root, 2)
    link.unlink()
    link.symlink_to(outside if target == "outside.jpg" else Path(target))
    dataset = FlirDetection(root, "train")
    assert dataset[1][0].shape == (1, 512, 640)
    with pytest.raises(
        ImageError, match=_at(link) + ": resolves to .*, outside the dataset folder " + re.escape(str(root))
    ):
        dataset[2]
    for checked in (root, root / SPLIT):  # the split folder alone: its dataset folder is its parent
        code, lines = _check_lines(checked, capsys)
        assert code == 1 and lines[-1].startswith("FAILED: 1 bad image(s)"), lines
        _one_error_line(lines, link, "outside the dataset folder")


def _swap_after_check(monkeypatch: pytest.MonkeyPatch, swap) -> None:
    """``swap()`` runs once, between the first check of a file and its open (the race a checked read must close)."""
    check, swapped = flirdata.images._stat_regular, []

    def check_then_swap(path, within):
        info = check(path, within)
        if not swapped:
            swapped.append(swap())
        return info

    monkeypatch.setattr(flirdata.images, "_stat_regular", check_then_swap)


@pytest.mark.parametrize("within", ["folder", "file"])
def test_a_symlink_out_swapped_in_between_the_check_and_the_open_is_refused(
    root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, within: str
) -> None:
    frame = root / SPLIT / "data" / "frame-1.jpg"
    secret = tmp_path / "secret.jpg"
    secret.write_bytes(b"not for the dataset's readers")
    if within == "file":

        def swap():
            frame.unlink()
            frame.symlink_to(secret)
    else:

        def swap():
            data = frame.parent
            data.rename(tmp_path / "data")
            (tmp_path / "data" / "frame-1.jpg").unlink()
            secret.rename(tmp_path / "data" / "frame-1.jpg")
            data.symlink_to(tmp_path / "data", target_is_directory=True)

    _swap_after_check(monkeypatch, swap)
    with pytest.raises(ImageError, match=_at(frame) + ": resolves to .*, outside the dataset folder"):
        read_image_bytes(frame, within=root)


def test_a_file_rewritten_in_between_the_check_and_the_open_is_read_as_it_is_now(
    root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    frame = root / SPLIT / "data" / "frame-1.jpg"
    new = root / SPLIT / "data" / "frame-1.new"
    rewritten = frame.read_bytes()[::-1]
    new.write_bytes(rewritten)
    _swap_after_check(monkeypatch, lambda: new.replace(frame))  # an atomic rewrite: another inode
    assert read_image_bytes(frame, within=root) == rewritten


def test_a_file_system_whose_stat_and_fstat_disagree_on_the_device_still_reads(
    root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    frame = root / SPLIT / "data" / "frame-1.jpg"
    check = flirdata.images._stat_regular

    def overlay_stat(path, within):  # overlayfs before Linux 4.19: stat names the overlay, fstat the layer
        fields = list(check(path, within)[:10])
        fields[stat.ST_DEV] += 1
        return os.stat_result(fields)

    monkeypatch.setattr(flirdata.images, "_stat_regular", overlay_stat)
    assert read_image_bytes(frame, within=root) == frame.read_bytes()


def test_a_folder_or_file_swapped_for_a_symlink_out_after_reads_is_refused(root: Path, tmp_path: Path) -> None:
    """Reads keep each folder's resolution (``_stat_known_folder``): a swap after it is still caught."""
    dataset = FlirDetection(root, "train")
    for k in range(2):  # the second read of the folder takes the kept resolution
        dataset[k]
    data = root / SPLIT / "data"
    outside = tmp_path / "outside"
    data.rename(outside)  # the same frames, now out of the dataset folder, and a link to them
    data.symlink_to(outside, target_is_directory=True)
    with pytest.raises(ImageError, match=_at(data / "frame-2.jpg") + ": resolves to .*, outside the dataset folder"):
        dataset[2]
    data.unlink()
    outside.rename(data)
    dataset[3]
    frame = data / "frame-1.jpg"
    frame.rename(tmp_path / "frame-1.jpg")
    frame.symlink_to(tmp_path / "frame-1.jpg")
    with pytest.raises(ImageError, match=_at(frame) + ": resolves to .*, outside the dataset folder"):
        dataset[1]


def test_frames_of_a_folder_already_read_cost_no_realpath(root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    dataset = FlirDetection(root, "train")
    dataset[0]
    calls: list[str] = []
    realpath = os.path.realpath
    monkeypatch.setattr(os.path, "realpath", lambda path: calls.append(path) or realpath(path))
    for k in range(1, FRAMES):
        dataset[k]
    assert calls == []


# -- FIFOs, devices, sockets: refused from a stat, never opened -----------------------------
@pytest.mark.timeout(20)
def test_fifo_is_refused_without_hanging(root: Path, capsys: pytest.CaptureFixture[str]) -> None:
    fifo = _frame_path(root, 1)
    fifo.unlink()
    os.mkfifo(fifo)  # nobody ever writes: opening it for reading would wait forever
    with pytest.raises(ImageError, match=_at(fifo) + r": is a FIFO \(named pipe\), expected a regular image file"):
        FlirDetection(root, "train")[1]
    # One thread: were the FIFO ever opened, the timeout would fail the test instead of a pool thread
    # blocking for good (the pool's shutdown waits for it). Threads run the same _check_image.
    code, lines = _check_lines(root, capsys, "--workers", "1")
    assert code == 1
    _one_error_line(lines, fifo, "is a FIFO (named pipe)")


@pytest.mark.timeout(20)
def test_device_and_socket_are_refused(
    root: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    device, sock_path = _frame_path(root, 0), _frame_path(root, 3)
    device.unlink()
    try:
        os.mknod(device, stat.S_IFCHR | 0o600, os.makedev(1, 3))  # a copy of /dev/null: reads as empty
    except PermissionError:
        pytest.skip("creating a device node needs CAP_MKNOD")
    sock_path.unlink()
    monkeypatch.chdir(sock_path.parent)  # a socket's path is at most ~107 bytes: bind it by its name alone
    with socket.socket(socket.AF_UNIX) as sock:
        sock.bind(sock_path.name)
        with pytest.raises(ImageError, match=_at(device) + ": is a character device, expected a regular image file"):
            FlirDetection(root, "train")[0]
        with pytest.raises(ImageError, match=_at(sock_path) + ": is a socket, expected a regular image file"):
            FlirDetection(root, "train")[3]
        code, lines = _check_lines(root, capsys)
    assert code == 1
    _one_error_line(lines, device, "is a character device")
    _one_error_line(lines, sock_path, "is a socket")


# -- size limit -----------------------------------------------------------------------------
def test_file_over_the_size_limit_is_refused_before_reading(root: Path, capsys: pytest.CaptureFixture[str]) -> None:
    huge = _frame_path(root, 2)
    with open(huge, "r+b") as f:  # sparse: a valid JPEG start, then zeros up to the limit plus one
        f.truncate(MAX_IMAGE_BYTES + 1)
    with pytest.raises(
        ImageError, match=_at(huge) + f": {MAX_IMAGE_BYTES + 1} bytes, over the limit of {MAX_IMAGE_BYTES} bytes"
    ):
        FlirDetection(root, "train")[2]
    code, lines = _check_lines(root, capsys)
    assert code == 1
    _one_error_line(lines, huge, f"over the limit of {MAX_IMAGE_BYTES} bytes")


def test_max_image_bytes_is_a_dataset_option_that_travels_with_it(root: Path) -> None:
    size = _frame_path(root, 0).stat().st_size
    dataset = pickle.loads(pickle.dumps(FlirDetection(root, "train", max_image_bytes=size - 1)))
    with pytest.raises(ImageError, match=rf"{size} bytes, over the limit of {size - 1} bytes"):
        dataset[0]
    assert FlirDetection(root, "train", max_image_bytes=size)[0][0].shape == (1, 512, 640)
    for bad in (0, -5, True, 1.5, "64"):
        with pytest.raises(ValueError, match=rf"max_image_bytes must be a positive int, got {bad!r}"):
            FlirDetection(root, "train", max_image_bytes=bad)  # type: ignore[arg-type]


def test_a_file_growing_after_its_stat_is_read_only_to_the_limit_plus_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "growing.jpg"
    path.write_bytes(bytes(10_000))
    now = os.stat(path)
    fields = list(now[:10])
    fields[stat.ST_SIZE] = 50
    stat_small = os.stat_result(fields)  # this file, as its stat saw it: 50 bytes
    monkeypatch.setattr(flirdata.images, "_stat_regular", lambda *_: stat_small)
    with pytest.raises(ImageError, match=r"growing\.jpg: 101 bytes, over the limit of 100 bytes"):
        read_image_bytes(path, max_bytes=100)


def test_a_read_allocates_the_files_size_not_the_limit(tmp_path: Path) -> None:
    """A read asks for the file's size plus one byte: a buffer of the limit (64 MiB) per read cost page faults."""
    path = tmp_path / "frame.jpg"
    path.write_bytes(bytes(range(256)) * 40)
    assert read_image_bytes(path, max_bytes=2**60) == path.read_bytes()  # a 1 EiB buffer cannot be allocated


@pytest.mark.timeout(20)
def test_every_row_at_once_is_one_line_each_in_check(
    root: Path, frames: list[bytes], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    damaged, fifo, link, huge = (_frame_path(root, k) for k in range(FRAMES))
    damaged.write_bytes(damage_jpeg(frames[0]))
    fifo.unlink()
    os.mkfifo(fifo)
    link.unlink()
    link.symlink_to(tmp_path / "elsewhere.jpg")
    (tmp_path / "elsewhere.jpg").write_bytes(frames[2])
    with open(huge, "r+b") as f:
        f.truncate(MAX_IMAGE_BYTES + 1)
    report = check_dataset(root, progress=False, workers=1)  # one thread: see test_fifo_is_refused_without_hanging
    assert sorted(p.path for p in report.errors) == sorted(map(str, (damaged, fifo, link, huge)))
    code, lines = _check_lines(root, capsys, "--workers", "1")
    assert code == 1 and len([line for line in lines if line.startswith("error: ")]) == 4
    assert lines[-1].startswith("FAILED: 4 bad image(s)")
