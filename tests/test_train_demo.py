"""``train_demo.py`` as a user runs it (a subprocess), its sample saving, and the tiny model."""

from __future__ import annotations

import importlib.util
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from demo_model import TinyDetector, assign_targets, detection_loss, train_step
from flirdata import FlirDetection, build_transform
from flirdata.loader import make_loader

SCRIPT = Path(__file__).resolve().parents[1] / "train_demo.py"
FAST = ["--steps", "3", "--batch-size", "4"]


def _run(*args: str, cache: Path, stdin: str | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "FLIRDATA_CACHE": str(cache)}
    return subprocess.run(
        [sys.executable, str(SCRIPT), *args],
        input=stdin,
        capture_output=True,
        text=True,
        env=env,
        check=False,
    )


def _demo_module():
    spec = importlib.util.spec_from_file_location("train_demo", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules["train_demo"] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def _check_report(stdout: str) -> None:
    for pattern in (
        r"data only : [\d.]+ images/s",
        r"whole loop: [\d.]+ images/s \(3 steps, 12 images",
        r"waited for data \d+% of the time",
        r"start-up  : [\d.]+ s",
    ):
        assert re.search(pattern, stdout), (pattern, stdout)


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_demo_on_a_dataset_with_compare(synth_root, tmp_path):
    done = _run("--data", str(synth_root), "--backend", "threads", "--workers", "2", "--compare", *FAST, cache=tmp_path)
    assert done.returncode == 0, done.stderr
    _check_report(done.stdout)
    assert "threads, 2 workers; training at 1 torch thread(s)" in done.stdout
    # the baseline trains as the run does: the same torch threads
    assert "sequential, in the training thread; training at 1 torch thread(s)" in done.stdout
    table = done.stdout.split("the course report's table):\n", 1)[1].splitlines()
    assert table[0].split() == "stage technique workers torch threads cores images/s speedup efficiency".split() + [
        "of",
        "ideal",
        "CPU",
        "ms/image",
        "others",
        "(cores)",
    ]
    rows = [line.split() for line in table[2:6]]
    assert [row[:4] for row in rows] == [
        ["loader", "alone", "sequential", "in-thread"],
        ["loader", "alone", "threads", "2"],
        ["whole", "loop", "sequential", "in-thread"],
        ["whole", "loop", "threads", "2"],
    ]
    assert {row[4] for row in rows} == {"1"}  # torch threads, every row
    assert [row[7] for row in rows] == ["1.00", rows[1][7], "1.00", rows[3][7]]  # speedup of the baseline
    for row in rows:  # efficiency = speedup / (cores / 1), and any figure above 1 comes with its cause
        assert float(row[8].rstrip("*")) == pytest.approx(float(row[7]) / int(row[5]), abs=0.006)
        assert not row[8].endswith("*") or re.search(rf"{row[2]}: efficiency {row[8][:-1]} > 1: \w", done.stdout)
    assert not list(tmp_path.iterdir())  # --data given: nothing synthesized


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_demo_synthesizes_its_dataset_and_saves_samples(tmp_path):
    samples = tmp_path / "samples"
    done = _run(
        "--size",
        "12",
        "--backend",
        "process",
        "--workers",
        "2",
        "--save-samples",
        str(samples),
        *FAST,
        cache=tmp_path / "cache",
    )
    assert done.returncode == 0, done.stderr
    _check_report(done.stdout)
    assert (tmp_path / "cache" / "synth-12-seed0" / "images_thermal_train" / "coco.json").is_file()
    assert re.search(r"val mAP   : AP [\d.]+, AP50 [\d.]+, AR100 [\d.]+ on 12 val images", done.stdout)
    coco = json.loads((samples / "coco.json").read_text())
    assert len(coco["images"]) == 8 and all((samples / im["file_name"]).is_file() for im in coco["images"])


def test_saved_samples_are_the_first_batches(synth_root, tmp_path):
    demo = _demo_module()
    ds = FlirDetection(synth_root, transform=build_transform("thermal"), seed=5)
    with make_loader(ds, batch_size=4, shuffle=True, seed=5, drop_last=True) as loader:
        images, targets = next(iter(loader))
        rows = tuple(i for _, batch in loader.tasks(0)[:2] for i in batch)
        demo.save_samples(ds, loader, str(tmp_path / "out"))
    view = ds.subset(rows)
    for k in range(4):
        image, target = view.sample(k, 0)
        assert torch.equal(image, images[k]) and torch.equal(target["boxes"], targets[k]["boxes"])
    coco = json.loads((tmp_path / "out" / "coco.json").read_text())
    saved = [im["extra_info"]["source_image_id"] for im in coco["images"]]
    assert saved[:4] == [t["image_id"] for t in targets]


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_interactive_reasks_until_valid(tmp_path):
    answers = "huge\n12\nfoo\nthreads\n0\n2\n"
    done = _run("--interactive", *FAST, cache=tmp_path, stdin=answers)
    assert done.returncode == 0, done.stderr
    assert done.stderr.count("try again") == 3
    assert "synth-12-seed0" in done.stdout and "threads, 2 workers" in done.stdout
    # End of input takes every default: here the flags' values.
    done = _run("--interactive", "--size", "12", "--backend", "sequential", *FAST, cache=tmp_path, stdin="")
    assert done.returncode == 0, done.stderr
    assert "sequential, in the training thread" in done.stdout and "Number of cores" not in done.stdout


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--backend", "gpu"], "argument --backend: invalid choice: 'gpu'"),
        (["--workers", "0"], "argument --workers: expected an integer >= 1, got '0'"),
        (["--data", "/no/such/flir", "--size", "big"], "--size chooses the synthetic dataset"),
    ],
)
def test_bad_arguments_are_one_line(capsys, args, message):
    demo = _demo_module()
    try:
        code = demo.main(args)
    except SystemExit as exc:  # argparse's own checks exit from parse_args
        code = exc.code
    lines = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and message in lines[0], lines


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--distributed"], "--distributed runs under torchrun (RANK, WORLD_SIZE, MASTER_ADDR, MASTER_PORT not set)"),
        (["--distributed", "--interactive"], "--interactive asks on a terminal, which torchrun's ranks do not share"),
    ],
)
def test_distributed_outside_torchrun_is_one_line(capsys, monkeypatch, args, message):
    for name in ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(name, raising=False)
    code = _demo_module().main(args)
    lines = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and message in lines[0], lines
    assert "torchrun --standalone --nproc_per_node=N train_demo.py --distributed" in lines[0] or "--interactive" in args


