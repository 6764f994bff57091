"""Reading and decoding of one image file to a uint8 array of its split's modality, with loud failures.

A thermal split holds grey frames (``uint8 [H, W]``), an RGB split colour frames (``uint8
[H, W, 3]`` in R, G, B order, as torchvision expects; OpenCV decodes B, G, R). A file is grey
when it has one channel, or three equal ones (some tools save grey frames as RGB JPEGs, and
a JPEG round trip keeps equal channels exactly equal). A colour file in a thermal split or a
grey one in an RGB split is an error: silently converting it would train on the wrong data.

JPEGs are decoded by libjpeg-turbo through ``simplejpeg`` in strict mode, so damaged
entropy-coded data, a missing end of image or any other libjpeg warning is an error the
decoder itself reports. OpenCV only prints such warnings on stderr and returns the damaged
pixels (the missing rows grey), so it decodes every other format only (PNG, TIFF, ...), whose
libraries fail on truncated or damaged data. Bytes after a JPEG's end-of-image marker are
ignored, as cameras append metadata there.

Before any decoding, the size in the file's header (``flirdata.headers``) is compared with the
size ``coco.json`` declares and with ``MAX_IMAGE_PIXELS``: a decoder allocates the frame its
header claims, so a 40 KB file claiming 60000x60000 would otherwise cost gigabytes and seconds.

Reading a file (``read_image_bytes``) checks, before opening it, that it resolves inside the
dataset folder (a symlink may point anywhere inside it, not outside), that it is a regular
file (a FIFO, device or socket is refused without opening it, so nothing hangs) and that it
is at most ``MAX_IMAGE_BYTES`` long; it never reads more than the limit plus one byte, and only
a file that is the one it checked or lies inside the dataset folder (one swapped in between for
a symlink out is checked again and refused; a rewrite is read as it is now). A frame reached
from the dataset folder through plain folders (no symlink) costs an ``lstat`` per folder below
the dataset folder and one of the file, not a ``realpath`` (``_stat_plain_path``). Inside
``supplied_image_bytes(files)`` it returns the bytes another process read and checked that way
instead (the ``ray`` backend's ``ship_images``: actors on nodes that cannot see the dataset).
"""

from __future__ import annotations

import contextlib
import os
import stat
import threading
from collections.abc import Iterator, Mapping
from pathlib import Path

import cv2
import numpy as np
import simplejpeg

from flirdata.errors import ImageError
from flirdata.headers import image_size, jpeg_error
from flirdata.names import MODALITIES  # modality -> channels, defined where the parsers read it

__all__ = [
    "MAX_IMAGE_BYTES",
    "MAX_IMAGE_PIXELS",
    "MODALITIES",
    "as_chw",
    "as_hwc",
    "check_modality",
    "dataset_folder",
    "decode_gray",
    "decode_image",
    "infer_modality",
    "read_gray",
    "read_image",
    "read_image_bytes",
    "supplied_image_bytes",
]

# The largest image file read, in bytes. FLIR ADAS v2 frames are well under 2 MB, and even a raw
# 16-bit 2048x1536 colour TIFF is 18 MiB; the limit bounds the memory a stray huge file (or a
# file that keeps growing) can take in every worker at once.
MAX_IMAGE_BYTES = 64 * 2**20
# The most pixels decoded from one file, checked on its header before decoding (the file limit
# does not bound the frame: 876 KB of PNG hold 900 MB of zeros). 8192x8192; a FLIR RGB frame
# is 3.1 megapixels, and a frame at the limit decodes to 64 MiB per channel byte.
MAX_IMAGE_PIXELS = 2**26
# Folder-name prefixes of the FLIR ADAS v2 download's RGB splits.
_RGB_PREFIXES = ("images_rgb_", "video_rgb_")
# A colour frame differs between channels almost everywhere, so a sparse grid finds it
# without comparing every pixel; only frames equal on the grid get the full comparison.
_PROBE_STEP = 7

