"""JPEG decoding: OpenCV against the libjpeg-turbo bindings, for speed and for reporting damage.

    python benchmarks/bench_decode.py [--grey 200] [--rgb 30] [--repeats 5] [--no-write]

Frames, encoded in memory at JPEG quality 95: ``--grey`` thermal-like 640x512 grey frames
(``flirdata.synth.thermal.render_frame``) and ``--rgb`` 2048x1536 colour frames painted from them
(``flirdata.synth.rgb.colour_frame``), FLIR ADAS v2's two kinds of frame at their usual sizes.
Every decoder decodes every frame ``--repeats`` times on one thread (``cv2.setNumThreads(1)``);
a repeat is one pass over all frames of a kind, and the table gives the median ms per image
over repeats and the spread. Decoders take turns within each repeat, so drift of this shared
machine spreads over all of them.

"damaged" decodes one frame whose entropy-coded data was zeroed from its middle on (header and
end-of-image marker intact, the case OpenCV decodes with only a libjpeg warning on stderr) and
"truncated" one cut in half: "raises" when the decoder raises, "silent" when it returns pixels.
A second table counts how often each decoder raises on ``--damaged`` grey frames damaged three
ways at 20 places around the middle of the scan: JPEG has no checksum, so a decoder notices
damage only where the bitstream stops making sense.
Decoders that are not installed are left out. The tables replace the generated block of the
"Decode" section of ``benchmarks/RESULTS.md``.
"""

from __future__ import annotations

import argparse
import io
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np
import simplejpeg

from flirdata.images import decode_image
from flirdata.synth.rgb import colour_frame, make_palette
from flirdata.synth.thermal import make_scene, render_frame
from flirdata.tools.bench.machine import load_average, machine_info, machine_line
from flirdata.tools.bench.report import add_results_options, markdown_table, publish, text_columns
from flirdata.tools.bench.timing import single_threaded

RESULTS = Path(__file__).with_name("RESULTS.md")
HEADING = "## Decode"
QUALITY = 95
RGB_SIZE = (2048, 1536)  # (width, height): the largest of FLIR's colour frames

Decoder = Callable[[bytes, bool], object]  # (JPEG bytes, colour?) -> pixels


def _cv2(data: bytes, colour: bool) -> object:
    return cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)


def _simplejpeg(data: bytes, colour: bool) -> object:
    return simplejpeg.decode_jpeg(data, colorspace="RGB" if colour else "GRAY", strict=True)


def _pipeline(data: bytes, colour: bool) -> object:
    return decode_image(data, "frame.jpg", "rgb" if colour else "thermal")


def _pil(data: bytes, colour: bool) -> object:
    from PIL import Image, ImageFile

    ImageFile.LOAD_TRUNCATED_IMAGES = False  # the strictest PIL gets
    with Image.open(io.BytesIO(data)) as image:
        return np.asarray(image)


def _imagecodecs(data: bytes, colour: bool) -> object:
    import imagecodecs

    return imagecodecs.jpeg8_decode(data)


CANDIDATES: dict[str, tuple[str, Decoder]] = {
    "cv2.imdecode": ("cv2", _cv2),
    "simplejpeg, strict=True": ("simplejpeg", _simplejpeg),
    "flirdata decode_image (simplejpeg + channel checks)": ("simplejpeg", _pipeline),
    "PIL Image.open().load()": ("PIL", _pil),
    "imagecodecs.jpeg8_decode": ("imagecodecs", _imagecodecs),
}


def installed() -> dict[str, Decoder]:
    """The candidates whose package imports here."""
    found = {}
    for name, (module, fn) in CANDIDATES.items():
        try:
            __import__(module)
        except ImportError:
            continue
        found[name] = fn
    return found


# -- frames -------------------------------------------------------------------------------
def frames(grey: int, rgb: int) -> dict[str, list[bytes]]:
    """``{"grey 640x512": [...], "rgb 2048x1536": [...]}``, JPEG bytes, the same for every run."""
    rng = np.random.default_rng(0)
    out: dict[str, list[bytes]] = {"grey 640x512": [], f"rgb {RGB_SIZE[0]}x{RGB_SIZE[1]}": []}
    for k in range(max(grey, rgb)):
        scene = make_scene(rng)
        image, objects = render_frame(rng, scene, 0)
        if k < grey:
            out["grey 640x512"].append(encode(image))
        if k < rgb:
            bgr, _ = colour_frame(rng, image, scene, make_palette(rng, scene), objects, RGB_SIZE)
            out[f"rgb {RGB_SIZE[0]}x{RGB_SIZE[1]}"].append(encode(bgr))
    return out


def encode(image: np.ndarray) -> bytes:
    ok, data = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, QUALITY])
    assert ok, "OpenCV failed to encode a synthetic frame"
    return data.tobytes()


def _scan(data: bytes) -> tuple[int, int]:
    """Where the entropy-coded data lies: from the start-of-scan marker to the end-of-image one."""
    return data.index(b"\xff\xda"), data.rindex(b"\xff\xd9")


def zero_tail(data: bytes, offset: int = 0) -> bytes:
    """The second half of the entropy-coded data zeroed (a copy that stopped half way)."""
    scan, end = _scan(data)
    middle = (scan + end) // 2 + offset
    return data[:middle] + bytes(end - middle) + data[end:]


def zero_sector(data: bytes, offset: int = 0) -> bytes:
    """One 512-byte block zeroed in the middle of the entropy-coded data (a bad disk sector)."""
    scan, end = _scan(data)
    middle = (scan + end) // 2 + offset
    return data[:middle] + bytes(512) + data[middle + 512 :]


