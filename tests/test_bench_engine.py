"""The benchmark engine's shared parts: machine description, timing, memory and markdown output."""

from __future__ import annotations

import subprocess
import sys
import time

import cv2
import psutil
import pytest
import torch

from flirdata import FlirDetection, build_transform
from flirdata.backends import _shm as shm
from flirdata.tools.bench import timing
from flirdata.tools.bench.machine import (
    LIBRARIES,
    busy_seconds,
    machine_info,
    machine_line,
    tree_cpu_seconds,
    tree_cpu_times,
    tree_cpu_used,
)
from flirdata.tools.bench.memory import MemorySampler
from flirdata.tools.bench.report import markdown_table, replace_block, text_columns
from flirdata.tools.bench.timing import calibrate, calibrate_warmed, single_threaded, tight_batches, timed_window


def test_machine_line_reads_only_the_machine_keys_of_a_record():
    meta = {**machine_info(), "load_before": 0.5, "load_after": 1.25}
    record = {"backend": "threads", "workers": 2, **meta}
    line = machine_line(record)
    assert line == machine_line(meta)
    assert f"{meta['cores']} cores" in line and f"torch {torch.__version__}" in line and "OpenCV" in line
    assert line.endswith("load average 0.50 before, 1.25 after") and "threads" not in line
    assert [key for _, key in LIBRARIES] == ["torch", "albumentations", "opencv", "numpy", "joblib"]


def test_machine_info_takes_other_libraries_and_names_missing_ones():
    libraries = (("cv2", "opencv"), ("no_such_module_xyz", "xyz"))
    meta = machine_info(libraries)
    assert meta["opencv"] == cv2.__version__ and meta["xyz"] == "not installed" and "torch" not in meta
    assert machine_line(meta, libraries).endswith(f"OpenCV {cv2.__version__}, xyz not installed")


def test_cpu_counters_grow_with_work():
    busy, mine = busy_seconds(), tree_cpu_times()  # per process: a child ending meanwhile takes only its own
    end = time.process_time() + 0.2  # the counters tick in 10 ms steps: spin well past a few ticks
    while time.process_time() < end:
        pass
    assert tree_cpu_used(mine) >= 0.1 and busy_seconds() - busy >= 0.1


def test_cpu_counters_count_a_window_shorter_than_a_clock_tick():
    # A calibration of a few fast batches takes a few ms: /proc's 10 ms ticks would count 0 of it.
    mine = tree_cpu_times()
    end = time.process_time() + 0.003
    while time.process_time() < end:
        pass
    assert tree_cpu_used(mine) >= 0.003


@pytest.mark.slow
def test_a_child_ending_in_the_window_does_not_make_the_cpu_used_negative():
    spin = "import time\nend = time.process_time() + 0.5\nwhile time.process_time() < end: pass\ninput()"
    child = subprocess.Popen([sys.executable, "-c", spin], stdin=subprocess.PIPE, text=True)
    try:
        while sum(psutil.Process(child.pid).cpu_times()[:2]) < 0.4:  # its seconds, used before the window
            time.sleep(0.05)
        before = tree_cpu_times()
        child.communicate("\n", timeout=60)  # it ends inside the window, taking its seconds with it
    finally:
        child.kill()
    assert tree_cpu_used(before) >= 0
    assert tree_cpu_seconds() < sum(before.values())  # what the old whole-tree difference saw: a fall


def test_timed_window_skips_then_counts_images():
    batches = [(None, [{}] * 3)] * 5  # five batches of three images
    window = timed_window(batches, skip=1, count=3)
    assert window.images == 9 and window.seconds > 0 and window.others_cores >= 0
    assert window.images_per_s == pytest.approx(9 / window.seconds)
    assert timed_window(iter(batches), skip=2, count=10).images == 9  # fewer batches than asked: the rest


def test_single_threaded_restores_thread_counts():
    before = cv2.getNumThreads(), torch.get_num_threads()
    with single_threaded():
        assert (cv2.getNumThreads(), torch.get_num_threads()) == (1, 1)
    assert (cv2.getNumThreads(), torch.get_num_threads()) == before


def test_tight_batches_cover_a_seeded_shuffle_and_calibrate_measures(synth_root):
    dataset = FlirDetection(synth_root, transform=build_transform("thermal"), seed=0)
    ids = [t["image_id"] for _, targets in tight_batches(dataset, 5, seed=1) for t in targets]
    assert sorted(ids) == sorted(int(i) for i in dataset.index.image_ids) and len(ids) == 24
    assert ids == [t["image_id"] for _, targets in tight_batches(dataset, 7, seed=1) for t in targets]
    result = calibrate(dataset, batch_size=4, batches=2, seed=0)
    assert set(result) == {"tight_images_per_s", "pickle_ms_per_batch", "batch_mb"}
    assert result["tight_images_per_s"] > 0 and result["batch_mb"] > 4 * 512 * 640 / 2**20


