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
import itertools
import json
import math
import multiprocessing
import os
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
from flirdata.backends.worker import forkserver_context, tune_malloc
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
MAX_OTHERS = 0.15  # cores other processes may use during a timed window before it is retried


def busy_seconds() -> float:
    """CPU seconds the whole machine has been busy (all processes, /proc/stat)."""
    fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:8]]
    user, nice, system, _idle, _iowait, irq, softirq = fields
    return (user + nice + system + irq + softirq) / os.sysconf("SC_CLK_TCK")


def tree_sum(read: Callable[[psutil.Process], float]) -> float:
    """``read(process)`` summed over this process and its live children."""
    me, total = psutil.Process(), 0.0
    for proc in [me, *me.children(recursive=True)]:
        with contextlib.suppress(psutil.Error):
            total += read(proc)
    return total


def tree_seconds() -> float:
    """CPU seconds used by this process and its live children."""
    return tree_sum(lambda proc: sum(proc.cpu_times()[:2]))


Measure = tuple[float, float, float]  # (images/s, cores other processes used, CPU ms per image)
Rates = dict[str, list[Measure]]


def timed_rate(batches: Iterator[Any], skip: int, total: int) -> Measure:
    """Time batches ``skip`` to ``total`` of an epoch (the last one ends the window).

    Besides the rate: the CPU time of this process tree per image, and how many cores other
    processes of this shared machine took meanwhile (a parallel run suffers from them, a
    serial one on 2 cores hardly does). ``total`` stops the clock before the iterator ends,
    since a DataLoader stops its workers (and loses their CPU times) at the end of an epoch.
    """
    for _ in range(skip):
        next(batches)
    start, busy, mine, images = time.perf_counter(), busy_seconds(), tree_seconds(), 0
    for images_batch, _ in itertools.islice(batches, total - skip):
        images += len(images_batch)
    elapsed, used = time.perf_counter() - start, tree_seconds() - mine
    others = (busy_seconds() - busy - used) / elapsed
    return images / elapsed, max(others, 0.0), used / images * 1e3


def tight_loop(ds: Any, workers: int) -> Measure:
    order = np.random.default_rng(0).permutation(len(ds))
    return timed_rate((collate_detection([ds[int(i)] for i in order[k:k + BATCH]])
                       for k in range(0, len(order), BATCH)), workers, math.ceil(len(ds) / BATCH))  # fmt: skip


def backend_rate(ds: Any, backend: str, workers: int) -> Measure:
    with make_loader(
        ds, backend=backend, workers=workers, batch_size=BATCH, shuffle=True, seed=0, rank=0, world_size=1
    ) as loader:
        return timed_rate(iter(loader), workers, len(loader))


def peer_rate(ds: Any, workers: int) -> Measure:
    # forkserver rather than torch's default fork: only the pool start differs, which is not timed.
    peer = PeerDataset(ds.split_dir)
    loader = torch.utils.data.DataLoader(peer, batch_size=BATCH, shuffle=True, num_workers=workers,
                                         collate_fn=peer_collate, multiprocessing_context="forkserver")  # fmt: skip
    return timed_rate(iter(loader), workers, len(loader))


def seed_batches(results: Iterator[Any]) -> Iterator[tuple[torch.Tensor, list[Any]]]:
    while chunk := [r for _, r in zip(range(BATCH), results, strict=False)]:
        images = torch.stack([torch.from_numpy(image) for image, *_ in chunk])
        yield images, [{"boxes": torch.from_numpy(b), "labels": torch.from_numpy(lab), "image_id": i}
                       for _, b, lab, i in chunk]  # fmt: skip


def seed_rate(ds: Any, workers: int) -> Measure:
    order = np.random.default_rng(0).permutation(len(ds)).tolist()
    chunksize = math.ceil(len(order) / (workers * 25))
    with ProcessPoolExecutor(workers, mp_context=forkserver_context()) as pool:
        results = pool.map(partial(seed_sample, ds), order, chunksize=chunksize)
        return timed_rate(seed_batches(iter(results)), workers, math.ceil(len(order) / BATCH))


def throughput(ds: Any, workers: int, repeats: int, retries: int) -> Rates:
    cv2.setNumThreads(1)  # the tight loop and "sequential" are single-threaded work
    torch.set_num_threads(1)
    tune_malloc()  # as every backend does: the ideal is the same work at its best
    runs: dict[str, Callable[[], float]] = {
        "tight loop": partial(tight_loop, ds, 1),
        "sequential": partial(backend_rate, ds, "sequential", 1),
        **{name: partial(backend_rate, ds, name, workers) for name in BACKENDS if name != "sequential"},
        "peer DataLoader": partial(peer_rate, ds, workers),
        "seed ProcessPoolExecutor.map": partial(seed_rate, ds, workers),
    }
    rates: Rates = defaultdict(list)
    for repeat in range(repeats):
        for name, run in runs.items():
            measure = run()
            while measure[1] > MAX_OTHERS and retries > 0:  # disturbed: wait a little, measure again
                print(f"  {name}: other processes used {measure[1]:.2f} cores, retrying", file=sys.stderr)
                retries -= 1
                time.sleep(5)
                measure = run()
            rates[name].append(measure)
            print(f"  repeat {repeat + 1}/{repeats} {name}: {measure[0]:.1f} images/s, others {measure[1]:.2f} "
                  f"cores, {measure[2]:.2f} CPU ms/image", file=sys.stderr)  # fmt: skip
    return dict(rates)