def test_missing_data_folder_is_one_line(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("FLIRDATA_CACHE", str(tmp_path))
    code = _demo_module().main(["--data", str(tmp_path / "flir")])
    lines = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and lines == [f"train_demo.py: error: {tmp_path / 'flir'}: dataset folder not found"]


def test_help_states_the_default_run():
    demo = _demo_module()
    text = demo.build_parser().format_help()
    assert "200 steps of 16 images" in text and "--save-samples" in text


# -- the model -----------------------------------------------------------------------------------
def _batch() -> tuple[torch.Tensor, list[dict]]:
    gen = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (4, 1, 96, 128), dtype=torch.uint8, generator=gen)
    targets = [
        {"boxes": torch.tensor([[10.0, 20.0, 40.0, 60.0], [60.0, 30.0, 120.0, 90.0]]), "labels": torch.tensor([1, 3])}
        for _ in range(4)
    ]
    targets[3] = {"boxes": torch.zeros((0, 4)), "labels": torch.zeros(0, dtype=torch.int64)}
    return images, targets


def test_loss_decreases_on_a_fixed_batch():
    torch.manual_seed(0)
    model = TinyDetector(num_classes=4)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    images, targets = _batch()
    losses = [train_step(model, optimizer, images, targets) for _ in range(10)]
    assert losses[-1] < 0.5 * losses[0]


def test_loss_depends_on_the_targets():
    torch.manual_seed(0)
    model = TinyDetector(num_classes=4).eval()
    images, targets = _batch()
    with torch.no_grad():
        outputs = model(images)
        moved = [{**t, "boxes": t["boxes"] + 16} for t in targets]
        relabelled = [{**t, "labels": torch.full_like(t["labels"], 4)} for t in targets]
        base = detection_loss(outputs, targets)
        assert detection_loss(outputs, moved)["box"] != base["box"]
        assert detection_loss(outputs, relabelled)["cls"] != base["cls"]


def test_assign_targets_puts_a_box_at_its_centre_cell():
    target = {"boxes": torch.tensor([[32.0, 16.0, 64.0, 48.0]]), "labels": torch.tensor([2])}
    heat, box, owned = assign_targets([target], (1, 3, 4, 5), stride=16)
    assert owned.sum() == 1 and owned[0, 2, 3]  # centre (48, 32) -> cell x=3, y=2
    assert heat[0, 1, 2, 3] == 1 and heat.sum() == 1
    assert torch.allclose(box[0, :, 2, 3], torch.tensor([-0.5, -0.5, 0.6931, 0.6931]), atol=1e-4)
    with pytest.raises(ValueError, match="labels must be in 1..3"):
        assign_targets([{**target, "labels": torch.tensor([4])}], (1, 3, 4, 5), stride=16)
