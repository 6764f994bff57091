"""``flirdata bench --profile``: one row per top-level transform of the pipeline in use, plus decode and collate."""

from __future__ import annotations

from pathlib import Path

import albumentations as A
import pytest

from flirdata import FlirDetection, build_transform
from flirdata.cli import main
from flirdata.tools.bench.profile import profile_pipeline, step_name
from flirdata.transforms import default_bbox_params


def test_profile_has_a_row_per_step_and_shares_add_up(synth_root: Path) -> None:
    ds = FlirDetection(synth_root, transform=build_transform("thermal_reference"), seed=1)
    records = profile_pipeline(ds, images=6, batch_size=4)
    names = [r["step"] for r in records]
    assert names == [
        "decode",
        "reseed",
        "Compose (boxes in/out)",
        "HorizontalFlip",
        "Affine",
        "LongestMaxSize",
        "PadIfNeeded",
        "RandomBrightnessContrast",
        "RandomGamma",
        "OneOf(GaussianBlur, MotionBlur)",
        "GaussNoise",
        "collate",
    ]
    assert sum(r["share"] for r in records) == pytest.approx(1.0)
    assert all(r["ms_per_image"] >= 0 and r["images"] == 6 for r in records)


def test_profile_leaves_the_pipeline_as_the_dataset_runs_it(synth_root: Path) -> None:
    """Profiling reseeds and runs the dataset's own pipeline: samples afterwards are unchanged."""
    ds = FlirDetection(synth_root, transform=build_transform("thermal"), seed=1)
    before = [ds[i][0].numpy().tobytes() for i in range(3)]
    profile_pipeline(ds, images=4, batch_size=2)
    assert [ds[i][0].numpy().tobytes() for i in range(3)] == before


def test_profile_needs_a_transform_and_enough_images(synth_root: Path) -> None:
    with pytest.raises(ValueError, match="the dataset has no transform to profile"):
        profile_pipeline(FlirDetection(synth_root), images=4)
    pipeline = A.Compose([A.HorizontalFlip()], bbox_params=default_bbox_params())
    small = FlirDetection(synth_root, transform=pipeline).subset([0, 1])
    with pytest.raises(ValueError, match=r"profiling needs more than 3 images \(warm-up\), the split has 2"):
        profile_pipeline(small, images=4)


def test_step_names_show_what_a_composition_holds() -> None:
    assert step_name(A.OneOf([A.Blur(), A.SomeOf([A.InvertImg(), A.ToGray()], n=1)])) == (
        "OneOf(Blur, SomeOf(InvertImg, ToGray))"
    )


def test_cli_profile_prints_the_table_for_the_preset_in_use(synth_root: Path, capsys) -> None:
    argv = ["bench", str(synth_root), "--profile", "--preset", "thermal", "--batch-size", "4", "--batches", "2"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    for step in ["decode", "FusedAffine", "IntensityLUT", "NoiseBank", "collate", "ms/image", "share"]:
        assert step in out
    assert "total " in out and "8 images" in out
    assert "floor: " in out and "x the floor" in out


def test_cli_profile_unknown_preset_is_one_line(synth_root: Path, capsys) -> None:
    assert main(["bench", str(synth_root), "--profile", "--preset", "warm"]) == 2
    err = capsys.readouterr().err.strip()
    assert "unknown preset 'warm'" in err and "thermal_reference" in err and len(err.splitlines()) == 1
