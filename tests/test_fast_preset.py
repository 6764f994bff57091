"""The fast thermal preset draws from the reference preset's distributions, and its parts are exact.

Statistical tests run both presets over the same synthetic frame for a few hundred samples and
compare the means of per-sample statistics; the tolerance of each comparison is its standard error
(from the sample size and the spread of both samples) times ``Z``, not a hand-picked number.
"""

from __future__ import annotations

import pickle
from pathlib import Path

import albumentations as A
import numpy as np
import pytest
from support import write_split

from flirdata import FlirDetection, build_transform
from flirdata.boxes import box_iou
from flirdata.fused import FusedAffine, IntensityLUT, NoiseBank, noise_bank
from flirdata.seeding import reseed_transform, sample_seed_sequence
from flirdata.transforms import default_bbox_params

N = 400  # samples per preset
Z = 4.5  # two-sided, ~7e-6 false alarms per comparison: a failure is a real difference
BACKGROUND, BAR = 100, 230
BAR_BOX = (60.0, 100.0, 260.0, 112.0)  # x0, y0, x1, y1: left of centre, far from the noise patch
PATCH = (slice(236, 276), slice(300, 340))  # flat background in every geometric outcome


def _frame() -> np.ndarray:
    image = np.full((512, 640), BACKGROUND, np.uint8)
    x0, y0, x1, y1 = (int(v) for v in BAR_BOX)
    image[y0:y1, x0:x1] = BAR
    return image


def _bar_angle(image: np.ndarray) -> float:
    """Orientation (degrees) of the bright bar from second moments of its pixels."""
    ys, xs = np.nonzero(image > (BACKGROUND + BAR) / 2)
    if len(xs) < 50:
        return float("nan")
    cov = np.cov(np.stack([xs, ys]).astype(np.float64))
    return float(np.degrees(0.5 * np.arctan2(2 * cov[0, 1], cov[0, 0] - cov[1, 1])))


def _statistics(pipeline: A.Compose, frame: np.ndarray, seed: int = 0) -> dict[str, np.ndarray]:
    """Per-sample statistics of ``pipeline`` on ``frame``, sample ``i`` seeded as the dataset seeds it."""
    x0, y0, x1, y1 = BAR_BOX
    rows = []
    for i in range(N):
        reseed_transform(pipeline, sample_seed_sequence(seed, 0, i))
        out = pipeline(image=frame, bboxes=np.array([[x0, y0, x1 - x0, y1 - y0]]), labels=np.array([0]))
        image = np.asarray(out["image"]).reshape(frame.shape)
        bx, by, bw, bh = np.asarray(out["bboxes"], np.float64).reshape(-1, 4)[0]
        flipped = bx + bw / 2 > frame.shape[1] / 2
        centre_x = frame.shape[1] - (bx + bw / 2) if flipped else bx + bw / 2
        angle = _bar_angle(image) * (-1 if flipped else 1)
        patch = image[PATCH].astype(np.float64)
        shift = (centre_x - (x0 + x1) / 2, by + bh / 2 - (y0 + y1) / 2)
        scale = (np.log(bw / (x1 - x0)), np.log(bh / (y1 - y0)))
        rows.append([flipped, *scale, *shift, angle, image.mean() - frame.mean(), patch.std()])
    names = ["flip", "log_width", "log_height", "shift_x", "shift_y", "angle", "intensity", "noise"]
    return dict(zip(names, np.asarray(rows, np.float64).T, strict=True))


def _assert_same_mean(a: np.ndarray, b: np.ndarray, what: str) -> None:
    a, b = a[np.isfinite(a)], b[np.isfinite(b)]
    error = np.sqrt(a.var(ddof=1) / len(a) + b.var(ddof=1) / len(b))
    assert abs(a.mean() - b.mean()) <= Z * error + 1e-12, f"{what}: {a.mean():.4f} vs {b.mean():.4f} (se {error:.4f})"


