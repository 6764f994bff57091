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
import datetime
import io
import platform
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

RESULTS = Path(__file__).with_name("RESULTS.md")
HEADING = "## Decode"
BEGIN, END = "<!-- bench_decode.py: begin -->", "<!-- bench_decode.py: end -->"
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
            rows.append({"kind": kind, "images": len(images), "decoder": name, "ms": statistics.median(runs[name]),
                         "min": min(runs[name]), "max": max(runs[name]),
                         "damaged": reports(fn, zero_tail(images[0]), colour),
                         "truncated": reports(fn, images[0][: len(images[0]) // 2], colour)})  # fmt: skip
    return rows


def detection(decoders: dict[str, Decoder], images: list[bytes]) -> dict[str, dict[str, tuple[int, int]]]:
    """``{decoder: {damage: (raised, tried)}}`` over ``images`` (grey) x ``OFFSETS``."""
    rates: dict[str, dict[str, tuple[int, int]]] = {}
    for name, fn in decoders.items():
        for damage, make in DAMAGES.items():
            raised = sum(reports(fn, make(data, offset), False) == "raises" for data in images for offset in OFFSETS)
            rates.setdefault(name, {})[damage] = (raised, len(images) * len(OFFSETS))
    return rates


# -- report -------------------------------------------------------------------------------
def versions() -> str:
    found = {"python": platform.python_version(), "opencv": cv2.__version__, "simplejpeg": simplejpeg.__version__,
             "numpy": np.__version__}  # fmt: skip
    for module in ("PIL", "imagecodecs"):
        try:
            found[module] = __import__(module).__version__
        except ImportError:
            pass
    return ", ".join(f"{k} {v}" for k, v in found.items())


def machine() -> str:
    model = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                  if line.startswith("model name")), platform.processor())  # fmt: skip
    return f"{datetime.date.today().isoformat()}; {model}, {platform.system()} {platform.release()}; {versions()}"


def render(rows: list[dict[str, object]], rates: dict[str, dict[str, tuple[int, int]]], repeats: int,
           load: str) -> list[str]:  # fmt: skip
    lines = [BEGIN, f"Measured {machine()}; {load}.", "",
             f"One thread, JPEG quality {QUALITY}, median of {repeats} passes over each set (min–max of the passes); "
             "damaged: the second half of the entropy-coded data zeroed; truncated: the file cut in half:", "",
             "| frames | decoder | ms / image | min–max | damaged | truncated |",
             "| --- | --- | ---: | ---: | :---: | :---: |"]  # fmt: skip
    for r in rows:
        lines.append(f"| {r['kind']} ({r['images']}) | {r['decoder']} | {r['ms']:.2f} | {r['min']:.2f}–{r['max']:.2f} "
                     f"| {r['damaged']} | {r['truncated']} |")  # fmt: skip
    tried = next(iter(next(iter(rates.values())).values()))[1]
    lines += ["", f"Damaged grey frames the decoder raises on, of {tried} ({tried // len(OFFSETS)} frames x "
              f"{len(OFFSETS)} places around the middle of the scan):", "",
              "| decoder | " + " | ".join(DAMAGES) + " |", "| --- |" + " ---: |" * len(DAMAGES)]  # fmt: skip
    for name, by_damage in rates.items():
        lines.append(f"| {name} | " + " | ".join(f"{raised}" for raised, _ in by_damage.values()) + " |")
    return [*lines, END]


def write_section(lines: list[str]) -> None:
    """Replace the generated block of the Decode section (the prose around it stays)."""
    text = RESULTS.read_text() if RESULTS.exists() else "# Benchmark results\n"
    block = "\n".join(lines)
    if BEGIN in text and END in text:
        text = text[: text.index(BEGIN)] + block + text[text.index(END) + len(END) :]
    else:
        text = text.rstrip("\n") + f"\n\n{HEADING}\n\n{block}\n"
    RESULTS.write_text(text)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--grey", type=int, default=200, help="640x512 grey frames")
    parser.add_argument("--rgb", type=int, default=30, help="2048x1536 colour frames")
    parser.add_argument("--repeats", type=int, default=5, help="passes over each set per decoder")
    parser.add_argument("--damaged", type=int, default=20, help="grey frames damaged at each place, per damage")
    parser.add_argument("--no-write", action="store_true", help="print only, leave RESULTS.md alone")
    args = parser.parse_args(argv)
    if min(args.grey, args.rgb, args.repeats, args.damaged) < 1:
        parser.error("--grey, --rgb, --repeats and --damaged must be at least 1")
    cv2.setNumThreads(1)
    sets = frames(args.grey, args.rgb)
    load_before = Path("/proc/loadavg").read_text().split()[:3]
    rows = measure(installed(), sets, args.repeats)
    load_after = Path("/proc/loadavg").read_text().split()[:3]
    rates = detection(installed(), sets["grey 640x512"][: args.damaged])
    load = f"load average {' '.join(load_before)} before, {' '.join(load_after)} after"
    lines = render(rows, rates, args.repeats, load)
    print("\n".join(lines))
    if not args.no_write:
        write_section(lines)
    return 0


if __name__ == "__main__":
    sys.exit(main())
