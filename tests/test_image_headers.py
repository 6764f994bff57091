"""Files whose header lies about their size (decompression bombs), read formats, non-finite pixels.

A bomb must be refused from its header alone: the tests replace both decoders by one that fails
the test, so a regression shows as that failure, never as gigabytes allocated on the test machine.
"""

from __future__ import annotations

import json
import re
import struct
import zlib
from pathlib import Path

import cv2
import numpy as np
import pytest

import flirdata.images
from flirdata import BadImageWarning, FlirDetection, ImageError
from flirdata.cli import main
from flirdata.headers import image_size
from flirdata.images import decode_image, read_image

SPLIT = "images_thermal_train"


def jpeg_bomb(channels: int, side: int = 60000) -> bytes:
    """A real JPEG of a few dozen KB whose frame header (SOF0) claims ``side`` x ``side``."""
    rng = np.random.default_rng(channels)
    image = rng.integers(0, 256, (200, 160) if channels == 1 else (120, 120, 3), dtype=np.uint8)
    data = bytearray(cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, 95])[1].tobytes())
    sof = data.index(b"\xff\xc0")
    data[sof + 5 : sof + 9] = struct.pack(">HH", side, side)
    assert simplejpeg_header(bytes(data)) == (side, side)
    return bytes(data)


def simplejpeg_header(data: bytes) -> tuple[int, int]:
    import simplejpeg

    return simplejpeg.decode_jpeg_header(data)[:2]