def _no_loop_here(*_):
    raise RuntimeError("the tight loop ran in the test process")


@pytest.mark.slow
def test_calibrate_warmed_runs_the_loop_in_another_process(synth_root, monkeypatch):
    dataset = FlirDetection(synth_root, transform=build_transform("thermal"), seed=0)
    monkeypatch.setattr(timing, "tight_batches", _no_loop_here)  # this process only: the worker imports its own
    with pytest.raises(RuntimeError, match="ran in the test process"):
        calibrate(dataset, batch_size=4, batches=2, seed=0)
    result = calibrate_warmed(dataset, batch_size=4, batches=2, seed=0)
    warmed_only = {"tight_cpu_ms_per_image", "tight_others_cores"}
    assert set(result) == {"tight_images_per_s", "pickle_ms_per_batch", "batch_mb"} | warmed_only
    assert result["tight_images_per_s"] > 0 and result["tight_cpu_ms_per_image"] > 0
    assert result["batch_mb"] > 4 * 512 * 640 / 2**20
    with pytest.raises(ValueError, match=r"batches 0: expected at least 1"):
        calibrate_warmed(dataset, batch_size=4, batches=0, seed=0)


def test_memory_sampler_can_sample_pss_without_checkpoints():
    with MemorySampler(interval=0.01, sample_pss=True) as memory:
        block = bytearray(32 << 20)
        block[::4096] = b"x" * len(block[::4096])  # touch every page
        time.sleep(0.1)
    assert memory.peak_pss_mb > 32 and memory.peak_rss_mb > 32
    with MemorySampler(interval=0.01) as quiet:
        time.sleep(0.05)
    assert quiet.peak_pss_mb == 0.0 and quiet.peak_rss_mb > 0  # PSS only at checkpoints by default


def test_markdown_table_alignment():
    columns = text_columns("name", "n", "ok")
    rows = [{"name": "a", "n": "1", "ok": "yes"}]
    assert markdown_table(rows, columns).splitlines() == [
        "| name | n | ok |",
        "| --- | --- | ---: |",
        "| a | 1 | yes |",
    ]
    assert markdown_table(rows, columns, align="lrc").splitlines()[1] == "| --- | ---: | :---: |"
    assert markdown_table(rows, columns[:1]).splitlines()[1] == "| --- |"
    with pytest.raises(ValueError, match=r"align 'lx': expected one of \['c', 'l', 'r'\] per column \(3\)"):
        markdown_table(rows, columns, align="lx")


def test_replace_block_keeps_the_prose_around_it(tmp_path):
    path = tmp_path / "RESULTS.md"
    replace_block(path, "demo", "first", "## Demo")
    assert path.read_text() == "# Benchmark results\n\n## Demo\n\n<!-- demo: begin -->\nfirst\n<!-- demo: end -->\n"
    path.write_text(path.read_text().replace("## Demo\n", "## Demo\n\nintro\n") + "\nanalysis by hand\n")
    replace_block(path, "demo", "second\nrun", "## Demo")
    text = path.read_text()
    assert "first" not in text and "<!-- demo: begin -->\nsecond\nrun\n<!-- demo: end -->" in text
    assert text.index("intro") < text.index("second") < text.index("analysis by hand")
    replace_block(path, "other", "x", "## Other")
    assert path.read_text() == text.rstrip("\n") + "\n\n## Other\n\n<!-- other: begin -->\nx\n<!-- other: end -->\n"


def test_close_attached_lets_the_ring_close_and_reattach():
    images = torch.arange(2 * 3 * 4, dtype=torch.uint8).reshape(2, 1, 3, 4)
    ring = shm.SharedRing(images.nbytes, 1)
    try:
        for _ in range(2):  # attach, close the handle, attach again
            slot = ring.acquire()
            out = shm.unpack_batch(shm.pack_batch((images, ["t"]), slot), ring)
            ring.release(slot.index)
            shm.close_attached()
            assert torch.equal(out[0], images) and out[1] == ["t"]
    finally:
        ring.close()


def test_transport_costs_time_every_path() -> None:
    """The ring's transport paths, timed in threads of this process (what bench_backends.py reports)."""
    from flirdata.tools.bench.transport import transport_costs

    costs = transport_costs(batch=2, repeats=1)
    assert len(costs) == 8 and all(us > 0 for us in costs.values())
    assert "collated into the ring slot, lent to the consumer (used)" in costs
