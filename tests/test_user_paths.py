"""The paths users take first: a plain DataLoader, unguarded scripts, ``-c`` and stdin, dead processes.

Scripts run in subprocesses exactly as a user runs them; every process they start carries a
marker in its environment, so a process left behind is found even after it was reparented.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time
import uuid
from pathlib import Path

import numpy as np
import psutil
import pytest
import torch
from hazards import WorkerHazard
from tiers import process_startup_s
from torch.utils.data import DataLoader

import flirdata as fd
from flirdata.backends import WorkerCrashError

PROCESS_BACKENDS = ("dataloader", "loky", "process")
SCRIPT_BUDGET = 60  # seconds a user script may take on a quiet machine: the tests' hang guards

SNIPPET = """\
import flirdata as fd
{definitions}
ds = fd.FlirDetection({root!r}, split="train", transform=fd.build_transform("thermal"), seed=0)
with fd.make_loader(ds, backend={backend!r}, workers=2, batch_size=4, shuffle=True, seed=0{extra}) as loader:
    for epoch in range(2):
        loader.set_epoch(epoch)
        for images, targets in loader:
            assert images.shape[1:] == (1, 512, 640)
print("trained", len(loader), "batches")
"""

MAIN_COLLATE = """\
def my_collate(samples):
    return fd.collate_detection(samples)
