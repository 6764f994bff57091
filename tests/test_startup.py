"""Start-up: parsing a command line (``--help``, a usage error) imports no torch, OpenCV or albumentations.

The quick tests re-import the command line with those packages blocked (``None`` in
``sys.modules``, which makes ``import torch`` fail), the slow one runs each command line in a
fresh interpreter and lists what it imported. Both cover every subcommand in ``COMMANDS``, so a
new one is held to the same rule.
"""

from __future__ import annotations

import contextlib
import importlib
import io
import os
import subprocess
import sys
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import pytest

from flirdata.cli import COMMANDS

ROOT = Path(__file__).resolve().parent.parent
HEAVY = ("torch", "cv2", "albumentations")
# Not forbidden, but none of them is needed to parse either: the slow test lists them too.
AVOIDABLE = ("joblib", "matplotlib", "ray", "simplejpeg", "numpy")
# (argv, exit status): every --help, and a usage error of each kind the parsers raise.
ARGVS: list[tuple[list[str], int]] = [
    (["--help"], 0),
    *(([name, "--help"], 0) for name in COMMANDS),
    (["nope"], 2),  # unknown command
    (["synth"], 2),  # missing ROOT
    (["export", "ROOT", "--out", "OUT", "--bogus"], 2),  # unknown option
    (["export", "ROOT", "--out", "OUT", "--backend", "nope"], 2),  # not one of the choices
    (["check", "ROOT", "--workers", "0"], 2),  # out of range
    (["bench", "ROOT", "--workers", "1,x"], 2),
    (["preview", "ROOT", "--out", "grid.gif"], 2),
]
DEMO_ARGVS: list[tuple[list[str], int]] = [(["--help"], 0), (["--workers", "0"], 2), (["--backend", "nope"], 2)]


def _argv_id(case: tuple[list[str], int]) -> str:
    return " ".join(case[0])


def _exit_status(run: Callable[[], int | None]) -> int:
    """What a command line exits with, its output swallowed (``--help`` exits through SystemExit)."""
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        try:
            return int(run() or 0)
        except SystemExit as exc:
            return int(exc.code or 0)


def _is_ours(name: str) -> bool:
    return name.split(".")[0] in {"flirdata", "train_demo", "demo_cli"}


@contextlib.contextmanager
def _blocked(packages: Sequence[str]) -> Iterator[None]:
    """Forget flirdata's modules and make importing ``packages`` fail, then put everything back.

    Only ``flirdata.errors`` is kept, so that the error classes stay the ones the rest of the
    session catches. ``packages``' submodules are forgotten too: ``from torch.utils.data import
    Dataset`` would find a cached submodule without looking at ``torch``. On exit ``sys.modules``
    and our packages' submodule attributes are restored.
    """
    saved = dict(sys.modules)
    try:
        for name in [n for n in sys.modules if _is_ours(n) and n != "flirdata.errors"]:
            del sys.modules[name]
        for name in [n for n in sys.modules if n.split(".")[0] in packages]:
            del sys.modules[name]
        sys.modules.update(dict.fromkeys(packages))
        yield
    finally:
        for name in [n for n in sys.modules if n not in saved]:  # what the block imported afresh
            del sys.modules[name]
        sys.modules.update(saved)
        for name, module in saved.items():  # re-imports rebound submodule attributes of our packages
            parent, _, child = name.rpartition(".")
            if _is_ours(name) and parent in saved:
                setattr(saved[parent], child, module)


@pytest.mark.parametrize("case", ARGVS, ids=_argv_id)
def test_flirdata_parses_without_heavy_imports(case: tuple[list[str], int]) -> None:
    argv, status = case
    with _blocked(HEAVY):
        cli = importlib.import_module("flirdata.cli")
        assert _exit_status(lambda: cli.main(argv)) == status


@pytest.mark.parametrize("case", DEMO_ARGVS, ids=_argv_id)
def test_train_demo_parses_without_heavy_imports(case: tuple[list[str], int]) -> None:
    argv, status = case
    with _blocked(HEAVY):
        demo = importlib.import_module("train_demo")
        assert _exit_status(lambda: demo.main(argv)) == status


def test_blocking_is_seen_by_a_heavy_import() -> None:
    """The quick tests above can fail: under the block, importing a tool's module raises."""
    with _blocked(HEAVY), pytest.raises(ImportError, match="torch|cv2|albumentations"):
        importlib.import_module("flirdata.tools.check")
    assert importlib.import_module("flirdata.tools.check").run_command  # and it is back afterwards


def test_light_names_are_the_registries() -> None:
    """The parsers' lists of names are exactly the registries' keys, in their order."""
    import flirdata
    from flirdata import images, names, synth
    from flirdata.tools import export

    assert names.BACKEND_NAMES == tuple(flirdata.BACKENDS)
    assert names.PRESET_NAMES == tuple(flirdata.PRESETS)
    assert images.MODALITIES is names.MODALITIES
    assert synth.SIZES is names.SIZES
    assert flirdata.SPLITS is names.SPLITS
    assert export.FORMATS is names.EXPORT_FORMATS


def _imported_by(code: str) -> list[str]:
    """The heavy and avoidable top-level packages a fresh interpreter has after running ``code``."""
    watched = {*HEAVY, *AVOIDABLE}
    script = (
        "import contextlib, io, sys\n"
        "with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):\n"
        "    try:\n"
        f"        {code}\n"
        "    except SystemExit:\n"
        "        pass\n"
        f"print(sorted(m for m in sys.modules if m.split('.')[0] in {sorted(watched)!r} and '.' not in m))\n"
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run(
        [sys.executable, "-c", script], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120, check=True
    )
    return eval(done.stdout.strip().splitlines()[-1])  # a list literal printed by the script above


@pytest.mark.slow
def test_every_command_line_parses_in_a_fresh_interpreter_without_heavy_imports() -> None:
    codes = [f"import flirdata.cli; flirdata.cli.main({argv!r})" for argv, _ in ARGVS]
    codes += [f"import train_demo; train_demo.main({argv!r})" for argv, _ in DEMO_ARGVS]
    codes.append("import flirdata")
    found = {code: _imported_by(code) for code in codes}
    assert {code: mods for code, mods in found.items() if mods} == {}
    # and the check itself sees an import: the dataset, which every loading command runs, imports torch
    assert "torch" in _imported_by("import flirdata.dataset")


@pytest.mark.slow
def test_synth_and_check_run_without_torch(synth_root: Path, tmp_path: Path) -> None:
    """A command imports what it needs: writing and scanning images needs OpenCV, not torch."""
    synth = ["synth", str(tmp_path / "flir"), "--size", "4", "--val", "1", "--no-progress"]
    check = ["check", str(synth_root), "--no-progress"]
    for argv in (synth, check):
        imported = _imported_by(f"import flirdata.cli; flirdata.cli.main({argv!r})")
        assert "cv2" in imported and not {"torch", "albumentations"} & set(imported), (argv, imported)


def test_the_dataset_loads_no_backend_and_no_joblib() -> None:
    """``import flirdata.dataset`` (its frame cache's shared memory included) needs no backend: with every
    ``flirdata.backends`` module and joblib unimportable, it imports."""
    with _blocked(("joblib",)):
        sys.modules["flirdata.backends"] = None  # type: ignore[assignment]  # so any backend module fails too
        dataset = importlib.import_module("flirdata.dataset")
        assert dataset.FlirDetection.__module__ == "flirdata.dataset"
