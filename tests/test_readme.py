"""The README's set-up commands are the ones CI runs, and its CLI reference matches the CLI."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from flirdata.cli import COMMANDS

ROOT = Path(__file__).resolve().parent.parent


def _readme_commands() -> list[str]:
    readme = (ROOT / "README.md").read_text()
    section = readme.split("## Set-up on a fresh machine", 1)[1].split("\n## ", 1)[0]
    return [line.strip() for line in section.splitlines() if line.startswith("    ")]


def test_readme_gives_exactly_two_setup_commands() -> None:
    commands = _readme_commands()
    assert len(commands) == 2
    assert all(c.startswith("pip install torch==2.13.0 && pip install -e ") for c in commands)


def test_ci_runs_the_readme_test_command() -> None:
    test_command = _readme_commands()[1]
    assert "pytest" in test_command
    ci_lines = [line.strip() for line in (ROOT / ".ci" / "run").read_text().splitlines()]
    assert test_command in ci_lines


def test_readme_documents_every_subcommand() -> None:
    readme = (ROOT / "README.md").read_text()
    for name in COMMANDS:
        assert re.search(rf"`flirdata {name}\b", readme), name


@pytest.mark.slow
def test_public_api_is_lazy_and_complete() -> None:
    import subprocess
    import sys

    code = (
        "import sys, flirdata as fd; assert 'torch' not in sys.modules;"
        "assert sorted(fd.__all__) == sorted(fd._EXPORTS);"
        "missing = [n for n in fd.__all__ if getattr(fd, n, None) is None]; assert not missing, missing"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def _command_rows() -> dict[str, str]:
    """The command table of the README's "Command line" section: first column by command name."""
    section = (ROOT / "README.md").read_text().split("## Command line", 1)[1].split("\n## ", 1)[0]
    cells = [line.split("`")[1] for line in section.splitlines() if line.startswith("| `")]
    return {cell.split()[1]: cell for cell in cells}


def test_readme_command_table_follows_the_cli() -> None:
    import argparse

    from flirdata.cli import build_parser

    rows = _command_rows()
    assert set(COMMANDS) | {"train_demo.py"} == set(rows)
    for name in COMMANDS:
        assert rows[name].startswith(f"flirdata {name} ROOT "), rows[name]
        sub = next(a for a in build_parser([name])._actions if isinstance(a, argparse._SubParsersAction))
        known = {option for action in sub.choices[name]._actions for option in action.option_strings}
        assert set(re.findall(r"--[a-z-]+", rows[name])) <= known, name
    assert rows["train_demo.py"].startswith("python train_demo.py [ROOT] ")
    section = (ROOT / "README.md").read_text().split("## Command line", 1)[1]
    assert "`--data ROOT`" in section and "deprecated alias" in section and "`--no-progress`" in section


def _flat(text: str) -> str:
    """Whitespace folded to single spaces: README and argparse wrap lines differently."""
    return " ".join(text.split())


def test_the_main_job_run_time_is_the_same_in_readme_and_help() -> None:
    from demo_cli import RUN_TIME, build_parser

    readme = _flat((ROOT / "README.md").read_text())
    assert _flat(RUN_TIME) in _flat(build_parser().format_help())
    assert f"({_flat(RUN_TIME)})" in readme
    # no other figure for it: every "minute" of the README's set-up section is this one
    setup = _flat((ROOT / "README.md").read_text().split("## Set-up on a fresh machine", 1)[1].split("\n## ", 1)[0])
    assert setup.count("minute") == _flat(RUN_TIME).count("minute")


def _python_blocks(readme: str) -> list[tuple[int, str]]:
    """(offset, code) of every python block of the README."""
    return [(m.start(), m.group(1)) for m in re.finditer(r"```python\n(.*?)```", readme, re.S)]


def test_every_snippets_dataset_comes_from_a_command_shown_before_it() -> None:
    readme = (ROOT / "README.md").read_text()
    shown = [(m.start(), m.group(1), m.group(2)) for m in re.finditer(r"^    flirdata synth (\S+)(.*)$", readme, re.M)]
    reads = [
        (offset, root, split)
        for offset, code in _python_blocks(readme)
        for root, split in re.findall(r'FlirDetection\("([^"]+)", split="([^"]+)"', code)
    ]
    assert {root for _, root, _ in reads} == {"data"} and len(reads) >= 3
    for offset, root, split in reads:
        before = [options for at, folder, options in shown if at < offset and folder == root]
        assert before, f"the snippet reading {root!r} at offset {offset} has no `flirdata synth {root}` before it"
        if split.startswith("rgb"):
            assert any("--rgb" in options for options in before), f"{split}: no `flirdata synth {root} --rgb`"