def _png_chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def png_bomb(side: int = 30000, block_rows: int = 1000) -> bytes:
    """A valid grey PNG of ``side`` x ``side`` zeros (~876 KB for 30000), made without holding its pixels.

    Each block of rows is compressed after a full flush, so every block compresses to the same bytes:
    one block is compressed and repeated, and the zlib checksum of all-zero data is computed directly.
    """
    assert side % block_rows == 0
    block = bytes((side + 1) * block_rows)  # a filter byte and a row of zeros, block_rows times
    deflate = zlib.compressobj(9)
    first = deflate.compress(block) + deflate.flush(zlib.Z_FULL_FLUSH)
    repeated = deflate.compress(block) + deflate.flush(zlib.Z_FULL_FLUSH)
    end = deflate.flush()[:-4]  # the final empty block, without the checksum of two blocks only
    length = (side + 1) * side
    adler = (length % 65521) << 16 | 1  # Adler-32 of `length` zero bytes
    stream = first + repeated * (side // block_rows - 1) + end + struct.pack(">I", adler)
    header = struct.pack(">IIBBBBB", side, side, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", header) + _png_chunk(b"IDAT", stream) + _png_chunk(b"IEND", b"")


@pytest.fixture
def no_decoding(monkeypatch: pytest.MonkeyPatch) -> None:
    """Decoding a frame over 640x512 fails the test: a bomb must be refused from its header.

    (Decoding it for real would allocate gigabytes, or succeed on a machine that overcommits.)
    """
    real_jpeg, real_other = flirdata.images.simplejpeg.decode_jpeg, flirdata.images.cv2.imdecode

    def guard(data: bytes) -> None:
        height, width = simplejpeg_header(data) if data.startswith(b"\xff\xd8") else image_size(data)
        if height * width > 640 * 512:
            pytest.fail(f"a {width}x{height} file was decoded: its header size was not checked first")

    def jpeg(data: bytes, *args: object, **kwargs: object) -> np.ndarray:
        guard(data)
        return real_jpeg(data, *args, **kwargs)

    def other(buf: np.ndarray, flags: int) -> np.ndarray:
        guard(buf.tobytes())
        return real_other(buf, flags)

    monkeypatch.setattr(flirdata.images.simplejpeg, "decode_jpeg", jpeg)
    monkeypatch.setattr(flirdata.images.cv2, "imdecode", other)


def write_dataset(root: Path, files: list[bytes], sides: list[tuple[int, int]] | None = None) -> list[Path]:
    """``root/images_thermal_train`` holding ``files`` as ``data/frame-K.jpg``, declared 640x512 (or ``sides``)."""
    folder = root / SPLIT
    (folder / "data").mkdir(parents=True)
    paths, images = [], []
    for k, data in enumerate(files):
        path = folder / f"data/frame-{k}.jpg"
        path.write_bytes(data)
        w, h = sides[k] if sides else (640, 512)
        images.append({"id": k, "file_name": f"data/frame-{k}.jpg", "width": w, "height": h})
        paths.append(path)
    coco = {"images": images, "annotations": [], "categories": [{"id": 1, "name": "person"}]}
    (folder / "coco.json").write_text(json.dumps(coco))
    return paths


def grey_jpeg() -> bytes:
    return cv2.imencode(".jpg", np.full((512, 640), 90, np.uint8))[1].tobytes()


BOMBS = {"jpeg grey": lambda: jpeg_bomb(1), "jpeg colour": lambda: jpeg_bomb(3), "png named .jpg": png_bomb}


@pytest.mark.parametrize("kind", sorted(BOMBS))
def test_a_bomb_is_refused_from_its_header_naming_the_file(tmp_path: Path, kind: str, no_decoding: None) -> None:
    data = BOMBS[kind]()
    side = image_size(data)[0]
    (path,) = write_dataset(tmp_path, [data])
    with pytest.raises(
        ImageError, match=rf"^{re.escape(str(path))}: image is {side}x{side} but coco.json declares 640x512$"
    ):
        FlirDetection(tmp_path, "train")[0]


def test_the_png_bomb_is_the_size_the_issue_names() -> None:
    data = png_bomb()
    assert 800_000 < len(data) < 900_000 and image_size(data) == (30000, 30000)
    small = png_bomb(side=300, block_rows=100)  # the same construction decodes to zeros
    assert np.array_equal(cv2.imdecode(np.frombuffer(small, np.uint8), cv2.IMREAD_UNCHANGED), np.zeros((300, 300)))


def test_a_bomb_that_coco_json_agrees_with_is_over_the_pixel_cap(tmp_path: Path, no_decoding: None) -> None:
    (path,) = write_dataset(tmp_path, [jpeg_bomb(1)], sides=[(60000, 60000)])
    with pytest.raises(
        ImageError, match=rf"^{re.escape(str(path))}: header declares 60000x60000 = 3600000000 pixels, "
    ):
        FlirDetection(tmp_path, "train")[0]
    with pytest.raises(ImageError, match=f"over the limit of {flirdata.images.MAX_IMAGE_PIXELS} pixels"):
        decode_image(png_bomb(), "bomb.png")  # no coco.json to compare with: the cap alone


def test_skip_skips_a_bomb_and_check_reports_it_in_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], no_decoding: None
) -> None:
    bombs = write_dataset(tmp_path, [jpeg_bomb(3), png_bomb(), jpeg_bomb(1)])
    dataset = FlirDetection(tmp_path, "train", on_error="skip")
    with pytest.warns(BadImageWarning), pytest.raises(Exception, match="no readable image in the whole split"):
        dataset[0]
    assert dataset.skipped == 3
    assert main(["check", str(tmp_path), "--no-progress"]) == 1
    lines = capsys.readouterr().out.splitlines()
    for path in bombs:
        (line,) = [line for line in lines if str(path) in line]
        assert line.startswith(f"error: {path}: image is ") and "but coco.json declares 640x512" in line
    assert lines[-1].startswith("FAILED: 3 bad image(s)")


def test_skip_replaces_a_bomb_by_the_next_good_frame(tmp_path: Path, no_decoding: None) -> None:
    write_dataset(tmp_path, [jpeg_bomb(3), grey_jpeg()])
    dataset = FlirDetection(tmp_path, "train", on_error="skip")
    with pytest.warns(BadImageWarning, match="frame-0.jpg: image is 60000x60000"):
        image, _ = dataset[0]
    assert dataset.skipped == 1 and image.shape == (1, 512, 640) and bool((image == 90).all())


# -- every format the header reader knows -----------------------------------------------------
FORMATS = {  # suffix -> (encoder parameters, channels)
    ".png": ([], 3),
    ".png16": ([], 1),
    ".tif": ([], 3),
    ".bmp": ([], 3),
    ".webp": ([cv2.IMWRITE_WEBP_QUALITY, 80], 3),
    ".webp-lossless": ([cv2.IMWRITE_WEBP_QUALITY, 101], 3),
    ".webp-alpha": ([cv2.IMWRITE_WEBP_QUALITY, 80], 4),
    ".pgm": ([], 1),
    ".ppm": ([], 3),
    ".pbm": ([], 1),
    ".pam": ([], 3),
    ".pfm": ([], 1),
    ".jpg": ([], 3),
}


