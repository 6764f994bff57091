"""``FlirDetection(cache="ram")``: decoded frames kept once in shared memory, read by every worker."""

from __future__ import annotations

import gc
import multiprocessing
import os
import pickle
import subprocess
import sys
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from support import backend_params, our_segments, use_shared_ray_for, write_split

import flirdata.images
from flirdata import FlirDetection, build_transform
from flirdata.backends import BACKENDS
from flirdata.cache import CacheCapacityWarning, CacheLayout, FrameCache
from flirdata.dataset import BadImageWarning
from flirdata.loader import make_loader


def count_decodes(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    calls: list[str] = []
    real = flirdata.images.decode_image

    def counting(data: bytes, name: str, modality: str, expect_hw: tuple[int, int] | None = None) -> np.ndarray:
        calls.append(name)
        return real(data, name, modality, expect_hw)

    monkeypatch.setattr(flirdata.images, "decode_image", counting)
    return calls


def batches(dataset: Any, backend: str = "sequential", workers: int = 1, epochs: tuple[int, ...] = (0, 1)) -> list[Any]:
    out = []
    with make_loader(dataset, backend=backend, workers=workers, batch_size=5, shuffle=True, seed=3) as loader:
        for epoch in epochs:
            loader.set_epoch(epoch)
            out.extend(loader)
    return out


def assert_same(got: list[Any], want: list[Any]) -> None:
    assert len(got) == len(want)
    for (images, targets), (want_images, want_targets) in zip(got, want, strict=True):
        assert images.numpy().tobytes() == want_images.numpy().tobytes()
        for target, expected in zip(targets, want_targets, strict=True):
            assert target["image_id"] == expected["image_id"]
            assert torch.equal(target["boxes"], expected["boxes"]) and torch.equal(target["labels"], expected["labels"])


@pytest.fixture(scope="module")
def plain(synth_root: Path) -> FlirDetection:
    return FlirDetection(synth_root, "train", build_transform("thermal"), seed=5)


@pytest.fixture(scope="module")
def expected(plain: FlirDetection) -> list[Any]:
    return batches(plain)


@pytest.mark.parametrize("backend", backend_params(sorted(BACKENDS)))
def test_same_bytes_as_no_cache_on_every_backend(
    synth_root: Path, expected: list[Any], backend: str, monkeypatch: pytest.MonkeyPatch, request: pytest.FixtureRequest
) -> None:
    use_shared_ray_for(backend, request)
    cached = FlirDetection(synth_root, "train", build_transform("thermal"), seed=5, cache="ram")
    calls = count_decodes(monkeypatch)  # counts the main process only
    assert_same(batches(cached, backend, workers=2), expected)
    # Every frame was written into the one segment, by whichever process decoded it first.
    assert cached._cache is not None and cached._cache.filled() == len(cached)
    if backend in ("loky", "process"):
        assert calls == []  # workers filled the segment the main process reads
    cached._cache.close()


def test_decoded_once_and_read_only(synth_root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls = count_decodes(monkeypatch)
    cached = FlirDetection(synth_root, "train", build_transform("thermal"), seed=5, cache="ram")
    batches(cached)
    assert len(calls) == len(cached)  # two epochs, one decode per image
    image, _, _ = cached.load_raw(0)
    assert not image.flags.writeable
    calls.clear()
    batches(FlirDetection(synth_root, "train", build_transform("thermal"), seed=5))
    assert len(calls) == 2 * len(cached)


def test_rgb_without_transform_gives_writable_copies(rgb_root: Path) -> None:
    plain = FlirDetection(rgb_root, "rgb_train")
    cached = FlirDetection(rgb_root, "rgb_train", cache="ram")
    for _ in range(2):
        for i in range(len(plain)):
            image, target = cached[i]
            assert image.numpy().tobytes() == plain[i][0].numpy().tobytes()
            image.zero_()  # the caller's own tensor: the cache is untouched
    assert cached._cache is not None and cached._cache.filled() == len(cached)


def probe(dataset: FlirDetection, i: int) -> tuple[int, str, bool, bytes]:
    image, _, _ = dataset.load_raw(i)
    assert dataset._cache is not None
    return os.getpid(), dataset._cache.name, dataset._cache.owner, image.tobytes()


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_process_workers_attach_to_the_same_segment(synth_root: Path) -> None:
    cached = FlirDetection(synth_root, "train", cache="ram")
    plain = FlirDetection(synth_root, "train")
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(2, mp_context=context) as pool:
        results = list(pool.map(probe, [cached] * 6, range(6)))
    assert cached._cache is not None
    assert {name for _, name, _, _ in results} == {cached._cache.name}
    assert not any(owner for _, _, owner, _ in results) and os.getpid() not in {pid for pid, *_ in results}
    assert [pixels for *_, pixels in results] == [plain.load_raw(i)[0].tobytes() for i in range(6)]
    assert cached._cache.filled() == 6  # written by the workers, seen here
    assert cached._cache.name in our_segments()  # a worker's exit did not unlink it


def test_over_budget_caches_a_prefix(synth_root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    plain = FlirDetection(synth_root, "train")
    frame = int(plain.index.heights[0]) * int(plain.index.widths[0])
    with pytest.warns(CacheCapacityWarning, match=rf"{len(plain)} decoded frames need .* caching the first 2 images"):
        cached = FlirDetection(synth_root, "train", cache="ram", cache_bytes=64 + 2 * frame + 100)
    assert cached._cache is not None and cached._cache.layout.capacity == 2
    calls = count_decodes(monkeypatch)
    for _ in range(2):
        for i in range(len(plain)):
            assert cached.load_raw(i)[0].tobytes() == plain.load_raw(i)[0].tobytes()
    assert len(calls) == 2 + 2 * (len(plain) - 2) + 2 * len(plain)  # the prefix once, the rest every time


def test_budget_below_one_frame_caches_nothing(synth_root: Path) -> None:
    with pytest.warns(CacheCapacityWarning, match="caching the first 0 images"):
        cached = FlirDetection(synth_root, "train", cache="ram", cache_bytes=100)
    assert cached._cache is not None and cached._cache.name == "" and cached._cache.filled() == 0
    assert cached[0][0].shape == FlirDetection(synth_root, "train")[0][0].shape


def test_layout_is_a_prefix() -> None:
    layout, need = CacheLayout.plan([10, 1, 1], [10, 1, 1], 1, budget=64 + 100 + 10)
    assert layout.capacity == 1 and layout.offsets == (64,) and layout.nbytes == 64 + 100
    assert need == 64 + 128 + 64 + 64  # flags, then each frame on a 64-byte boundary


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"cache": "disk"}, r"cache must be None or one of \('ram',\), got 'disk'"),
        ({"cache": "ram", "cache_bytes": 0}, "cache_bytes must be a positive int or None, got 0"),
        ({"cache": "ram", "cache_bytes": True}, "cache_bytes must be a positive int or None, got True"),
    ],
)
def test_bad_arguments(synth_root: Path, kwargs: dict[str, Any], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        FlirDetection(synth_root, "train", **kwargs)


def test_bad_image_is_never_cached(tmp_path: Path) -> None:
    frames = [np.full((8, 10), 40 * k, np.uint8) for k in range(3)]
    folder = write_split(tmp_path / "images_thermal_train", frames, [[[1, 1, 4, 4]]] * 3, [[1]] * 3)
    (folder / "data" / "image-0001.png").write_bytes(b"not a png")
    cached = FlirDetection(tmp_path, "train", cache="ram", on_error="skip")
    with pytest.warns(BadImageWarning, match="image-0001.png"):
        image = cached[1][0]
    assert image.numpy().tobytes() == frames[2].tobytes()
    assert cached._cache is not None and cached._cache.filled() == 1
    cached[1]  # still bad, still not cached: read (and refused) again; warned once per file
    assert cached.skipped == 2 and cached._cache.filled() == 1


def test_subset_and_pickle_share_the_cache(synth_root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cached = FlirDetection(synth_root, "train", build_transform("thermal"), seed=5, cache="ram")
    plain = FlirDetection(synth_root, "train", build_transform("thermal"), seed=5)
    calls = count_decodes(monkeypatch)
    part = cached.subset([7, 3])
    assert part.sample(0)[0].numpy().tobytes() == plain.sample(7)[0].numpy().tobytes()
    copy = pickle.loads(pickle.dumps(cached))
    assert copy._cache is cached._cache  # in the owning process, a round trip is the same cache
    assert copy.sample(7)[0].numpy().tobytes() == plain.sample(7)[0].numpy().tobytes()
    assert calls.count(str(cached.image_path(7))) == 1 + 2  # once for subset and copy together, twice for plain


def test_no_segment_left_after_the_dataset_is_gone(synth_root: Path) -> None:
    gc.collect()  # datasets of earlier tests
    before = our_segments()
    cached = FlirDetection(synth_root, "train", cache="ram")
    part = cached.subset([1, 2])
    frame = part.load_raw(0)[0]  # a view the caller still holds: the name goes anyway
    assert len(our_segments() - before) == 1
    del cached, part
    gc.collect()
    assert our_segments() == before
    assert frame.shape == (int(FlirDetection(synth_root, "train").index.heights[1]), frame.shape[1])


@pytest.mark.slow
def test_frame_outliving_its_cache_keeps_its_pixels(synth_root: Path) -> None:
    # In a child: a frame whose mapping was unmapped under it segfaults, which would end the test run.
    code = f"""
import gc
import numpy as np
from flirdata import FlirDetection
from flirdata.cache import CacheLayout, FrameCache

layout, _ = CacheLayout.plan([3], [4], 1, None)
cache = FrameCache(layout)
frame = cache.get(0, lambda: np.arange(12, dtype=np.uint8).reshape(3, 4))
cache.close()
assert frame.tobytes() == bytes(range(12)), frame

dataset = FlirDetection({str(synth_root)!r}, "train", cache="ram")
image = dataset.load_raw(0)[0]
del dataset
gc.collect()
assert image.tobytes() == FlirDetection({str(synth_root)!r}, "train").load_raw(0)[0].tobytes()
"""
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, (done.returncode, done.stderr)


def test_attachment_outliving_its_owner_decodes(synth_root: Path) -> None:
    cached = FlirDetection(synth_root, "train", cache="ram")
    assert cached._cache is not None
    orphan = FrameCache(cached._cache.layout, name=cached._cache.name)
    cached._cache.close()
    pixels = orphan.get(0, lambda: np.zeros(orphan.layout.shapes[0], np.uint8))
    assert pixels.any() == 0 and orphan.name == ""


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_bench_cache_tiny_run_writes_its_block(synth_root: Path, tmp_path: Path) -> None:
    script = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_cache.py"
    results = tmp_path / "RESULTS.md"
    args = [str(synth_root), "--repeats", "1", "--workers", "1", "--batch-size", "4", "--results", str(results)]
    done = subprocess.run([sys.executable, str(script), *args], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    text = results.read_text()
    assert "## Cache" in text and "<!-- bench_cache.py: end -->" in text
    for row in ("| single thread | none |", "| single thread | ram |", "| process x1 | none |", "| process x1 | ram |"):
        assert row in text