_JPEG_START = b"\xff\xd8"
# O_NONBLOCK: opening a FIFO that appeared after the stat must not wait for a writer.
_OPEN_FLAGS = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_BINARY", 0) | getattr(os, "O_CLOEXEC", 0)
# This thread's ``supplied_image_bytes`` files (path -> bytes), if any.
_SUPPLIED = threading.local()
# A file found replaced between its check and its open is checked again: attempts in all.
_OPEN_ATTEMPTS = 2
# (dataset folder, image folder) -> the folders between them, to lstat on each read, or None when
# the image folder is not written below the dataset folder (``_folders_below``). Bounded: a split
# has a few folders; a process that has seen more starts over.
_FOLDERS: dict[tuple[str, str], tuple[str, ...] | None] = {}
_MAX_FOLDERS = 1024
_SPECIAL_FILES = {
    stat.S_IFIFO: "a FIFO (named pipe)",
    stat.S_IFCHR: "a character device",
    stat.S_IFBLK: "a block device",
    stat.S_IFSOCK: "a socket",
}


def check_modality(modality: str) -> str:
    """``modality`` if it is a key of ``MODALITIES``, else a ValueError listing them."""
    if modality not in MODALITIES:
        raise ValueError(f"unknown modality {modality!r}; expected one of {sorted(MODALITIES)}")
    return modality


def infer_modality(folder: str | Path) -> str:
    """The modality of a split folder: RGB for ``images_rgb_*`` and ``video_rgb_*``, else thermal."""
    return "rgb" if Path(folder).name.startswith(_RGB_PREFIXES) else "thermal"


def _inside(path: str | Path, folder: str | Path) -> bool:
    """Whether ``path`` is ``folder`` or below it, both already resolved."""
    try:
        return os.path.commonpath([path, folder]) == str(folder)
    except ValueError:  # on Windows, paths on two drives have no common path
        return False


def dataset_folder(root: str | Path, split_dir: str | Path) -> Path:
    """The folder a split's image files, and the targets of symlinks among them, must stay in.

    ``root`` when the split folder lies below it (``root/images_thermal_train``), else the
    folder holding the split folder (a split given by a path elsewhere, or ``root`` being the
    split folder itself), so ``flirdata check ROOT`` and ``check ROOT/images_thermal_train``
    accept the same files.
    """
    real_root, real_split = os.path.realpath(root), os.path.realpath(split_dir)
    if real_split != real_root and _inside(real_split, real_root):
        return Path(root)
    return Path(split_dir).parent


def _check_inside(path: str | Path, within: str | Path) -> None:
    """``path``, every symlink on the way resolved, lies inside ``within``; else an ImageError."""
    real, folder = os.path.realpath(path), os.path.realpath(within)
    if not _inside(real, folder):
        raise ImageError(
            f"{path}: resolves to {real}, outside the dataset folder {within}; image files, "
            "and the targets of symlinks among them, must stay inside it"
        )


def _folders_below(folder: str, within: str) -> tuple[str, ...] | None:
    """The folders from ``within`` (excluded) down to ``folder``, when ``folder`` names a path below it."""
    key = (within, folder)
    folders = _FOLDERS.get(key, False)
    if folders is False:
        prefix = within.rstrip(os.sep) + os.sep
        names = folder[len(prefix) :].split(os.sep) if folder.startswith(prefix) else [""]
        plain = within and folder != within and not any(name in ("", ".", "..") for name in names)
        folders = tuple(prefix + os.sep.join(names[: i + 1]) for i in range(len(names))) if plain else None
        if len(_FOLDERS) >= _MAX_FOLDERS:
            _FOLDERS.clear()
        _FOLDERS[key] = folders
    return folders


def _stat_plain_path(path: str | Path, within: str | Path) -> os.stat_result | None:
    """``os.lstat(path)`` when ``path`` is a regular file reached from ``within`` through plain folders, else None.

    When no folder between ``within`` and the file, nor the file, is a symlink, the path resolves
    inside ``within`` whatever ``within`` itself resolves to, and ``realpath`` (an ``lstat`` per
    component of both paths, in Python, on every read) has nothing to add. So a frame costs an
    ``lstat`` per folder below ``within`` (two in the FLIR layout) and one of the file. Anything
    else (a symlink, a special file, a missing one, a path not written below ``within``) is None:
    the full check decides, and names what is wrong.
    """
    folders = _folders_below(os.path.dirname(os.fspath(path)), os.fspath(within))
    if folders is None:
        return None
    try:
        for folder in folders:  # a folder swapped for a symlink since the last read shows here
            if not stat.S_ISDIR(os.lstat(folder).st_mode):
                return None
        info = os.lstat(path)
    except OSError:
        return None
    return info if stat.S_ISREG(info.st_mode) else None


