"""Benchmark of the loader backends against the ideal, a plain DataLoader and the seed's map.

    python benchmarks/bench_backends.py [--cache data/bench] [--repeats 3] [--workers 2]

Measured in one run, on a synthetic "medium" dataset (2,000 train images, synthesized into
``--cache`` if missing), thermal preset, batch 32:

* ideal: ``workers`` x the single-thread rate of a tight loop doing the same work
  (``dataset[i]`` = decode + augment, then ``collate_detection``), no framework;
* every backend, the peer (a plain ``DataLoader`` over the Dataset a user would write) and
  the seed's approach (``ProcessPoolExecutor.map`` over samples returning numpy arrays);
  each repeat builds a new loader, skips ``workers`` batches (pool start, first wave) and
  times the rest of the epoch; repeats are interleaved round robin so drift spreads evenly;
* the per-image cost of the shared-memory transport (worker write + consumer copy) against
  pickling the batch;
* peak PSS of the process tree (a thread reads it every 0.25 s) for the best backend on
  10,000 vs 500 images, and for 2 process workers vs sequential.

The tables replace the generated block of the "Backends" section of ``benchmarks/RESULTS.md``
(the analysis written around it stays).
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import math
import multiprocessing
import pickle
import platform
import statistics
import sys
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor
from functools import partial
from pathlib import Path
from typing import Any

import albumentations
import cv2
import joblib
import numpy as np
import psutil
import torch

from flirdata import FlirDetection, build_transform, collate_detection
from flirdata.backends import BACKENDS, shm
from flirdata.backends.worker import forkserver_context
from flirdata.loader import make_loader
from flirdata.synth import synthesize

BATCH = 32
RESULTS = Path(__file__).with_name("RESULTS.md")
HEADING = "## Backends"


# -- data ---------------------------------------------------------------------------------
def dataset(cache: Path, name: str, images: int) -> FlirDetection:
    """The thermal-preset training split of a synthetic dataset, written on first use."""
    root = cache / name
    synthesize(root, train=images, val=0, seed=0, progress=False)  # a no-op when cached
    return FlirDetection(root, "train", transform=build_transform("thermal"), seed=0)


class Prefix:
    """The first ``size`` samples of a dataset (picklable, keeps ``set_epoch``)."""

    def __init__(self, base: Any, size: int) -> None:
        self.base, self.size = base, size

    def __len__(self) -> int:
        return self.size

    @property
    def epoch(self) -> int:
        return self.base.epoch

    def set_epoch(self, epoch: int) -> None:
        self.base.set_epoch(epoch)

    def __getitem__(self, i: int) -> Any:
        return self.base[i]


class PeerDataset(torch.utils.data.Dataset):
    """What a user would write: a list of dicts from the json, cv2.imread, the same Compose."""

    def __init__(self, split_dir: Path) -> None:
        coco = json.loads((split_dir / "coco.json").read_text())
        boxes = defaultdict(list)
        for ann in coco["annotations"]:
            boxes[ann["image_id"]].append((ann["bbox"], ann["category_id"]))
        self.items = [{"path": str(split_dir / img["file_name"]), "id": img["id"], "anns": boxes[img["id"]]}
                      for img in coco["images"]]  # fmt: skip
        self.transform = build_transform("thermal")

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, dict[str, Any]]:
        item = self.items[i]
        image = cv2.imread(item["path"], cv2.IMREAD_GRAYSCALE)
        bboxes = np.array([b for b, _ in item["anns"]], np.float32).reshape(-1, 4)
        out = self.transform(image=image, bboxes=bboxes, labels=[c for _, c in item["anns"]])
        xyxy = np.array(out["bboxes"], np.float32).reshape(-1, 4)
        xyxy[:, 2:] += xyxy[:, :2]
        target = {"boxes": torch.from_numpy(xyxy), "labels": torch.as_tensor(out["labels"], dtype=torch.int64),
                  "image_id": item["id"]}  # fmt: skip
        return torch.from_numpy(out["image"])[None], target


def peer_collate(batch: list[Any]) -> tuple[torch.Tensor, list[Any]]:
    images, targets = zip(*batch, strict=True)
    return torch.stack(images), list(targets)


def seed_sample(ds: Any, i: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
    image, target = ds[i]
    return image.numpy(), target["boxes"].numpy(), target["labels"].numpy(), target["image_id"]


# -- throughput ---------------------------------------------------------------------------
def timed_rate(batches: Iterator[Any], skip: int) -> float:
    """Images/s over ``batches`` after the first ``skip`` (pool start, first wave)."""
    for _ in range(skip):
        next(batches)
    start, images = time.perf_counter(), 0
    for images_batch, _ in batches:
        images += len(images_batch)
    return images / (time.perf_counter() - start)


def tight_loop(ds: Any, workers: int) -> float:
    order = np.random.default_rng(0).permutation(len(ds))
    return timed_rate((collate_detection([ds[int(i)] for i in order[k:k + BATCH]])
                       for k in range(0, len(order), BATCH)), workers)  # fmt: skip


def backend_rate(ds: Any, backend: str, workers: int) -> float:
    with make_loader(ds, backend=backend, workers=workers, batch_size=BATCH, shuffle=True, seed=0) as loader:
        return timed_rate(iter(loader), workers)


def peer_rate(ds: Any, workers: int) -> float:
    # forkserver rather than torch's default fork: only the pool start differs, which is not timed.
    peer = PeerDataset(ds.split_dir)
    loader = torch.utils.data.DataLoader(peer, batch_size=BATCH, shuffle=True, num_workers=workers,
                                         collate_fn=peer_collate, multiprocessing_context="forkserver")  # fmt: skip
    return timed_rate(iter(loader), workers)


def seed_batches(results: Iterator[Any]) -> Iterator[tuple[torch.Tensor, list[Any]]]:
    while chunk := [r for _, r in zip(range(BATCH), results, strict=False)]:
        images = torch.stack([torch.from_numpy(image) for image, *_ in chunk])
        yield images, [{"boxes": torch.from_numpy(b), "labels": torch.from_numpy(lab), "image_id": i}
                       for _, b, lab, i in chunk]  # fmt: skip


def seed_rate(ds: Any, workers: int) -> float:
    order = np.random.default_rng(0).permutation(len(ds)).tolist()
    chunksize = math.ceil(len(order) / (workers * 25))
    with ProcessPoolExecutor(workers, mp_context=forkserver_context()) as pool:
        results = pool.map(partial(seed_sample, ds), order, chunksize=chunksize)
        return timed_rate(seed_batches(iter(results)), workers)


def throughput(ds: Any, workers: int, repeats: int) -> dict[str, list[float]]:
    cv2.setNumThreads(1)  # the tight loop and "sequential" are single-threaded work
    torch.set_num_threads(1)
    runs: dict[str, Callable[[], float]] = {
        "tight loop": partial(tight_loop, ds, 1),
        "sequential": partial(backend_rate, ds, "sequential", 1),
        **{name: partial(backend_rate, ds, name, workers) for name in BACKENDS if name != "sequential"},
        "peer DataLoader": partial(peer_rate, ds, workers),
        "seed ProcessPoolExecutor.map": partial(seed_rate, ds, workers),
    }
    rates: dict[str, list[float]] = defaultdict(list)
    for repeat in range(repeats):
        for name, run in runs.items():
            rates[name].append(run())
            print(f"  repeat {repeat + 1}/{repeats} {name}: {rates[name][-1]:.1f} images/s", file=sys.stderr)
    return dict(rates)


# -- transport ----------------------------------------------------------------------------
def transport(repeats: int = 30) -> dict[str, float]:
    """µs per 512x640 image: ring (worker write + consumer copy) vs a pickle round trip."""
    images = torch.randint(0, 256, (BATCH, 1, 512, 640), dtype=torch.uint8)
    batch = (images, [{"boxes": torch.zeros(5, 4), "labels": torch.zeros(5, dtype=torch.int64)}] * BATCH)
    ring = shm.SharedRing(images.nbytes, 1)
    try:
        slot = ring.acquire()

        def through_ring() -> Any:
            return shm.unpack_batch(shm.pack_batch(batch, slot), ring)

        def through_pickle() -> Any:
            return pickle.loads(pickle.dumps(batch, protocol=pickle.HIGHEST_PROTOCOL))

        out = {name: _per_image_us(fn, repeats) for name, fn in
               (("shared-memory ring", through_ring), ("pickle round trip", through_pickle))}  # fmt: skip
    finally:
        for segment in shm._ATTACHED.values():
            segment.close()
        shm._ATTACHED.clear()
        ring.close()
    return out


def _per_image_us(fn: Callable[[], Any], repeats: int) -> float:
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times) / BATCH * 1e6


# -- memory -------------------------------------------------------------------------------
@contextlib.contextmanager
def peak_pss_mb(interval: float = 0.25) -> Iterator[list[float]]:
    """Yields a one-element list holding, on exit, the peak PSS (MB) of this process tree."""
    me, peak, stop = psutil.Process(), [0.0], threading.Event()

    def sample() -> None:
        while not stop.is_set():
            total = 0
            for proc in [me, *me.children(recursive=True)]:
                with contextlib.suppress(psutil.Error):
                    total += proc.memory_full_info().pss
            peak[0] = max(peak[0], total / 2**20)
            stop.wait(interval)

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    try:
        yield peak
    finally:
        stop.set()
        thread.join()


def epoch_peak(ds: Any, backend: str, workers: int) -> float:
    with peak_pss_mb() as peak:
        with make_loader(ds, backend=backend, workers=workers, batch_size=BATCH, shuffle=True) as loader:
            for _ in loader:
                pass
    return peak[0]


def memory(medium: Any, large: Any, best: str, workers: int) -> dict[str, float]:
    return {
        f"{best}, {workers} workers, 500 images": epoch_peak(Prefix(large, 500), best, workers),
        f"{best}, {workers} workers, {len(large):,} images": epoch_peak(large, best, workers),
        f"sequential, {len(medium):,} images": epoch_peak(medium, "sequential", 1),
        f"process, {workers} workers, {len(medium):,} images": epoch_peak(medium, "process", workers),
    }


# -- report -------------------------------------------------------------------------------
def machine() -> str:
    model = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                  if line.startswith("model name")), platform.processor())  # fmt: skip
    versions = {"python": platform.python_version(), "torch": torch.__version__,
                "albumentations": albumentations.__version__, "opencv": cv2.__version__,
                "numpy": np.__version__, "joblib": joblib.__version__}  # fmt: skip
    return (f"{datetime.date.today().isoformat()}; {multiprocessing.cpu_count()} cores ({model}); "
            + ", ".join(f"{k} {v}" for k, v in versions.items()))  # fmt: skip


def throughput_table(rates: dict[str, list[float]], workers: int) -> list[str]:
    single = statistics.median(rates["tight loop"])
    base = statistics.median(rates["sequential"])
    rows = ["| run | workers | images/s (median) | min–max | speedup | efficiency | of ideal |",
            "| --- | ---: | ---: | ---: | ---: | ---: | ---: |",
            f"| ideal ({workers} × tight loop) | {workers} | {workers * single:.1f} | | | | 1.00 |"]  # fmt: skip
    for name, values in rates.items():
        n = 1 if name in ("tight loop", "sequential") else workers
        median = statistics.median(values)
        rows.append(f"| {name} | {n} | {median:.1f} | {min(values):.1f}–{max(values):.1f} | "
                    f"{median / base:.2f} | {median / base / n:.2f} | {median / (workers * single):.2f} |")
    return rows


def targets(rates: dict[str, list[float]], peaks: dict[str, float], workers: int) -> list[str]:
    med = {name: statistics.median(values) for name, values in rates.items()}
    ideal = workers * med["tight loop"]
    best = max((n for n in BACKENDS if n != "sequential"), key=med.__getitem__)
    mem = list(peaks.values())
    checks = [
        (f"best backend ({best}) >= 0.9 of ideal", med[best] / ideal, 0.9),
        (f"best backend ({best}) / peer DataLoader > 1", med[best] / med["peer DataLoader"], 1.0),
        ("process / seed ProcessPoolExecutor.map > 1", med["process"] / med["seed ProcessPoolExecutor.map"], 1.0),
        ("threads efficiency > 0.77", med["threads"] / med["sequential"] / workers, 0.77),
        ("sequential / tight loop >= 0.95", med["sequential"] / med["tight loop"], 0.95),
        ("peak PSS, large / 500 images <= 1.10", mem[1] / mem[0], -1.10),
        (f"peak PSS, {workers} process workers / sequential <= 1.5", mem[3] / mem[2], -1.5),
    ]
    rows = ["| target | measured | met |", "| --- | ---: | :---: |"]
    for label, value, bound in checks:  # a negative bound is an upper bound
        met = value <= -bound if bound < 0 else value >= bound
        rows.append(f"| {label} | {value:.2f} | {'yes' if met else '**no**'} |")
    return rows


def render(result: dict[str, Any], workers: int) -> list[str]:
    lines = [BEGIN, f"Measured {result['machine']}.", "", "Throughput (thermal preset, batch 32, "
             f"{len(result['rates']['tight loop'])} repeats, medium dataset):", ""]  # fmt: skip
    lines += throughput_table(result["rates"], workers)
    lines += ["", "Transport of one 512×640 uint8 image (median of 30 batches of 32):", "",
              "| path | µs / image |", "| --- | ---: |"]  # fmt: skip
    lines += [f"| {name} | {us:.0f} |" for name, us in result["transport_us"].items()]
    lines += ["", "Peak PSS of all processes over one epoch (sampled every 0.25 s):", "",
              "| run | peak PSS (MB) |", "| --- | ---: |"]  # fmt: skip
    lines += [f"| {name} | {mb:.0f} |" for name, mb in result["peak_pss_mb"].items()]
    lines += ["", "Targets:", ""] + targets(result["rates"], result["peak_pss_mb"], workers) + [END]
    return lines


BEGIN, END = "<!-- bench_backends.py: begin -->", "<!-- bench_backends.py: end -->"


def write_section(lines: list[str]) -> None:
    """Replace the generated block of the Backends section (the prose around it stays)."""
    text = RESULTS.read_text() if RESULTS.exists() else "# Benchmark results\n"
    block = "\n".join(lines)
    if BEGIN in text and END in text:
        text = text[: text.index(BEGIN)] + block + text[text.index(END) + len(END):]
    else:
        text = text.rstrip("\n") + f"\n\n{HEADING}\n\n{block}\n"
    RESULTS.write_text(text)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cache", type=Path, default=Path("data/bench"), help="synthetic datasets folder")
    parser.add_argument("--images", type=int, default=2000, help="medium dataset size")
    parser.add_argument("--large", type=int, default=10_000, help="images of the memory run")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--no-write", action="store_true", help="print only, leave RESULTS.md alone")
    args = parser.parse_args(argv)
    medium = dataset(args.cache, "medium", args.images)
    rates = throughput(medium, args.workers, args.repeats)
    costs = transport()
    best = max((n for n in BACKENDS if n != "sequential"), key=lambda n: statistics.median(rates[n]))
    peaks = memory(medium, dataset(args.cache, "large", args.large), best, args.workers)
    result = {"machine": machine(), "rates": rates, "transport_us": costs, "peak_pss_mb": peaks}
    print(json.dumps(result, indent=1))
    if not args.no_write:
        write_section(render(result, args.workers))
    return 0


if __name__ == "__main__":
    sys.exit(main())