@pytest.fixture(scope="module")
def both() -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    frame = _frame()
    # Different seeds: the two samples must be independent for the standard error to hold (with one
    # seed the first coin of both pipelines would be the same draw).
    return _statistics(build_transform("thermal"), frame, seed=1), _statistics(
        build_transform("thermal_reference"), frame
    )


@pytest.mark.parametrize("stat", ["flip", "log_width", "log_height", "shift_x", "shift_y", "intensity", "noise"])
def test_statistic_has_the_reference_mean(both, stat: str) -> None:
    fast, reference = both
    _assert_same_mean(fast[stat], reference[stat], stat)


@pytest.mark.parametrize("stat", ["log_width", "log_height", "shift_x", "shift_y", "angle", "intensity", "noise"])
def test_statistic_has_the_reference_spread(both, stat: str) -> None:
    """Same second moment about the reference's mean (the angle's mean is 0: this is its spread)."""
    fast, reference = both
    centre = np.nanmean(reference[stat])
    _assert_same_mean((fast[stat] - centre) ** 2, (reference[stat] - centre) ** 2, f"spread of {stat}")


@pytest.mark.parametrize(
    ("changed", "stat", "spread"),
    [
        ({"flip_p": 0.25}, "flip", False),
        ({"affine_p": 0.35}, "log_height", False),
        ({"scale": (0.6, 1.5)}, "log_width", True),
    ],
)
def test_statistics_would_catch_a_different_distribution(both, changed: dict, stat: str, spread: bool) -> None:
    """At this sample size the comparisons see a flip at p=0.25, an affine at p=0.35, a wider scale."""
    reference = both[1][stat]
    pipeline = A.Compose([FusedAffine(size=(512, 640), **changed)], bbox_params=default_bbox_params())
    other = _statistics(pipeline, _frame(), seed=1)[stat]
    if spread:
        centre = np.nanmean(reference)
        other, reference = (other - centre) ** 2, (reference - centre) ** 2
    with pytest.raises(AssertionError, match=stat):
        _assert_same_mean(other, reference, stat)


def test_fused_letterbox_matches_resize_and_pad() -> None:
    """Affine off, flip off: the fused warp is the reference's LongestMaxSize + PadIfNeeded."""
    frame = _frame()
    boxes, labels = np.array([[60.0, 100.0, 200.0, 12.0], [500.0, 400.0, 100.0, 90.0]]), np.array([0, 1])
    for size in [(256, 320), (300, 300), (700, 640)]:
        fused = A.Compose([FusedAffine(size=size, flip_p=0.0, affine_p=0.0)], bbox_params=default_bbox_params())
        steps = build_transform("none", size=size)
        got, want = fused(image=frame, bboxes=boxes, labels=labels), steps(image=frame, bboxes=boxes, labels=labels)
        assert got["image"].shape == want["image"].shape == size
        np.testing.assert_allclose(got["bboxes"], want["bboxes"], atol=1e-4)
        assert np.abs(got["image"].astype(int) - want["image"].astype(int)).mean() < 1.0


def test_fused_flip_alone_is_exact() -> None:
    frame = _frame()
    boxes, labels = np.array([[60.0, 100.0, 200.0, 12.0]]), np.array([0])
    fused = A.Compose([FusedAffine(size=(512, 640), flip_p=1.0, affine_p=0.0)], bbox_params=default_bbox_params())
    flip = A.Compose([A.HorizontalFlip(p=1.0)], bbox_params=default_bbox_params())
    got, want = fused(image=frame, bboxes=boxes, labels=labels), flip(image=frame, bboxes=boxes, labels=labels)
    np.testing.assert_array_equal(got["image"], want["image"])
    np.testing.assert_allclose(got["bboxes"], want["bboxes"], atol=1e-6)