@pytest.mark.parametrize("suffix", sorted(FORMATS))
def test_the_header_size_of_every_read_format_is_the_decoded_size(suffix: str) -> None:
    params, channels = FORMATS[suffix]
    shape = (37, 53) if channels == 1 else (37, 53, channels)
    image = np.random.default_rng(1).integers(0, 256, shape).astype(np.uint8)
    if suffix == ".png16":
        image = image.astype(np.uint16) * 257
    elif suffix == ".pfm":
        image = image.astype(np.float32)
    ok, encoded = cv2.imencode(suffix.split("-")[0].replace("16", ""), image, params)
    assert ok
    data = encoded.tobytes()
    assert image_size(data, "x") == (37, 53)
    assert cv2.imdecode(encoded, cv2.IMREAD_UNCHANGED).shape[:2] == (37, 53)


def _tiff_header(order: str, big: bool, width: int, height: int) -> bytes:
    """A TIFF's header and first directory holding only ImageWidth (LONG) and ImageLength (SHORT);
    a value shorter than its field sits in the field's first bytes, whatever the byte order."""
    magic = {"<": b"II", ">": b"MM"}[order] + struct.pack(order + "H", 43 if big else 42)
    if big:
        head = magic + struct.pack(order + "HHQ", 8, 0, 16)
        entries = struct.pack(order + "HHQI4x", 256, 4, 1, width) + struct.pack(order + "HHQH6x", 257, 3, 1, height)
        return head + struct.pack(order + "Q", 2) + entries
    entries = struct.pack(order + "HHII", 256, 4, 1, width) + struct.pack(order + "HHIHH", 257, 3, 1, height, 0)
    return magic + struct.pack(order + "I", 8) + struct.pack(order + "H", 2) + entries


@pytest.mark.parametrize("big", [False, True])
@pytest.mark.parametrize("order", ["<", ">"])
def test_tiff_headers_of_either_byte_order_and_bigtiff(order: str, big: bool) -> None:
    assert image_size(_tiff_header(order, big, 60000, 512)) == (512, 60000)


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"GIF89a\x10\x00\x10\x00", "cannot decode image (corrupt or unsupported format); expected one of JPEG, PNG"),
        (b"\x89PNG\r\n\x1a\n\x00\x00", "truncated or corrupt PNG header"),
        (b"II*\x00\x08\x00\x00\x00\x01\x00", "truncated or corrupt TIFF header"),
        (b"\xff\xd8\xff\xe0", "JPEG"),
    ],
)
def test_a_header_without_a_size_is_an_image_error(data: bytes, message: str) -> None:
    with pytest.raises(ImageError, match=f"^frame.jpg: .*{re.escape(message)}"):
        decode_image(data, "frame.jpg")


# -- non-finite pixels ---------------------------------------------------------------------
@pytest.mark.parametrize("value", [np.nan, np.inf, -np.inf])
def test_a_float_tiff_with_non_finite_pixels_is_an_image_error(tmp_path: Path, value: float) -> None:
    image = np.linspace(0, 1, 512 * 640, dtype=np.float32).reshape(512, 640)
    image[100, 200] = value
    (path,) = write_dataset(tmp_path, [cv2.imencode(".tiff", image)[1].tobytes()])
    with pytest.raises(ImageError, match=rf"^{re.escape(str(path))}: non-finite pixels \(NaN or inf\) in a float32"):
        read_image(path, (512, 640))
    assert main(["check", str(tmp_path), "--no-progress"]) == 1


def test_a_finite_float_tiff_still_reads(tmp_path: Path) -> None:
    image = np.linspace(0, 1, 512 * 640, dtype=np.float32).reshape(512, 640)
    (path,) = write_dataset(tmp_path, [cv2.imencode(".tiff", image)[1].tobytes()])
    assert read_image(path, (512, 640)).max() == 255
