"""Train a tiny detector on FLIR-like thermal images and show what the data loader costs.

``python train_demo.py`` needs no argument: it makes (once, then reuses) a synthetic dataset
in the cache folder, trains ``demo_model.TinyDetector`` for a few hundred steps through
``make_loader`` and prints the loader's own rate, the whole loop's rate and the share of the
loop spent waiting for data. ``python train_demo.py ROOT`` trains on a FLIR ADAS v2 folder instead
(``--data ROOT`` is the deprecated spelling). Its arguments and ``--interactive``'s questions (the seed
report's three) live in ``demo_cli.py``; its errors go through ``flirdata.cli.run_translated``.

``torchrun --standalone --nproc_per_node=2 train_demo.py --distributed`` trains with DDP (gloo,
CPU): every rank runs its own loader on its shard (``make_loader`` reads the rank from the
process group) and rank 0 prints each rank's rate, the total and the all-reduced loss.

The module has no side effect at import: process backends re-import the main script in their
workers.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from demo_cli import DEFAULT_STEPS, PROG, ask_interactive, build_parser, cores, parse_args
from flirdata.cli import run_translated
from flirdata.errors import FlirdataError

if TYPE_CHECKING:
    from flirdata.tools.bench.timing import Window

__all__ = [
    "DemoError",
    "DemoResult",
    "ask_interactive",
    "build_parser",
    "cache_root",
    "main",
    "run_demo",
    "start_distributed",
]

PROBE_BATCHES = 20  # batches timed with the loader alone, before training
SAMPLE_BATCHES = 2  # batches --save-samples writes
TORCHRUN_ENV = ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")  # what init_process_group("gloo") reads


class DemoError(FlirdataError, ValueError):
    """Arguments that do not fit together, or a dataset too small for them."""


# -- data ----------------------------------------------------------------------------------------
def cache_root() -> Path:
    """Where synthetic datasets live: ``$FLIRDATA_CACHE``, else ``~/.cache/flirdata``."""
    return Path(os.environ.get("FLIRDATA_CACHE") or Path.home() / ".cache" / "flirdata")


def resolve_data(args: argparse.Namespace) -> Path:
    """ROOT (``--data``), or the synthetic dataset of ``--size`` in the cache (written on first use)."""
    from flirdata.synth import SIZES, parse_size, synthesize

    if args.root is not None:
        return Path(args.root)
    n = parse_size(args.size or "small")
    label = next((name for name, count in SIZES.items() if count == n), str(n))
    root = cache_root() / f"synth-{label}-seed{args.seed}"
    print(f"dataset: {root} (synthetic, {n} train images; written on first use, then reused)")
    synthesize(root, train=n, seed=args.seed, progress=True)  # skips splits already written
    return root


def save_samples(dataset: Any, loader: Any, out: str) -> None:
    """Write the epoch-0 images of the loader's first batches, with their boxes, as COCO."""
    from flirdata.tools.export import export_augmented

    rows = tuple(i for _, batch in loader.tasks(0)[:SAMPLE_BATCHES] for i in batch)
    # A handful of images: the main thread writes them, no pool to start.
    # subset keeps each image's augmentation key: what is saved is what the loader fed the model.
    summary = export_augmented(dataset.subset(rows), out, progress=False)
    print(f"samples: {summary}")


# -- measuring -----------------------------------------------------------------------------------
@dataclass
class DemoResult:
    """What one run measured; rates are images per second."""

    backend: str
    workers: int
    torch_threads: int
    startup_s: float = 0.0  # loader built -> first batch (pool start-up + one batch)
    data_images_per_s: float = 0.0  # the loader alone, after its first batch
    steps: int = 0
    images: int = 0
    data_window: Window | None = None  # the loader alone: the bench engine's timed window
    loop_window: Window | None = None  # the whole loop, timed by the same engine
    loop_s: float = 0.0
    wait_s: float = 0.0  # inside the loop, waiting for the next batch
    step_s: float = 0.0  # inside the loop, in train_step
    losses: list[float] = field(default_factory=list)  # per step; distributed: the mean over ranks
    local_losses: list[float] = field(default_factory=list)  # per step, this rank's batch alone
    image_ids: list[list[int]] = field(default_factory=list)  # per step, the batch's COCO image ids
    rank: int = 0
    ranks: list[tuple[int, int, float]] = field(default_factory=list)  # every rank's (steps, images, loop_s)
    model: Any = field(default=None, repr=False)  # the trained TinyDetector, for val_map

    @property
    def loop_images_per_s(self) -> float:
        return self.images / self.loop_s if self.loop_s else 0.0

    @property
    def wait_share(self) -> float:
        return self.wait_s / self.loop_s if self.loop_s else 0.0

    @property
    def total_images_per_s(self) -> float:
        """Every rank's images over the slowest rank's loop: the whole job's rate."""
        slowest = max((loop_s for _, _, loop_s in self.ranks), default=0.0)
        return sum(images for _, images, _ in self.ranks) / slowest if slowest else 0.0


