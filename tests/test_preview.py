"""``flirdata preview`` and the drawing helpers other commands reuse (``draw_boxes``)."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from flirdata.cli import main
from flirdata.dataset import FlirDetection
from flirdata.synth import synthesize
from flirdata.tools.preview import GAP, OUTLINE, choose_indices, class_colour, draw_boxes, render_preview
from flirdata.transforms import build_transform

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
CLASSES = ("__background__", "person", "bike", "car")


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("preview")
    synthesize(root, train=12, val=4, seed=0, progress=False)
    return root


def test_cli_writes_a_png_grid(root: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "new" / "folder" / "preview.png"
    argv = ["preview", "--data", str(root), "--out", str(out), "--n", "5", "--cols", "3", "--preset", "none"]
    assert main(argv) == 0
    assert str(out) in capsys.readouterr().out
    assert out.read_bytes().startswith(PNG_SIGNATURE)
    grid = cv2.imread(str(out), cv2.IMREAD_UNCHANGED)
    assert grid is not None and grid.dtype == np.uint8 and grid.shape[2] == 3
    # 3 columns of 480-pixel tiles (640 scaled by 0.75 -> 384 rows of pixels), 2 rows.
    assert grid.shape[1] == 3 * 480 + 4 * GAP
    bars = grid.shape[0] - 2 * 384 - 3 * GAP  # the caption line and the two rows' title bars
    assert 3 * 12 <= bars <= 3 * 40
    saturated = (grid.max(axis=2).astype(int) - grid.min(axis=2)) > 100
    assert saturated.sum() > 500  # coloured boxes and name tags were drawn


def test_render_preview_is_reproducible_and_epoch_changes_only_augmentation(root: Path) -> None:
    dataset = FlirDetection(root, "train", build_transform("thermal"), seed=3)
    first = render_preview(dataset, 4, seed=3, epoch=0, tile_width=160)
    assert np.array_equal(first, render_preview(dataset, 4, seed=3, epoch=0, tile_width=160))
    assert not np.array_equal(first, render_preview(dataset, 4, seed=3, epoch=1, tile_width=160))
    assert first.shape == render_preview(dataset, 4, seed=3, epoch=1, tile_width=160).shape


def test_choose_indices_depends_on_seed_only() -> None:
    picked = choose_indices(100, 16, seed=5)
    assert len(set(picked.tolist())) == 16 and list(picked) == sorted(picked)
    assert np.array_equal(picked, choose_indices(100, 16, seed=5))
    assert not np.array_equal(picked, choose_indices(100, 16, seed=6))
    assert np.array_equal(choose_indices(3, 16), [0, 1, 2])
    with pytest.raises(ValueError, match="n must be at least 1, got 0"):
        choose_indices(10, 0)


def test_draw_boxes_colours_the_box_edges_and_leaves_the_rest() -> None:
    gray = np.full((100, 120), 128, dtype=np.uint8)
    out = draw_boxes(gray, np.array([[20.0, 30.0, 80.0, 70.0]]), np.array([1]), CLASSES)
    assert out.shape == (100, 120, 3) and out.dtype == np.uint8
    assert np.all(gray == 128), "the input must not be modified"
    red = np.array(class_colour(1))
    assert np.all(out[40:69, 20] == red) and np.all(out[40:69, 79] == red)  # left and right edges
    assert np.all(out[30, 50:79] == red) and np.all(out[69, 21:79] == red)  # top and bottom edges
    assert np.all(out[33:67, 23:77] == 128), "the inside of the box is untouched"
    assert np.all(out[:, 100:] == 128) and np.all(out[80:] == 128), "far from the box is untouched"
    assert np.all(out[40:69, 19] == OUTLINE), "a dark outline keeps the box visible on white"
    tag = out[:29, 20:60].reshape(-1, 3)
    assert (tag == red).all(axis=1).sum() > 50, "the class name sits on a tag above the box"


def test_draw_boxes_takes_dataset_tensors_and_keeps_empty_images() -> None:
    gray = np.random.default_rng(0).integers(0, 256, (48, 64), dtype=np.uint8)
    boxes = np.array([[4.0, 30.0, 20.0, 40.0], [30.0, 5.0, 60.0, 25.0]], dtype=np.float32)
    from_numpy = draw_boxes(gray, boxes, np.array([2, 3]), CLASSES)
    from_torch = draw_boxes(torch.from_numpy(gray)[None], torch.from_numpy(boxes), torch.tensor([2, 3]), CLASSES)
    assert np.array_equal(from_numpy, from_torch)
    empty = draw_boxes(gray, np.zeros((0, 4)), np.zeros(0, dtype=np.int64), CLASSES)
    assert np.array_equal(empty, np.repeat(gray[:, :, None], 3, axis=2))


def test_draw_boxes_rejects_mismatched_input() -> None:
    gray = np.zeros((8, 8), dtype=np.uint8)
    with pytest.raises(ValueError, match="got 1 boxes but 2 labels"):
        draw_boxes(gray, [[0, 0, 4, 4]], [1, 2], CLASSES)
    with pytest.raises(ValueError, match="image must be uint8, got float32"):
        draw_boxes(gray.astype(np.float32), [[0, 0, 4, 4]], [1], CLASSES)


def test_missing_data_folder_is_one_line_and_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    missing = tmp_path / "no-such-dataset"
    assert main(["preview", "--data", str(missing), "--out", str(tmp_path / "p.png")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and str(missing) in err[0]
    assert not (tmp_path / "p.png").exists()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--out", "preview.gif"], "preview.gif"),
        (["--n", "0"], "argument --n: expected an integer >= 1, got '0'"),
        (["--epoch", "-1"], "-1"),
    ],
)
def test_bad_arguments_exit_2(
    root: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], args: list[str], message: str
) -> None:
    argv = ["preview", "--data", str(root), "--out", str(tmp_path / "p.png"), *args]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0], err


def test_unknown_preset_is_a_user_error(root: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["preview", "--data", str(root), "--out", str(tmp_path / "p.png"), "--preset", "sepia"]
    assert main(argv) == 2
    assert "unknown preset 'sepia'" in capsys.readouterr().err
