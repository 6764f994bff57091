"""One command-line convention: ROOT, --no-progress, count validators, help texts, one error translator."""

from __future__ import annotations

import argparse
import errno
import importlib
import os
import pickle
import signal
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from flirdata import cli
from flirdata.cliargs import (
    MAX_COUNT,
    MAX_SEED,
    NON_NEGATIVE,
    POSITIVE,
    SEED,
    WORKERS,
    IntList,
    UsageError,
    resolve_root,
)
from flirdata.errors import DataError, Terminated, WorkerError

DATASET_COMMANDS = ("synth", "check", "preview", "export", "bench")
ALIASED = ("preview", "export", "bench")  # the commands that took --data ROOT before
REQUIRED = {"preview": ["--out", "p.png"], "export": ["--out", "out"]}  # options a command cannot run without


def _demo_module():
    return importlib.import_module("train_demo")  # the script next to the package (pythonpath = .)


def _parse(argv: list[str]) -> argparse.Namespace:
    """What ``flirdata`` hands to ``run_command``, without running it."""
    return resolve_root(cli.build_parser(argv).parse_args(argv))


def _command_parser(name: str) -> argparse.ArgumentParser:
    parser = cli.build_parser([name])
    return next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices[name]


def _one_line_error(capsys: pytest.CaptureFixture[str], run: Callable[[], int], code: int = 2) -> str:
    assert run() == code
    out, err = capsys.readouterr()
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    return lines[0]


# -- ROOT and --data -----------------------------------------------------------------------------
@pytest.mark.parametrize("name", DATASET_COMMANDS)
def test_every_command_takes_root_positionally(name: str, tmp_path: Path) -> None:
    args = _parse([name, str(tmp_path), *REQUIRED.get(name, [])])
    assert args.root == tmp_path and not hasattr(args, "data_alias")


@pytest.mark.parametrize("name", ALIASED)
def test_data_is_an_alias_of_root(name: str, tmp_path: Path) -> None:
    assert _parse([name, "--data", str(tmp_path), *REQUIRED.get(name, [])]).root == tmp_path
    same = _parse([name, str(tmp_path), "--data", str(tmp_path), *REQUIRED.get(name, [])])
    assert same.root == tmp_path


@pytest.mark.parametrize("name", ALIASED)
def test_two_different_roots_or_none_is_one_line(name: str, tmp_path: Path, capsys) -> None:
    argv = [name, str(tmp_path / "a"), "--data", str(tmp_path / "b"), *REQUIRED.get(name, [])]
    line = _one_line_error(capsys, lambda: cli.main(argv))
    assert line.startswith(f"flirdata {name}: error: ROOT {tmp_path / 'a'} and --data {tmp_path / 'b'}")
    line = _one_line_error(capsys, lambda: cli.main([name, *REQUIRED.get(name, [])]))
    assert line == f"flirdata {name}: error: the following arguments are required: ROOT (see --help)"