def probe_loader(loader: Any, result: DemoResult) -> None:
    """Time to the first batch, then the loader's rate with nobody training (epoch 0).

    Timed as ``flirdata bench`` times a point: the rest of the first wave skipped (one batch per
    extra worker), then ``PROBE_BATCHES`` batches in the engine's ``timed_window``.
    """
    from flirdata.tools.bench.timing import timed_window

    start = time.perf_counter()
    batches = iter(loader)
    try:
        next(batches)
        result.startup_s = time.perf_counter() - start
        result.data_window = timed_window(batches, max(0, result.workers - 1), PROBE_BATCHES)
        result.data_images_per_s = result.data_window.images_per_s if result.data_window.images else 0.0
    finally:
        batches.close()  # cancels what the probe will not read; the pool stays for training


def train(loader: Any, model: Any, optimizer: Any, steps: int | None, epochs: int | None, result: DemoResult) -> None:
    """The training loop, split into time waiting for batches and time in ``train_step``."""
    from demo_model import train_step
    from flirdata.tools.bench.timing import Stopwatch

    watch = Stopwatch()  # the bench engine's timer: wall time and the process tree's CPU
    epoch = 0
    while (epochs is None or epoch < epochs) and (steps is None or result.steps < steps):
        loader.set_epoch(epoch)
        batches = iter(loader)
        try:
            for images, targets in batches:
                got = time.perf_counter()
                result.local_losses.append(train_step(model, optimizer, images, targets))
                result.step_s += time.perf_counter() - got
                result.image_ids.append([int(t["image_id"]) for t in targets])
                result.steps += 1
                result.images += len(targets)
                if steps is not None and result.steps >= steps:
                    break
        finally:
            batches.close()
        epoch += 1
    result.loop_window = watch.stop(result.images)
    result.loop_s = result.loop_window.seconds
    # Everything outside train_step is the loop waiting for data (batch hand-over included).
    result.wait_s = result.loop_s - result.step_s
    result.losses = list(result.local_losses)
    result.ranks = [(result.steps, result.images, result.loop_s)]


def run_demo(
    dataset: Any,
    backend: str,
    workers: int,
    batch_size: int,
    steps: int | None,
    epochs: int | None,
    seed: int,
    save_to: str | None = None,
    distributed: bool = False,
    torch_threads: int | None = None,
) -> DemoResult:
    """Probe the loader alone, then train a fresh ``TinyDetector`` through it (DDP if ``distributed``).

    The model trains at ``torch_threads`` threads; by default at what the workers leave of the cores.
    """
    import torch

    from demo_model import TinyDetector
    from flirdata.backends import KINDS
    from flirdata.loader import make_loader

    # No rank or world_size: under --distributed, make_loader takes this rank's shard from the group.
    with make_loader(
        dataset, backend=backend, workers=workers, batch_size=batch_size, shuffle=True, seed=seed, drop_last=True
    ) as loader:
        runs_as = loader.options.effective_backend  # workers <= 1 runs in this thread
        parallel = KINDS[runs_as].parallel
        # Worker threads and processes need cores too: training takes what they leave.
        threads = torch_threads or (max(1, cores() - workers) if parallel else cores())
        torch.set_num_threads(threads)
        torch.manual_seed(seed)
        model = TinyDetector(num_classes=len(dataset.classes) - 1)
        if distributed:  # rank 0's weights to every rank, then gradients averaged in each backward
            model = torch.nn.parallel.DistributedDataParallel(model)
        optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
        result = DemoResult(runs_as, workers if parallel else 0, threads)
        if save_to is not None:
            save_samples(dataset, loader, save_to)
        probe_loader(loader, result)
        train(loader, model, optimizer, steps, epochs, result)
    result.model = model
    if distributed:
        share_results(result)
    return result