"""


def _guarded(code: str) -> str:
    head, _, body = code.partition("\nds = ")
    return head + '\nif __name__ == "__main__":\n' + textwrap.indent("ds = " + body, "    ")


def marked(pid_marker: str) -> list[psutil.Process]:
    """Live processes whose environment carries ``pid_marker``."""
    found = []
    for proc in psutil.process_iter():
        try:
            if proc.environ().get("FLIRDATA_TEST_MARK") == pid_marker and proc.status() != psutil.STATUS_ZOMBIE:
                found.append(proc)
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            continue
    return found


def run_user_code(code: str, mode: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    """Run ``code`` as a user would (a file, ``-c`` or stdin); assert nothing of it is left after."""
    marker = uuid.uuid4().hex
    env = {**os.environ, "FLIRDATA_TEST_MARK": marker}
    script = cwd / "user_script.py"
    script.write_text(code)
    argv = {"file": [sys.executable, str(script)], "-c": [sys.executable, "-c", code], "stdin": [sys.executable, "-"]}
    result = subprocess.run(
        argv[mode],
        input=code if mode == "stdin" else None,
        capture_output=True,
        text=True,
        cwd=cwd,
        env=env,
    )
    deadline = time.monotonic() + 10 * process_startup_s()  # (a poll: costs nothing when they are gone)
    while marked(marker) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not marked(marker), f"processes left behind: {marked(marker)}\n{result.stderr}"
    return result


# -- a plain torch DataLoader sees ds.set_epoch ----------------------------------------------


@pytest.mark.slow
@pytest.mark.timeout(120)
@pytest.mark.parametrize("persistent", [True, False])
@pytest.mark.parametrize("method", ["fork", "forkserver", "spawn"])
def test_plain_dataloader_workers_follow_set_epoch(synth_root: Path, method: str, persistent: bool) -> None:
    ds = fd.FlirDetection(synth_root, "train", transform=fd.build_transform("thermal"), seed=3)
    loader = DataLoader(
        ds,
        batch_size=4,
        num_workers=2,
        persistent_workers=persistent,
        collate_fn=fd.collate_detection,
        multiprocessing_context=method,
    )
    for epoch in (0, 1):  # one change of epoch: (not persistent) new workers, or (persistent) the running ones
        ds.set_epoch(epoch)
        for b, (images, targets) in enumerate(loader):
            for j in range(len(images)):
                image, target = ds.sample(b * 4 + j, epoch=epoch)
                assert torch.equal(images[j], image), (method, epoch, b * 4 + j)
                assert torch.equal(targets[j]["boxes"], target["boxes"])
    assert ds.epoch == 1


def test_epoch_of_a_pickled_copy_is_its_own(synth_root: Path) -> None:
    import copy
    import pickle

    ds = fd.FlirDetection(synth_root, "train", seed=0)
    ds.set_epoch(4)
    twin = pickle.loads(pickle.dumps(ds))
    clone = copy.deepcopy(ds)
    assert twin.epoch == clone.epoch == 4
    twin.set_epoch(7)
    clone.set_epoch(8)
    assert ds.epoch == 4


# -- targets and batches for detector training -----------------------------------------------


def _crowd_split(tmp_path: Path) -> Path:
    from support import write_split

    image = np.zeros((64, 80), dtype=np.uint8)
    folder = write_split(
        tmp_path / "crowd", [image, image], [[[2, 2, 10, 10], [40, 20, 20, 30]], [[0, 0, 5, 5]]], [[1, 3], [1]]
    )
    coco = json.loads((folder / "coco.json").read_text())
    coco["annotations"][1]["iscrowd"] = 1
    (folder / "coco.json").write_text(json.dumps(coco))
    return folder


def test_targets_carry_area_and_iscrowd_that_follow_the_boxes(tmp_path: Path) -> None:
    folder = _crowd_split(tmp_path)
    plain = fd.FlirDetection(folder, folder)
    _, target = plain[0]
    assert target["area"].dtype == torch.float32 and target["iscrowd"].dtype == torch.int64
    assert target["area"].tolist() == [100.0, 600.0]
    assert target["iscrowd"].tolist() == [0, 1]
    assert target["labels"].tolist() == [1, 3]  # person, car
    # The crowd flag travels with its box through an augmentation that drops or moves boxes.
    flips = fd.FlirDetection(folder, folder, transform=fd.build_transform("thermal", size=(64, 80)), seed=1)
    for epoch in range(12):
        _, target = flips.sample(0, epoch=epoch)
        boxes = target["boxes"]
        area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
        assert torch.allclose(target["area"], area)
        assert len(target["iscrowd"]) == len(target["labels"]) == len(boxes)
        assert target["iscrowd"].tolist() == [int(label == 3) for label in target["labels"].tolist()]


def test_iscrowd_must_be_0_or_1(tmp_path: Path) -> None:
    folder = _crowd_split(tmp_path)
    coco = json.loads((folder / "coco.json").read_text())
    coco["annotations"][0]["iscrowd"] = 2
    (folder / "coco.json").write_text(json.dumps(coco))
    with pytest.raises(fd.AnnotationError, match="'iscrowd' must be 0 or 1, got 2"):
        fd.FlirDetection(folder, folder)


@pytest.mark.parametrize("output", ["float", "float_rgb"])
def test_float_output_is_what_torchvision_detection_models_take(synth_root: Path, output: str) -> None:
    ds = fd.FlirDetection(synth_root, "train", transform=fd.build_transform("thermal"), seed=0)
    raw_images, _ = next(iter(fd.make_loader(ds, batch_size=3)))
    images, targets = next(iter(fd.make_loader(ds, batch_size=3, output=output)))
    channels = 3 if output == "float_rgb" else 1
    assert images.dtype == torch.float32 and images.shape == (3, channels, 512, 640)
    assert 0.0 <= images.min() and images.max() <= 1.0
    for c in range(channels):
        assert torch.equal(images[:, c : c + 1], raw_images.float() / 255)
    # torchvision's GeneralizedRCNN reads these keys, dtypes and shapes from every target.
    for target in targets:
        n = len(target["boxes"])
        assert target["boxes"].dtype == torch.float32 and target["boxes"].shape == (n, 4)
        assert target["labels"].dtype == torch.int64 and target["labels"].shape == (n,)
        assert target["area"].shape == (n,) and target["iscrowd"].shape == (n,)
        assert isinstance(target["image_id"], int)
        assert bool((target["boxes"][:, 2:] > target["boxes"][:, :2]).all())


def test_unknown_output_lists_the_valid_ones(synth_root: Path) -> None:
    with pytest.raises(ValueError, match=r"unknown output 'fp16'; expected one of \['float', 'float_rgb', 'uint8'\]"):
        fd.make_loader(fd.FlirDetection(synth_root, "train"), output="fp16")


# -- any script, any context -------------------------------------------------------------------


# Every backend as a file; those whose workers the script itself starts (and which may import its
# __main__ again) also as -c and stdin. Ray's workers are the raylet's, and the others run in-process.
SNIPPET_RUNS = [
    (backend, mode)
    for backend in sorted(fd.BACKENDS)
    for mode in ("file", "-c", "stdin")
    if mode == "file" or backend in PROCESS_BACKENDS
]


@pytest.mark.slow
@pytest.mark.timeout(3 * SCRIPT_BUDGET)
@pytest.mark.parametrize(("backend", "mode"), SNIPPET_RUNS)
def test_readme_snippet_runs_unguarded(synth_root: Path, tmp_path: Path, backend: str, mode: str) -> None:
    code = SNIPPET.format(root=str(synth_root), backend=backend, definitions="", extra="")
    result = run_user_code(code, mode, tmp_path)
    assert result.returncode == 0, result.stderr
    assert "trained 6 batches" in result.stdout


@pytest.mark.slow
@pytest.mark.timeout(2 * SCRIPT_BUDGET)
@pytest.mark.parametrize("mode", ["file", "-c", "stdin"])
@pytest.mark.parametrize("backend", ["dataloader", "process"])
def test_main_defined_collate_that_workers_cannot_get_fails_early_with_the_fix(
    synth_root: Path, tmp_path: Path, backend: str, mode: str
) -> None:
    code = SNIPPET.format(
        root=str(synth_root), backend=backend, definitions=MAIN_COLLATE, extra=", collate_fn=my_collate"
    )
    result = run_user_code(code, mode, tmp_path)
    assert result.returncode == 1
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("flirdata.backends._spawning.MainModuleError: ")
    why = {
        "file": "user_script.py, and its line 9 starts this loader outside",  # the `for` line
        "-c": "the main program has no file (python -c, a notebook)",
        "stdin": "the main program (<stdin>) is not a file",
    }[mode]
    assert why in last
    assert ('if __name__ == "__main__":' in last) == (mode == "file")  # the guard is the fix only there
    assert "my_collate" in last and "backend='threads' or 'loky'" in last
    assert result.stderr.count("Traceback") == 1  # the main process's own; no worker started
    assert "BrokenProcessPool" not in result.stderr and "OOM" not in result.stderr


def test_loader_repr_names_its_settings(synth_root: Path) -> None:
    loader = fd.make_loader(fd.FlirDetection(synth_root, "train"), backend="threads", workers=2, batch_size=4)
    assert repr(loader) == "Loader(backend='threads', workers=2, batch_size=4, batches=6, epoch=0)"


@pytest.mark.slow
@pytest.mark.timeout(2 * SCRIPT_BUDGET)
@pytest.mark.parametrize("backend", ["process", "loky"])
def test_main_defined_collate_works_where_main_can_be_rerun(synth_root: Path, tmp_path: Path, backend: str) -> None:
    code = SNIPPET.format(
        root=str(synth_root), backend=backend, definitions=MAIN_COLLATE, extra=", collate_fn=my_collate"
    )
    if backend == "process":
        code = _guarded(code)  # the guard is what lets process workers re-run the script
    result = run_user_code(code, "file", tmp_path)
    assert result.returncode == 0, result.stderr
    assert "trained 6 batches" in result.stdout


# -- dead processes ----------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.timeout(60)
@pytest.mark.parametrize("backend", PROCESS_BACKENDS)
def test_worker_killed_after_sending_a_batch_raises_worker_crash(backend: str) -> None:
    dataset = WorkerHazard(64, at=9, side=256)
    with fd.make_loader(dataset, backend=backend, workers=2, batch_size=4, prefetch=1) as loader:
        batches = iter(loader)
        next(batches)
        time.sleep(1.5)  # the killed worker's last batch waits, unreceived, for the consumer
        with pytest.raises(WorkerCrashError, match=rf"'{backend}' backend: worker pid \d+ was killed by SIGKILL"):
            for _ in batches:
                pass
        assert loader.backend is None  # the broken pool is gone; the next epoch starts a new one


@pytest.mark.slow
@pytest.mark.timeout(60)
@pytest.mark.parametrize("backend", PROCESS_BACKENDS)
def test_crash_message_names_the_real_cause(backend: str) -> None:
    with fd.make_loader(WorkerHazard(ending="exit7"), backend=backend, workers=2, batch_size=2) as loader:
        with pytest.raises(WorkerCrashError, match=r"worker pid \d+ exited with status 7") as caught:
            list(loader)
    assert "OOM" not in str(caught.value)


KILL_MAIN = """import sys, time
import flirdata as fd
if __name__ == "__main__":
    ds = fd.FlirDetection({root!r}, split="train", transform=fd.build_transform("thermal"))
    loader = fd.make_loader(ds, backend={backend!r}, workers=2, batch_size=4)
    next(iter(loader))
    print("ready", flush=True)
    time.sleep(120)
"""


@pytest.mark.slow
@pytest.mark.timeout(90)
@pytest.mark.parametrize("backend", PROCESS_BACKENDS)
def test_workers_exit_when_the_main_process_is_killed(synth_root: Path, tmp_path: Path, backend: str) -> None:
    marker = uuid.uuid4().hex
    script = tmp_path / "main.py"
    script.write_text(KILL_MAIN.format(root=str(synth_root), backend=backend))
    env = {**os.environ, "FLIRDATA_TEST_MARK": marker}
    main = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, text=True, env=env)
    try:
        assert main.stdout is not None and main.stdout.readline().strip() == "ready"
        assert len(marked(marker)) >= 3  # the main process and its workers
        main.kill()
        main.wait()
        patience = 10 * process_startup_s()  # (a poll: costs nothing when they are gone)
        deadline = time.monotonic() + patience
        while marked(marker) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert not marked(marker), f"alive {patience:.0f} s after the main process was killed: {marked(marker)}"
    finally:
        main.kill()
        main.wait()
        if main.stdout is not None:
            main.stdout.close()
        for proc in marked(marker):
            proc.kill()