def _stat_regular(path: str | Path, within: str | Path | None) -> os.stat_result:
    """``os.stat(path)`` of a regular file inside ``within``; anything else is an ImageError."""
    if within is not None:
        plain = _stat_plain_path(path, within)
        if plain is not None:
            return plain
        _check_inside(path, within)
    try:
        info = os.stat(path)
    except FileNotFoundError:
        raise ImageError(f"{path}: image file not found") from None
    if stat.S_ISDIR(info.st_mode):
        raise ImageError(f"{path}: is a directory, expected an image file")
    if not stat.S_ISREG(info.st_mode):
        kind = _SPECIAL_FILES.get(stat.S_IFMT(info.st_mode), "not a regular file")
        raise ImageError(f"{path}: is {kind}, expected a regular image file")
    return info


def _too_large(path: str | Path, size: int, limit: int) -> ImageError:
    return ImageError(
        f"{path}: {size} bytes, over the limit of {limit} bytes per image file "
        "(max_image_bytes, default flirdata.images.MAX_IMAGE_BYTES)"
    )


@contextlib.contextmanager
def supplied_image_bytes(files: Mapping[str, bytes]) -> Iterator[None]:
    """In this thread, inside the block, ``read_image_bytes(path)`` is ``files[str(path)]`` when it is there.

    Whoever supplies ``files`` read them with ``read_image_bytes`` and the same ``within`` and
    ``max_bytes`` (the checks need the dataset's own file system, which the reader of the
    supplied bytes may not have); paths not in ``files`` are read from disk as usual.
    """
    saved = getattr(_SUPPLIED, "files", None)
    _SUPPLIED.files = files
    try:
        yield
    finally:
        _SUPPLIED.files = saved


def read_image_bytes(path: str | Path, within: str | Path | None = None, max_bytes: int | None = None) -> bytes:
    """The contents of one image file, checked before it is opened.

    Args:
        path: image file.
        within: the dataset folder (see ``dataset_folder``); ``path`` must resolve inside it,
            symlinks included. ``None`` skips this check.
        max_bytes: the largest file read; default ``MAX_IMAGE_BYTES``.

    Raises:
        ImageError: the file is missing, outside ``within``, a directory, FIFO, device or
            socket, or longer than ``max_bytes`` (at most ``max_bytes + 1`` bytes are read);
            or swapped for a file out of ``within`` between its check and its open twice in a row.
    """
    supplied = getattr(_SUPPLIED, "files", None)
    if supplied is not None and str(path) in supplied:
        return supplied[str(path)]
    limit = MAX_IMAGE_BYTES if max_bytes is None else max_bytes
    for _ in range(_OPEN_ATTEMPTS):
        data = _read_checked(path, within, limit)
        if data is not None:
            return data
    raise ImageError(f"{path}: swapped between its check and its open {_OPEN_ATTEMPTS} times in a row; not read")


def _read_checked(path: str | Path, within: str | Path | None, limit: int) -> bytes | None:
    """The file's bytes if the file opened is the one checked, or lies inside ``within``; else None.

    Between the check and the open the file, or a folder above it, may be swapped (a file
    rewritten in its place, or a symlink out of the dataset). An opened file whose identity
    (device, inode) is not the checked one's is read only if the kernel's path of it lies
    inside ``within``: a rewrite is read as it is now, a symlink out is checked again.
    """
    info = _stat_regular(path, within)
    if info.st_size > limit:
        raise _too_large(path, info.st_size, limit)
    fd = os.open(path, _OPEN_FLAGS)
    try:
        opened = os.fstat(fd)
        if (opened.st_dev, opened.st_ino) != (info.st_dev, info.st_ino) and not _opened_inside(fd, within):
            return None
        if not stat.S_ISREG(opened.st_mode):
            raise ImageError(f"{path}: not a regular file, expected an image file")
        data = _read_to_limit(fd, opened.st_size, limit)
    finally:
        os.close(fd)
    if len(data) > limit:  # it grew since the stat
        raise _too_large(path, len(data), limit)
    return data