def report(result: DemoResult) -> str:
    """The lines a person reads: loader alone, whole loop, and where the loop's time went."""
    r = result
    per_step = 1e3 / max(1, r.steps)
    head = r.losses[:5] or [float("nan")]
    tail = r.losses[-5:] or [float("nan")]
    lines = [
        f"loader    : {r.backend}, "
        + (f"{r.workers} workers" if r.workers else "in the training thread")
        + f"; training at {r.torch_threads} torch thread(s) on {cores()} cores",
        f"start-up  : {r.startup_s:.2f} s to the first batch",
        f"data only : {r.data_images_per_s:.1f} images/s (the loader alone, {PROBE_BATCHES} batches)",
        f"whole loop: {r.loop_images_per_s:.1f} images/s ({r.steps} steps, {r.images} images in {r.loop_s:.1f} s)",
        f"per step  : {r.step_s * per_step:.0f} ms training, {r.wait_s * per_step:.0f} ms waiting for data: "
        f"the loop waited for data {100 * r.wait_share:.0f}% of the time",
        f"loss      : {statistics.mean(head):.3f} (first steps) -> {statistics.mean(tail):.3f} (last steps)",
    ]
    if len(r.ranks) > 1:  # the lines above are this rank's, but for the loss
        lines[-1] += f", the mean over {len(r.ranks)} ranks (all-reduced)"
        lines[3:4] = [lines[3] + f", on rank {r.rank}", *_ranks_report(r)]
    return "\n".join(lines)


def _ranks_report(r: DemoResult) -> list[str]:
    """Each rank's whole-loop rate, and the job's: every image over the slowest rank's loop."""
    rates = [f"rank {k}: {images / loop_s if loop_s else 0.0:.1f}" for k, (_, images, loop_s) in enumerate(r.ranks)]
    images, slowest = sum(images for _, images, _ in r.ranks), max(loop_s for _, _, loop_s in r.ranks)
    return [
        f"per rank  : {', '.join(rates)} images/s (each {r.steps} steps on its own shard)",
        f"all ranks : {r.total_images_per_s:.1f} images/s ({images} images on {len(r.ranks)} ranks in {slowest:.1f} s)",
    ]


def val_map(model: Any, root: Path, batch_size: int) -> str:
    """The trained model's COCO metrics on ROOT's val split (letterboxed, un-augmented), one line."""
    from flirdata import FlirDetection, build_transform, collate_detection, evaluate
    from flirdata.errors import DataError

    try:
        val = FlirDetection(root, "val", transform=build_transform("none"))
    except DataError as exc:
        return f"val mAP   : not computed, no val split ({exc})"
    model = getattr(model, "module", model)  # DistributedDataParallel wraps it
    detections = []
    try:  # training has succeeded and been reported: a bad val image, NaN predictions or no pycocotools say so
        for start in range(0, len(val), batch_size):
            images, targets = collate_detection([val[i] for i in range(start, min(len(val), start + batch_size))])
            found = model.predict(images)
            detections += [{"image_id": t["image_id"], **d} for t, d in zip(targets, found, strict=True)]
        stats = evaluate(val, detections)
    except FlirdataError as exc:
        return f"val mAP   : not computed: {exc}"
    return (
        f"val mAP   : AP {stats['AP']:.3f}, AP50 {stats['AP50']:.3f}, AR100 {stats['AR100']:.3f} "
        f"on {len(val)} val images (COCOeval through flirdata.evaluate)"
    )


# -- distributed -------------------------------------------------------------------------------
def start_distributed() -> tuple[int, int]:
    """Join torchrun's process group (gloo: CPU tensors); return ``(rank, world_size)``."""
    import torch.distributed as dist

    missing = [name for name in TORCHRUN_ENV if name not in os.environ]
    if missing:
        raise DemoError(
            f"--distributed runs under torchrun ({', '.join(missing)} not set): "
            "torchrun --standalone --nproc_per_node=N train_demo.py --distributed"
        )
    dist.init_process_group("gloo")
    return dist.get_rank(), dist.get_world_size()


def resolve_data_in_turn(args: argparse.Namespace, rank: int, world_size: int) -> Path:
    """``resolve_data`` on rank 0 first: it writes the synthetic dataset, the others then find it."""
    if world_size == 1:
        return resolve_data(args)
    import torch.distributed as dist

    if rank:
        dist.barrier()
    root = resolve_data(args)
    if not rank:
        dist.barrier()
    return root