def test_preview_runs_with_root_positional(synth_root: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "grid.png"
    assert cli.main(["preview", str(synth_root), "--out", str(out), "--n", "2", "--no-progress"]) == 0
    assert out.is_file() and "wrote" in capsys.readouterr().out


# -- progress --------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", DATASET_COMMANDS)
def test_no_progress_everywhere(name: str, tmp_path: Path) -> None:
    argv = [name, str(tmp_path), *REQUIRED.get(name, [])]
    assert _parse(argv).progress is True
    assert _parse([*argv, "--no-progress"]).progress is False


def test_synth_keeps_quiet_as_an_alias() -> None:
    assert _parse(["synth", "root", "--quiet"]).progress is False


# -- counts ------------------------------------------------------------------------------------
BAD_COUNTS = [
    (["synth", "ROOT", "--val", "-1"], "argument --val: expected an integer >= 0, got '-1'"),
    (["synth", "ROOT", "--workers", "0"], "argument --workers: expected an integer >= 1, got '0'"),
    (["synth", "ROOT", "--seed", str(MAX_SEED + 1)], f"argument --seed: expected an integer <= {MAX_SEED}"),
    (["check", "ROOT", "--workers", "0"], "argument --workers: expected an integer >= 1, got '0'"),
    (["preview", "ROOT", "--out", "p.png", "--n", "0"], "argument --n: expected an integer >= 1, got '0'"),
    (["preview", "ROOT", "--out", "p.png", "--seed", "x"], "argument --seed: expected an integer >= 0, got 'x'"),
    (["export", "ROOT", "--out", "o", "--workers", "0"], "argument --workers: expected an integer >= 1, got '0'"),
    (["export", "ROOT", "--out", "o", "--copies", "0"], "argument --copies: expected an integer >= 1, got '0'"),
    (["export", "ROOT", "--out", "o", "--quality", "101"], "argument --quality: expected an integer <= 100"),
    (["export", "ROOT", "--out", "o", "--limit", "1e3"], "argument --limit: expected an integer >= 1, got '1e3'"),
    (["bench", "ROOT", "--repeats", "0"], "argument --repeats: expected an integer >= 1, got '0'"),
    (["bench", "ROOT", "--workers", "1,x"], "argument --workers: expected an integer >= 1, got 'x'"),
    (["bench", "ROOT", "--batches", str(MAX_COUNT + 1)], f"argument --batches: expected an integer <= {MAX_COUNT}"),
]


@pytest.mark.parametrize(("argv", "message"), BAD_COUNTS)
def test_bad_counts_are_one_line_and_exit_2(argv: list[str], message: str, tmp_path: Path, capsys) -> None:
    argv = [str(tmp_path / "root") if a == "ROOT" else a for a in argv]
    line = _one_line_error(capsys, lambda: cli.main(argv))
    assert line.startswith(f"flirdata {argv[0]}: error: {message}")
    assert line.endswith("(see --help)")
    assert not (tmp_path / "root").exists()


def test_validators_bound_both_ends_and_pickle() -> None:
    assert POSITIVE("1") == 1 and POSITIVE(str(MAX_COUNT)) == MAX_COUNT and NON_NEGATIVE("0") == 0
    assert SEED(str(MAX_SEED)) == MAX_SEED and WORKERS(" 2 ") == 2
    assert IntList(WORKERS)("4,1,4,2") == [4, 1, 2]
    for check, text in [
        (POSITIVE, "0"),
        (POSITIVE, "9" * 5000),
        (POSITIVE, "\u0663"),
        (NON_NEGATIVE, "-0"),
        (WORKERS, "1025"),
        (SEED, "+1"),
        (IntList(WORKERS), ","),
    ]:
        with pytest.raises(argparse.ArgumentTypeError, match="expected"):
            check(text)
    assert pickle.loads(pickle.dumps(IntList(SEED))) == IntList(SEED)


# -- the error translator ------------------------------------------------------------------------
def _raise(exc: BaseException) -> Callable[[], int]:
    def run() -> int:
        raise exc

    return run


@pytest.mark.parametrize(
    ("exc", "code", "line"),
    [
        (
            ValueError("unknown preset 'nope'\n  expected one of ['none']"),
            2,
            "x: error: unknown preset 'nope'; expected one of ['none']",
        ),
        (DataError("ROOT: dataset folder not found"), 2, "x: error: ROOT: dataset folder not found"),
        (UsageError("argument --n: bad", "flirdata preview"), 2, "flirdata preview: error: argument --n: bad"),
        (
            FileNotFoundError(errno.ENOENT, "No such file or directory", "f.json"),
            2,
            "x: error: [Errno 2] No such file or directory: 'f.json'",
        ),
        (
            OSError(errno.ENOSPC, "No space left on device", "out/a.jpg"),
            2,
            "x: error: No space left on device (out/a.jpg)",
        ),
        (WorkerError("a worker died"), 1, "x: error: a worker died"),
        (KeyboardInterrupt(), 130, "x: interrupted"),
        (KeyboardInterrupt("run it again to finish"), 130, "x: interrupted; run it again to finish"),
        (Terminated(), 143, "x: terminated (SIGTERM)"),
    ],
)
def test_translator_maps_each_failure_to_one_line(exc: BaseException, code: int, line: str, capsys) -> None:
    assert _one_line_error(capsys, lambda: cli.run_translated("x", _raise(exc)), code) == line


def _terminated_while_running(plain: bool) -> Callable[[], int]:
    def run() -> int:
        try:
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(60)  # the handler interrupts it
        except KeyboardInterrupt:
            if plain:  # what Ray's ray.get makes of any KeyboardInterrupt
                raise KeyboardInterrupt from None
            raise
        return 0

    return run


@pytest.mark.parametrize("plain", [False, True])
def test_sigterm_unwinds_as_ctrl_c_does_and_exits_143(capsys, plain: bool) -> None:
    def unhandled(signum: int, frame: object) -> None:  # without run_translated's own: fail, not kill pytest
        raise RuntimeError("SIGTERM reached the handler run_translated should have replaced")

    before = signal.signal(signal.SIGTERM, unhandled)
    try:
        line = _one_line_error(capsys, lambda: cli.run_translated("x", _terminated_while_running(plain)), 143)
        assert line == "x: terminated (SIGTERM)" and signal.getsignal(signal.SIGTERM) is unhandled
    finally:
        signal.signal(signal.SIGTERM, before)


def test_translator_lets_a_bug_raise() -> None:
    with pytest.raises(TypeError):
        cli.run_translated("x", _raise(TypeError("a bug")))


def test_library_value_error_reaches_the_user_as_one_line(synth_root: Path, tmp_path: Path, capsys) -> None:
    argv = ["preview", str(synth_root), "--out", str(tmp_path / "p.png"), "--preset", "nope"]
    line = _one_line_error(capsys, lambda: cli.main(argv))
    assert line.startswith("flirdata preview: error: ") and "'nope'" in line


def test_make_loader_value_error_is_one_line(capsys) -> None:
    from flirdata.loader import make_loader

    def run() -> int:
        make_loader([0, 1, 2], backend="threads", workers=-1)
        return 0

    line = _one_line_error(capsys, lambda: cli.run_translated("flirdata export", run))
    assert line.startswith("flirdata export: error: ") and "-1" in line


# -- help ------------------------------------------------------------------------------------------
def _defaults_documented(parser: argparse.ArgumentParser) -> None:
    for action in parser._actions:
        if action.option_strings and action.default not in (None, False, True, argparse.SUPPRESS):
            shown = ",".join(map(str, action.default)) if isinstance(action.default, list) else str(action.default)
            assert action.help and f"default: {shown}" in action.help, (action.dest, action.help)


@pytest.mark.parametrize("name", DATASET_COMMANDS)
def test_help_lists_every_default(name: str) -> None:
    _defaults_documented(_command_parser(name))


@pytest.mark.parametrize(
    ("name", "lists"), [("preview", ("presets",)), ("export", ("presets", "backends")), ("bench", ("backends",))]
)
def test_help_lists_presets_and_backends(name: str, lists: tuple[str, ...]) -> None:
    from flirdata.backends import BACKENDS
    from flirdata.transforms import PRESETS

    text = " ".join(_command_parser(name).format_help().split())
    names = {"presets": PRESETS, "backends": BACKENDS}
    for kind in lists:
        assert all(n in text for n in names[kind]), (kind, text)
    if name in ALIASED:
        assert "--data ROOT deprecated alias of ROOT" in text


# -- train_demo.py ---------------------------------------------------------------------------------
def test_train_demo_help_lists_backends_and_defaults() -> None:
    from flirdata.backends import BACKENDS

    parser = _demo_module().build_parser()
    _defaults_documented(parser)
    text = " ".join(parser.format_help().split())
    assert all(name in text for name in BACKENDS) and "deprecated alias of ROOT" in text


def test_train_demo_takes_root_positionally(tmp_path: Path, capsys) -> None:
    demo = _demo_module()
    line = _one_line_error(capsys, lambda: demo.main([str(tmp_path / "flir"), "--size", "big"]))
    assert line.startswith("train_demo.py: error: --size chooses the synthetic dataset; with ROOT (--data)")
    line = _one_line_error(capsys, lambda: demo.main([str(tmp_path / "a"), "--data", str(tmp_path / "b")]))
    assert line.startswith(f"train_demo.py: error: ROOT {tmp_path / 'a'} and --data {tmp_path / 'b'}")


@pytest.mark.parametrize(
    ("failure", "code", "line"),
    [
        (ValueError("bad value"), 2, "train_demo.py: error: bad value"),
        (WorkerError("a worker died"), 1, "train_demo.py: error: a worker died"),
        (KeyboardInterrupt(), 130, "train_demo.py: interrupted"),
    ],
)
def test_train_demo_errors_go_through_the_translator(failure, code, line, capsys, monkeypatch) -> None:
    demo = _demo_module()
    monkeypatch.setattr(demo, "_run", lambda args: _raise(failure)())
    assert _one_line_error(capsys, lambda: demo.main([]), code) == line
    # argparse's own refusals return too, instead of exiting with a usage block
    assert _one_line_error(capsys, lambda: demo.main(["--seed", "-1"])).startswith(
        "train_demo.py: error: argument --seed: expected an integer >= 0, got '-1'"
    )
