"""The floor benchmark: the preset's bare pixel work, weighted by its probabilities, against the pipeline."""

from __future__ import annotations

from pathlib import Path

import albumentations as A
import pytest

from flirdata import FlirDetection, build_transform
from flirdata.fused import NoiseBank
from flirdata.tools.bench.floor import FLOOR_STEPS, floor_weights, format_floor, measure_floor
from flirdata.tools.bench.timing import single_threaded


def test_weights_follow_the_preset_probabilities() -> None:
    pipeline = build_transform("thermal")
    blur = next(t for t in pipeline.transforms if isinstance(t, A.OneOf))
    noise = next(t for t in pipeline.transforms if isinstance(t, NoiseBank))
    weights = floor_weights(pipeline)
    assert weights == pytest.approx({"decode": 1, "warpAffine": 1, "LUT": 1, "blur": blur.p, "noise": noise.p})
    # The reference draws from the same distributions, so its floor is the same work.
    assert floor_weights(build_transform("thermal_reference")) == pytest.approx(weights)
    assert floor_weights(build_transform("none")) == {"decode": 1, "warpAffine": 1, "LUT": 0, "blur": 0, "noise": 0}


def test_a_blur_of_its_own_counts_by_its_p() -> None:
    pipeline = A.Compose([A.GaussianBlur(p=0.4), A.OneOf([A.MotionBlur(p=1), A.GaussNoise(p=1)], p=0.5)])
    weights = floor_weights(pipeline)
    assert weights["blur"] == pytest.approx(0.4 + 0.5 * 0.5)
    assert weights["noise"] == pytest.approx(0.5 * 0.5)


@pytest.mark.parametrize("cache", [None, "ram"])
def test_floor_and_pipeline_are_measured_in_rounds(synth_root: Path, cache: str | None) -> None:
    ds = FlirDetection(synth_root, transform=build_transform("thermal"), seed=1, cache=cache)
    with single_threaded():
        result = measure_floor(ds, images=6, repeats=2, batch_size=4)
    assert len(result["rounds"]) == 2 and result["images"] == 6
    steps = set(result["rounds"][0]["steps"])
    assert steps == set(FLOOR_STEPS) - ({"decode"} if cache else set())
    for r in result["rounds"]:
        assert r["ratio"] == pytest.approx(r["pipeline"] / r["floor"])
    assert min(r["ratio"] for r in result["rounds"]) <= result["ratio"] <= max(r["ratio"] for r in result["rounds"])
    assert format_floor(result).startswith("floor (RAM cache, no decode): " if cache else "floor: ")