def _opened_inside(fd: int, within: str | Path | None) -> bool:
    """Whether the file open at ``fd`` lies inside ``within`` (None: anywhere will do), by the kernel's path of it.

    Asked only when its identity differs from the one checked: replaced since, or a file system
    whose ``stat`` and ``fstat`` disagree on the device (overlayfs before Linux 4.19).
    """
    if within is None:
        return True
    try:
        real = os.readlink(f"/proc/self/fd/{fd}")
    except OSError:  # no /proc: the path is checked again
        return False
    return _inside(real, os.path.realpath(within))


def _read_to_limit(fd: int, size: int, limit: int) -> bytes:
    """The file's bytes, at most ``limit + 1``: its ``size`` plus one first, then on to the limit if it grew.

    Asking for ``limit + 1`` bytes at once would allocate them (64 MiB by default) on every read,
    and the pages the kernel maps for each such buffer cost more than the read itself.
    """
    parts, got, want = [], 0, min(size, limit) + 1
    while part := os.read(fd, want - got):
        parts.append(part)
        got += len(part)
        if got == want:
            if want > limit:
                break
            want = limit + 1  # it grew since its size was taken: read on, to the limit plus one
    return b"".join(parts)


def _decode_jpeg(data: bytes, name: str) -> np.ndarray:
    """Grey ``[H, W]`` or R, G, B ``[H, W, 3]``; a warning of libjpeg-turbo is an error here."""
    try:
        grey = simplejpeg.decode_jpeg_header(data)[2] == "Gray"
        image = simplejpeg.decode_jpeg(data, colorspace="GRAY" if grey else "RGB", strict=True)
    except ValueError as exc:
        raise jpeg_error(name, exc) from None
    return image[:, :, 0] if grey else image


def _decode_other(data: bytes, name: str) -> np.ndarray:
    """A non-JPEG file through OpenCV, as ``[H, W]`` or R, G, B ``[H, W, 3]``."""
    image = cv2.imdecode(np.frombuffer(data, dtype=np.uint8), cv2.IMREAD_UNCHANGED)
    if image is None:
        raise ImageError(f"{name}: cannot decode image (corrupt or unsupported format)")
    if image.ndim == 3 and image.shape[2] in (1, 2):  # grey, or grey + alpha
        return image[:, :, 0]
    if image.ndim == 3:  # alpha carries no scene content
        return cv2.cvtColor(image[:, :, :3], cv2.COLOR_BGR2RGB)
    return image


def _equal_channels(image: np.ndarray) -> bool:
    probe = image[::_PROBE_STEP, ::_PROBE_STEP]
    if not ((probe[:, :, 0] == probe[:, :, 1]).all() and (probe[:, :, 1] == probe[:, :, 2]).all()):
        return False
    return bool(np.array_equal(image[:, :, 0], image[:, :, 1]) and np.array_equal(image[:, :, 1], image[:, :, 2]))


def _to_uint8(image: np.ndarray, modality: str) -> np.ndarray:
    if image.dtype == np.uint8:
        return image
    if modality == "thermal":
        # 16-bit radiometric TIFF/PNG: scale the full range to 8 bits.
        return cv2.normalize(image, None, 0, 255, cv2.NORM_MINMAX).astype(np.uint8)
    # A fixed scale for colour: stretching each frame's range would shift its colours.
    scale = 255.0 / np.iinfo(image.dtype).max if image.dtype.kind in "iu" else 255.0
    return np.clip(image * scale + 0.5, 0, 255).astype(np.uint8)


def _check_size(data: bytes, name: str, expect_hw: tuple[int, int] | None) -> None:
    """The header's size against ``coco.json`` and ``MAX_IMAGE_PIXELS``, before a byte is decoded."""
    height, width = image_size(data, name)
    if expect_hw is not None and (height, width) != tuple(expect_hw):
        raise _wrong_size(name, height, width, expect_hw)
    if height * width > MAX_IMAGE_PIXELS:
        raise ImageError(
            f"{name}: header declares {width}x{height} = {height * width} pixels, over the limit of "
            f"{MAX_IMAGE_PIXELS} pixels per image (flirdata.images.MAX_IMAGE_PIXELS); not decoded"
        )


def _wrong_size(name: str | Path, height: int, width: int, expect_hw: tuple[int, int]) -> ImageError:
    return ImageError(f"{name}: image is {width}x{height} but coco.json declares {expect_hw[1]}x{expect_hw[0]}")


