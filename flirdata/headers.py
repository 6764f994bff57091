"""An image's size read from its file header, before anything is decoded.

A decoder allocates the frame its header declares before it reads a single pixel, so a 40 KB
JPEG claiming 60000x60000 asks for 3.4 GB (10 GiB in colour), and a PNG of zeros compresses
900 MB of pixels into 876 KB. ``image_size`` reads the width and height from the header alone
(a few dozen bytes, no allocation), so the caller compares them with ``coco.json`` and a pixel
cap first. Formats whose header this module does not read are refused rather than decoded
blind: JPEG, PNG, TIFF (and BigTIFF), BMP, WebP and the PNM family (PBM, PGM, PPM, PAM, PFM)
are read, which covers what cameras and image tools write; JPEG 2000, AVIF, GIF, HDR and Sun
raster files, which OpenCV would also decode, are not.
"""

from __future__ import annotations

import re
import struct

import simplejpeg

from flirdata.errors import ImageError

__all__ = ["HEADER_FORMATS", "image_size", "jpeg_error"]

HEADER_FORMATS = ("JPEG", "PNG", "TIFF", "BMP", "WebP", "PNM")

# libjpeg's words for a file that ends before its image does (JWRN_JPEG_EOF).
_JPEG_EOF = "Premature end of JPEG file"
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
# byte order mark + version -> (struct byte order, BigTIFF)
_TIFF_MAGIC = {b"II*\0": ("<", False), b"MM\0*": (">", False), b"II+\0": ("<", True), b"MM\0+": (">", True)}
_TIFF_WIDTH, _TIFF_LENGTH = 256, 257
# TIFF field type -> struct code of one value (SHORT, LONG, LONG8)
_TIFF_TYPES = {3: "H", 4: "I", 16: "Q"}
# PNM: magic, then whitespace- and comment-separated tokens; PAM (P7) names its fields instead.
_PNM_TOKEN = re.compile(rb"(?:\s|#[^\n]*\n)+(\d{1,10})")
_PAM_FIELD = re.compile(rb"^(WIDTH|HEIGHT)\s+(\d{1,10})\s*$", re.MULTILINE)
_PNM_MAGICS = (b"P1", b"P2", b"P3", b"P4", b"P5", b"P6", b"Pf", b"PF")
# A PNM/PAM header is text of a few lines; the comments allowed in it are bounded here.
_PNM_HEADER_BYTES = 4096


class _Short(Exception):
    """The header ends, or points, past the data."""


def _unpack(fmt: str, data: bytes, offset: int) -> tuple[int, ...]:
    if offset < 0 or offset + struct.calcsize(fmt) > len(data):
        raise _Short
    return struct.unpack_from(fmt, data, offset)


def jpeg_error(name: str, exc: ValueError) -> ImageError:
    """The ImageError for libjpeg-turbo's complaint ``exc`` about JPEG ``name``."""
    reason = str(exc).split("(): ", 1)[-1]  # "tjDecompressHeader3(): ..." names an internal call
    what = "truncated JPEG" if _JPEG_EOF in reason else "corrupt JPEG"
    return ImageError(f"{name}: {what} (the decoder reports: {reason})")


def _jpeg(data: bytes, name: str) -> tuple[int, int]:
    try:
        height, width = simplejpeg.decode_jpeg_header(data)[:2]
    except ValueError as exc:  # no frame header before the data ends, or a damaged marker
        raise jpeg_error(name, exc) from None
    return height, width


def _png(data: bytes, name: str) -> tuple[int, int]:
    if data[12:16] != b"IHDR":  # IHDR must be the first chunk
        raise _Short
    width, height = _unpack(">II", data, 16)
    return height, width