def flip_bits(data: bytes, offset: int = 0) -> bytes:
    """Every 4th of 64 bytes in the middle of the entropy-coded data XORed with 0x5A (bit rot)."""
    scan, end = _scan(data)
    out = bytearray(data)
    for i in range((scan + end) // 2 + offset, (scan + end) // 2 + offset + 64, 4):
        out[i] ^= 0x5A
    return bytes(out)


DAMAGES = {
    "half the scan zeroed": zero_tail,
    "one 512-byte sector zeroed": zero_sector,
    "bits flipped in 16 bytes": flip_bits,
}
OFFSETS = range(-2000, 2000, 200)  # where in the scan the damage starts, around its middle


# -- measuring ----------------------------------------------------------------------------
def reports(fn: Decoder, data: bytes, colour: bool) -> str:
    try:
        fn(data, colour)
    except Exception:  # any exception: the caller learns the file is bad, which is all that counts here
        return "raises"
    return "silent"


def timed_ms(fn: Decoder, images: list[bytes], colour: bool) -> float:
    """Milliseconds per image of one pass over ``images``."""
    start = time.perf_counter()
    for data in images:
        fn(data, colour)
    return (time.perf_counter() - start) * 1e3 / len(images)


def measure(decoders: dict[str, Decoder], sets: dict[str, list[bytes]], repeats: int) -> list[dict[str, object]]:
    rows = []
    for kind, images in sets.items():
        colour = kind.startswith("rgb")
        runs: dict[str, list[float]] = {name: [] for name in decoders}
        for _ in range(repeats):
            for name, fn in decoders.items():
                runs[name].append(timed_ms(fn, images, colour))
        for name, fn in decoders.items():
            rows.append(
                {
                    "kind": kind,
                    "images": len(images),
                    "decoder": name,
                    "ms": statistics.median(runs[name]),
                    "min": min(runs[name]),
                    "max": max(runs[name]),
                    "damaged": reports(fn, zero_tail(images[0]), colour),
                    "truncated": reports(fn, images[0][: len(images[0]) // 2], colour),
                }
            )
    return rows


Raised = dict[str, dict[str, tuple[int, int]]]  # {decoder: {damage: (raised, tried)}}


def detection(decoders: dict[str, Decoder], images: list[bytes]) -> Raised:
    """``{decoder: {damage: (raised, tried)}}`` over ``images`` (grey) x ``OFFSETS``."""
    rates: Raised = {}
    for name, fn in decoders.items():
        for damage, make in DAMAGES.items():
            raised = sum(reports(fn, make(data, offset), False) == "raises" for data in images for offset in OFFSETS)
            rates.setdefault(name, {})[damage] = (raised, len(images) * len(OFFSETS))
    return rates


# -- report -------------------------------------------------------------------------------
LIBRARIES = (("cv2", "opencv"), ("simplejpeg", "simplejpeg"), ("numpy", "numpy"), ("PIL", "PIL"))
LIBRARIES += (("imagecodecs", "imagecodecs"),)
TIMES = text_columns("frames", "decoder", "ms / image", "min–max", "damaged", "truncated")


def _times_row(r: dict[str, object]) -> dict[str, object]:
    cells = [f"{r['kind']} ({r['images']})", r["decoder"], f"{r['ms']:.2f}", f"{r['min']:.2f}–{r['max']:.2f}"]
    return dict(zip((name for name, _ in TIMES), [*cells, r["damaged"], r["truncated"]], strict=True))


def render(rows: list[dict[str, object]], rates: Raised, repeats: int, meta: dict[str, object]) -> str:
    raised = [{"decoder": name, **{damage: f"{n}" for damage, (n, _) in by.items()}} for name, by in rates.items()]
    tried = next(iter(next(iter(rates.values())).values()))[1]
    parts = [
        f"Measured {machine_line(meta, LIBRARIES)}.",
        f"One thread, JPEG quality {QUALITY}, median of {repeats} passes over each set (min–max of the passes); "
        "damaged: the second half of the entropy-coded data zeroed; truncated: the file cut in half:",
        markdown_table([_times_row(r) for r in rows], TIMES, align="llrrcc"),
        f"Damaged grey frames the decoder raises on, of {tried} ({tried // len(OFFSETS)} frames x "
        f"{len(OFFSETS)} places around the middle of the scan):",
        markdown_table(raised, text_columns("decoder", *DAMAGES), align="l" + "r" * len(DAMAGES)),
    ]
    return "\n\n".join(parts)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--grey", type=int, default=200, help="640x512 grey frames")
    parser.add_argument("--rgb", type=int, default=30, help="2048x1536 colour frames")
    parser.add_argument("--repeats", type=int, default=5, help="passes over each set per decoder")
    parser.add_argument("--damaged", type=int, default=20, help="grey frames damaged at each place, per damage")
    add_results_options(parser, RESULTS)
    args = parser.parse_args(argv)
    if min(args.grey, args.rgb, args.repeats, args.damaged) < 1:
        parser.error("--grey, --rgb, --repeats and --damaged must be at least 1")
    sets = frames(args.grey, args.rgb)
    load_before = load_average()
    with single_threaded():
        rows = measure(installed(), sets, args.repeats)
        meta = {**machine_info(LIBRARIES), "load_before": load_before, "load_after": load_average()}
        rates = detection(installed(), sets["grey 640x512"][: args.damaged])
    text = render(rows, rates, args.repeats, meta)
    return publish(text, None if args.no_write else args.results, "bench_decode.py", HEADING)


if __name__ == "__main__":
    sys.exit(main())