def decode_image(
    data: bytes, name: str = "<bytes>", modality: str = "thermal", expect_hw: tuple[int, int] | None = None
) -> np.ndarray:
    """Decode encoded image bytes to ``uint8 [H, W]`` (thermal) or ``uint8 [H, W, 3]`` RGB (rgb).

    The size in the file's header is checked first, against ``expect_hw`` (``(height,
    width)``) when given and against ``MAX_IMAGE_PIXELS``, so a file claiming a huge frame
    costs neither the time nor the memory of decoding it.

    Raises:
        ImageError: empty, truncated or undecodable bytes (for a JPEG: anything its decoder
            warns about), a format whose header ``flirdata.headers`` cannot read, a header
            size other than ``expect_hw`` or over the pixel limit, non-finite pixels (NaN or
            inf in a float TIFF), or channels that do not match ``modality`` (a colour file
            for "thermal", a grey one for "rgb").
    """
    check_modality(modality)
    if not data:
        raise ImageError(f"{name}: image file is empty")
    _check_size(data, name, expect_hw)
    image = _decode_jpeg(data, name) if data.startswith(_JPEG_START) else _decode_other(data, name)
    if image.dtype.kind == "f" and not np.isfinite(image).all():
        raise ImageError(f"{name}: non-finite pixels (NaN or inf) in a {image.dtype} image; expected finite values")
    grey = image.ndim == 2 or _equal_channels(image)
    if modality == "thermal":
        if not grey:
            raise ImageError(
                f"{name}: colour image (3 different channels) in a thermal split; expected a "
                "grey frame (for an RGB split: modality='rgb', --modality rgb)"
            )
        image = image if image.ndim == 2 else image[:, :, 0]
    elif grey:
        what = "1 channel" if image.ndim == 2 else "3 equal channels"
        raise ImageError(
            f"{name}: grey image ({what}) in an RGB split; expected a colour frame "
            "(for a thermal split: modality='thermal', --modality thermal)"
        )
    return np.ascontiguousarray(_to_uint8(image, modality))


def decode_gray(data: bytes, name: str = "<bytes>") -> np.ndarray:
    """Decode a grey frame to ``uint8 [H, W]``: ``decode_image(data, name, "thermal")``."""
    return decode_image(data, name, "thermal")


def read_image(
    path: str | Path,
    expect_hw: tuple[int, int] | None = None,
    modality: str = "thermal",
    *,
    within: str | Path | None = None,
    max_bytes: int | None = None,
) -> np.ndarray:
    """Read one image file as ``uint8 [H, W]`` (thermal) or ``[H, W, 3]`` RGB; errors name the file.

    Args:
        path: image file.
        expect_hw: the ``(height, width)`` the annotation file declares, checked when given,
            since boxes are only right for the image size they were drawn on.
        modality: a key of ``MODALITIES``; the file's channels must match it.
        within: the dataset folder ``path`` must resolve inside (see ``read_image_bytes``).
        max_bytes: the largest file read; default ``MAX_IMAGE_BYTES``.
    """
    check_modality(modality)
    image = decode_image(read_image_bytes(path, within, max_bytes), str(path), modality, expect_hw)
    if expect_hw is not None and image.shape[:2] != tuple(expect_hw):  # a decoder that disagrees with its header
        raise _wrong_size(path, image.shape[0], image.shape[1], expect_hw)
    return image


def read_gray(path: str | Path, expect_hw: tuple[int, int] | None = None) -> np.ndarray:
    """Read one grey frame as ``uint8 [H, W]``: ``read_image(path, expect_hw, "thermal")``."""
    return read_image(path, expect_hw, "thermal")


def as_chw(image: np.ndarray) -> np.ndarray:
    """A decoded or augmented image as contiguous ``[C, H, W]``: ``[H, W]`` gets ``C = 1``."""
    if image.ndim == 2:
        return np.ascontiguousarray(image[None])
    return np.ascontiguousarray(image.transpose(2, 0, 1))


def as_hwc(image: np.ndarray) -> np.ndarray:
    """A dataset image ``[C, H, W]`` as OpenCV lays it out: ``[H, W]`` for ``C = 1``, else ``[H, W, C]``."""
    if image.ndim == 2:
        return image
    return image[0] if image.shape[0] == 1 else np.ascontiguousarray(image.transpose(1, 2, 0))