def _tiff(data: bytes, name: str) -> tuple[int, int]:
    """Width and length of the first image (IFD 0), the one OpenCV decodes."""
    order, big = _TIFF_MAGIC[data[:4]]
    offset = _unpack(order + ("Q" if big else "I"), data, 8 if big else 4)[0]
    count = _unpack(order + ("Q" if big else "H"), data, offset)[0]
    entry, first = (20, offset + 8) if big else (12, offset + 2)
    found: dict[int, int] = {}
    for k in range(min(count, (len(data) - first) // entry)):
        tag, kind = _unpack(order + "HH", data, first + k * entry)
        if tag in (_TIFF_WIDTH, _TIFF_LENGTH) and kind in _TIFF_TYPES:
            found[tag] = _unpack(order + _TIFF_TYPES[kind], data, first + k * entry + (12 if big else 8))[0]
    if len(found) < 2:
        raise _Short
    return found[_TIFF_LENGTH], found[_TIFF_WIDTH]


def _bmp(data: bytes, name: str) -> tuple[int, int]:
    if _unpack("<I", data, 14)[0] == 12:  # OS/2 BITMAPCOREHEADER: 16-bit sides
        width, height = _unpack("<HH", data, 18)
    else:
        width, height = _unpack("<ii", data, 18)  # a negative height is a top-down bitmap
    return abs(height), abs(width)


def _webp(data: bytes, name: str) -> tuple[int, int]:
    chunk = data[12:16]
    if chunk == b"VP8X":  # extended: the canvas, 24-bit sides minus one
        if len(data) < 30:
            raise _Short
        return int.from_bytes(data[27:30], "little") + 1, int.from_bytes(data[24:27], "little") + 1
    if chunk == b"VP8 ":  # lossy: 14-bit sides after the key frame's start code
        if data[23:26] != b"\x9d\x01\x2a":
            raise _Short
        width, height = _unpack("<HH", data, 26)
        return height & 0x3FFF, width & 0x3FFF
    if chunk == b"VP8L":  # lossless: 14-bit sides minus one, packed after the signature byte
        bits = _unpack("<I", data, 21)[0]
        return ((bits >> 14) & 0x3FFF) + 1, (bits & 0x3FFF) + 1
    raise _Short


def _pnm(data: bytes, name: str) -> tuple[int, int]:
    head = data[:_PNM_HEADER_BYTES]
    if head.startswith(b"P7"):
        fields = {name: int(value) for name, value in _PAM_FIELD.findall(head)}
        if len(fields) < 2:
            raise _Short
        return fields[b"HEIGHT"], fields[b"WIDTH"]
    first = _PNM_TOKEN.match(head, 2)
    second = first and _PNM_TOKEN.match(head, first.end())
    if not second:
        raise _Short
    return int(second.group(1)), int(first.group(1))


def _format(data: bytes) -> str | None:
    if data.startswith(b"\xff\xd8"):
        return "JPEG"
    if data.startswith(_PNG_SIGNATURE):
        return "PNG"
    if data[:4] in _TIFF_MAGIC:
        return "TIFF"
    if data.startswith(b"BM"):
        return "BMP"
    if data.startswith(b"RIFF") and data[8:12] == b"WEBP":
        return "WebP"
    if data.startswith((*_PNM_MAGICS, b"P7")):
        return "PNM"
    return None


_READERS = {"JPEG": _jpeg, "PNG": _png, "TIFF": _tiff, "BMP": _bmp, "WebP": _webp, "PNM": _pnm}


def image_size(data: bytes, name: str = "<bytes>") -> tuple[int, int]:
    """``(height, width)`` as the header of encoded image ``data`` declares them.

    Raises:
        ImageError: the format is none of ``HEADER_FORMATS`` (its size cannot be known before
            decoding), or its header is cut short or damaged.
    """
    fmt = _format(data)
    if fmt is None:
        raise ImageError(
            f"{name}: cannot decode image (corrupt or unsupported format); expected one of "
            f"{', '.join(HEADER_FORMATS)}, whose size is checked before decoding"
        )
    try:
        return _READERS[fmt](data, name)
    except _Short:
        raise ImageError(f"{name}: truncated or corrupt {fmt} header (no image size in it)") from None