def share_results(result: DemoResult) -> None:
    """Gather every rank's counts; replace the losses by their mean over ranks (all-reduced)."""
    import torch
    import torch.distributed as dist

    world = dist.get_world_size()
    row = torch.tensor([result.steps, result.images, result.loop_s], dtype=torch.float64)
    rows = [torch.zeros_like(row) for _ in range(world)]
    dist.all_gather(rows, row)
    result.rank = dist.get_rank()
    result.ranks = [(int(steps), int(images), float(loop_s)) for steps, images, loop_s in rows]
    losses = torch.tensor(result.local_losses, dtype=torch.float64)
    dist.all_reduce(losses)  # a sum: gloo has no average
    result.losses = (losses / world).tolist()


def write_record(result: DemoResult, folder: str) -> None:
    """``folder/rank-R.json``: what this rank trained on, step by step, and the losses it logged."""
    out = Path(folder)
    out.mkdir(parents=True, exist_ok=True)
    record = {
        "rank": result.rank,
        "world_size": len(result.ranks),
        "steps": result.steps,
        "image_ids": result.image_ids,
        "losses": result.losses,
        "local_losses": result.local_losses,
    }
    (out / f"rank-{result.rank}.json").write_text(json.dumps(record))


# -- the program ---------------------------------------------------------------------------------
def _train(args: argparse.Namespace, rank: int, world_size: int) -> int:
    from flirdata import FlirDetection, build_transform
    from flirdata.tools.bench.timing import single_threaded

    steps = args.steps if args.steps or args.epochs else DEFAULT_STEPS
    root = resolve_data_in_turn(args, rank, world_size)
    dataset = FlirDetection(root, args.split, transform=build_transform("thermal"), seed=args.seed)
    each = f" on each of {world_size} ranks" if world_size > 1 else ""
    if len(dataset) == 0:
        raise DemoError(f"{dataset.split_dir}: the {args.split!r} split has no images; nothing to train on")
    if len(dataset) // world_size < args.batch_size:  # drop_last: a shard holds floor(n / world) images
        raise DemoError(
            f"{root}: {len(dataset)} images make no full batch of {args.batch_size}{each}; lower --batch-size"
        )
    print(f"training TinyDetector on {len(dataset)} images ({args.split}), batches of {args.batch_size}{each}")
    result = run_demo(
        dataset,
        args.backend,
        args.workers,
        args.batch_size,
        steps,
        args.epochs,
        args.seed,
        args.save_samples if rank == 0 else None,
        args.distributed,
    )
    print(report(result))
    if rank == 0:
        print(val_map(result.model, root, args.batch_size))
    if args.record is not None:
        write_record(result, args.record)
    if args.compare:
        print(f"\nsequential baseline, same steps, same training set-up ({result.torch_threads} torch thread(s)):")
        with single_threaded():  # OpenCV at one thread in the baseline's loader, as in every worker
            base = run_demo(
                dataset, "sequential", 1, args.batch_size, steps, args.epochs, args.seed,
                distributed=args.distributed, torch_threads=result.torch_threads,
            )  # fmt: skip
        print(report(base))
        from flirdata.tools.bench.compare import compare_report

        print(compare_report(result, base, dataset, args.batch_size, PROBE_BATCHES, args.seed, cores()))
    return 0


def _run(args: argparse.Namespace) -> int:
    if args.interactive and args.distributed:
        raise DemoError("--interactive asks on a terminal, which torchrun's ranks do not share; use the flags")
    if args.interactive:
        args = ask_interactive(args)
    if args.root is not None and args.size is not None:
        raise DemoError("--size chooses the synthetic dataset; with ROOT (--data) the whole split is used")
    if not args.distributed:
        return _train(args, 0, 1)
    import torch.distributed as dist

    rank, world_size = start_distributed()
    try:
        with contextlib.ExitStack() as stack:
            if rank:  # rank 0 speaks for the job
                stack.enter_context(contextlib.redirect_stdout(stack.enter_context(open(os.devnull, "w"))))
            return _train(args, rank, world_size)
    finally:
        dist.destroy_process_group()


def main(argv: Sequence[str] | None = None) -> int:
    """Run the demo; failures are translated as ``flirdata``'s are: one line on stderr, exit 2 (1, 130)."""
    return run_translated(PROG, lambda: _run(parse_args(argv)))


if __name__ == "__main__":
    sys.exit(main())