def test_intensity_table_gives_the_bytes_of_the_two_passes() -> None:
    """Same alpha, beta, gamma: one table == RandomBrightnessContrast then RandomGamma."""
    image = np.arange(256 * 4, dtype=np.int64).reshape(32, 32).astype(np.uint8)
    for b, c, g in [(0.13, -0.07, 91.0), (-0.2, 0.2, 120.0), (0.05, 0.19, 80.5)]:
        fused = IntensityLUT((b, b), (c, c), 1.0, (g, g), 1.0)
        steps = A.Compose([A.RandomBrightnessContrast((b, b), (c, c), p=1.0), A.RandomGamma((g, g), p=1.0)])
        np.testing.assert_array_equal(fused(image=image)["image"], steps(image=image)["image"])


def test_noise_bank_is_shared_and_fixed() -> None:
    first = noise_bank((512, 640), 0.5, 0)
    assert first is noise_bank((512, 640), 0.5, 0)  # one bank per process, not one per call
    assert not first.flags.writeable
    assert abs(first.mean()) < 0.01 and 0.4 < first.std() < 0.8  # unit sigma, lowered by the 2x upsampling
    assert not np.array_equal(noise_bank((512, 640), 0.5, 1)[:8, :8], first[:8, :8])


def test_fast_preset_saves_loads_and_pickles(tmp_path: Path) -> None:
    pipeline = build_transform("thermal")
    frame = _frame()
    boxes = np.array([[60.0, 100.0, 200.0, 12.0]])
    for fmt in ("json", "yaml"):
        A.save(pipeline, str(tmp_path / f"p.{fmt}"), data_format=fmt)
        loaded = build_transform(tmp_path / f"p.{fmt}")
        for clone in (loaded, pickle.loads(pickle.dumps(pipeline))):
            assert [type(t) for t in clone.transforms] == [type(t) for t in pipeline.transforms]
            for i in range(5):
                outs = []
                for p in (pipeline, clone):
                    reseed_transform(p, sample_seed_sequence(3, 1, i))
                    outs.append(p(image=frame, bboxes=boxes, labels=np.array([0])))
                np.testing.assert_array_equal(outs[0]["image"], outs[1]["image"])
                np.testing.assert_allclose(outs[0]["bboxes"], outs[1]["bboxes"], atol=1e-4)  # float32 after A.load


def test_fused_box_covers_the_rectangle_after_a_letterbox(tmp_path: Path) -> None:
    image = np.zeros((512, 640), np.uint8)
    image[180:330, 250:360] = 255
    write_split(tmp_path, [image], [[[250, 180, 110, 150]]], [[1]])
    ds = FlirDetection(tmp_path, split=tmp_path, transform=build_transform("thermal", size=(300, 300)), seed=2)
    for epoch in range(30):
        out, target = ds.sample(0, epoch=epoch)
        assert out.shape == (1, 300, 300)
        ys, xs = np.nonzero(out[0].numpy() > 128)
        drawn = np.array([[xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]], float)
        assert box_iou(target["boxes"].numpy(), drawn)[0, 0] >= 0.85, f"epoch {epoch}"


@pytest.mark.parametrize(
    ("make", "match"),
    [
        (lambda: FusedAffine(flip_p=1.5), r"flip_p must be a probability in \[0, 1\], got 1.5"),
        (lambda: FusedAffine(scale=(1.2, 0.8)), r"scale must be a \(min, max\) pair .* got \(1.2, 0.8\)"),
        (lambda: FusedAffine(size=(0, 640)), r"size must be None or a \(height, width\) pair .* got \(0, 640\)"),
        (lambda: IntensityLUT(gamma_limit=[80]), r"gamma_limit must be a \(min, max\) pair .* got \[80\]"),
        (lambda: NoiseBank(noise_scale_factor=0), r"noise_scale_factor must be in \(0, 1\], got 0"),
        (lambda: NoiseBank(bank_seed=-1), r"bank_seed must be an integer >= 0, got -1"),
    ],
)
def test_bad_arguments_name_the_value(make, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        make()


def test_float_images_are_refused_with_the_dtype() -> None:
    with pytest.raises(TypeError, match="NoiseBank works on uint8 images .* got float32"):
        NoiseBank(p=1.0)(image=np.zeros((8, 8), np.float32))