# -- transport ----------------------------------------------------------------------------
def transport(repeats: int = 30) -> dict[str, float]:
    """µs per 512x640 image to move a batch from a sender thread to the consumer through a pipe.

    Sender: pack (images into the ring, or everything pickled), pickle, write; consumer:
    read, unpickle, unpack (one copy out of the ring). Two threads of one process stand
    in for worker and consumer; the pipe and copies are the same as between processes.
    """
    images = torch.randint(0, 256, (BATCH, 1, 512, 640), dtype=torch.uint8)
    targets = [{"boxes": torch.rand(5, 4), "labels": torch.arange(5), "image_id": k} for k in range(BATCH)]
    ring = shm.SharedRing(images.nbytes, 1)
    reader, writer = multiprocessing.Pipe(duplex=False)
    try:
        slot = ring.acquire()

        def through_pipe(slot: shm.Slot | None) -> Any:
            send = threading.Thread(target=lambda: writer.send_bytes(pickle.dumps(shm.pack_batch(batch, slot))))
            send.start()
            out = shm.unpack_batch(pickle.loads(reader.recv_bytes()), ring)
            send.join()
            return out

        batch = (images, targets)
        ways = {
            "batch through the ring (images: one write in, one copy out)": partial(through_pipe, slot),
            "batch pickled through the pipe (the fallback)": partial(through_pipe, None),
            "targets only, tensors pickled as numpy arrays (used)": lambda: pickle.loads(shm.dumps(targets)),
            "targets only, torch's own tensor pickling": lambda: pickle.loads(pickle.dumps(targets)),
        }  # fmt: skip
        out = {name: _per_image_us(fn, repeats) for name, fn in ways.items()}
    finally:
        reader.close()
        writer.close()
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
    peak, stop = [0.0], threading.Event()

    def sample() -> None:
        while not stop.is_set():
            peak[0] = max(peak[0], tree_sum(lambda proc: proc.memory_full_info().pss) / 2**20)
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
        with make_loader(
            ds, backend=backend, workers=workers, batch_size=BATCH, shuffle=True, rank=0, world_size=1
        ) as loader:
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


def medians(rates: Rates, field: int = 0) -> dict[str, float]:
    return {name: statistics.median(m[field] for m in runs) for name, runs in rates.items()}


def throughput_table(rates: Rates, workers: int) -> list[str]:
    med, cpu = medians(rates), medians(rates, 2)
    single, base = med["tight loop"], med["sequential"]
    rows = ["| run | workers | images/s (median) | min–max | speedup | efficiency | of ideal | CPU ms / image "
            "| others (cores) |", "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
            f"| ideal ({workers} × tight loop) | {workers} | {workers * single:.1f} | | | | 1.00 | | |"]  # fmt: skip
    for name, runs in rates.items():
        n = 1 if name in ("tight loop", "sequential") else workers
        values, others = [m[0] for m in runs], max(m[1] for m in runs)
        rows.append(f"| {name} | {n} | {med[name]:.1f} | {min(values):.1f}–{max(values):.1f} | "
                    f"{med[name] / base:.2f} | {med[name] / base / n:.2f} | {med[name] / (workers * single):.2f} | "
                    f"{cpu[name]:.2f} | {others:.2f} |")  # fmt: skip
    return rows


def targets(rates: Rates, peaks: dict[str, float], workers: int) -> list[str]:
    med = medians(rates)
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
    lines = [BEGIN, f"Measured {result['machine']}; {result['load']}.", "", "Throughput (thermal preset, batch 32, "
             f"{len(result['rates']['tight loop'])} repeats, medium dataset):", ""]  # fmt: skip
    lines += throughput_table(result["rates"], workers)
    lines += ["", f"(others: the most CPU other processes of this shared machine took during a timed window; "
              f"windows above {MAX_OTHERS} cores were measured again, up to the retry budget.)"]  # fmt: skip
    lines += ["", "Transport per 512×640 uint8 image, sender thread to consumer through a pipe "
              "(median of 30 batches of 32):", "",
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
        text = text[: text.index(BEGIN)] + block + text[text.index(END) + len(END) :]
    else:
        text = text.rstrip("\n") + f"\n\n{HEADING}\n\n{block}\n"
    RESULTS.write_text(text)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cache", type=Path, default=Path("data/bench"), help="synthetic datasets folder")
    parser.add_argument("--images", type=int, default=2000, help="medium dataset size")
    parser.add_argument("--large", type=int, default=10_000, help="images of the memory run")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--retries", type=int, default=6, help="re-measurements of disturbed windows, in all")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--no-write", action="store_true", help="print only, leave RESULTS.md alone")
    args = parser.parse_args(argv)
    medium = dataset(args.cache, "medium", args.images)
    load_before = Path("/proc/loadavg").read_text().split()[:3]
    rates = throughput(medium, args.workers, args.repeats, args.retries)
    costs = transport()
    best = max((n for n in BACKENDS if n != "sequential"), key=medians(rates).__getitem__)
    peaks = memory(medium, dataset(args.cache, "large", args.large), best, args.workers)
    load_after = Path("/proc/loadavg").read_text().split()[:3]
    load = f"load average {' '.join(load_before)} before, {' '.join(load_after)} after"
    result = {"machine": machine(), "load": load, "rates": rates, "transport_us": costs, "peak_pss_mb": peaks}
    print(json.dumps(result, indent=1))
    if not args.no_write:
        write_section(render(result, args.workers))
    return 0


if __name__ == "__main__":
    sys.exit(main())
