"""The README's own code, found by heading, for the client tier to run as users would.

``python_blocks(heading)`` are the fenced python blocks of a README section, ``commands(heading)``
its indented shell commands (``run_shell`` runs one). A test runs them in a folder where ``data``
is a small synthetic dataset (the README's snippets read ``"data"``), changed only by ``adapt``:
a table of literal replacements (fewer epochs, a smaller batch or image size; ``SHORTENED`` holds
the python sections'), each of which must occur in the README's text, so an edited README fails
here instead of running something else. Running one more section is one call (or one entry).
"""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path
from typing import Any

__all__ = ["README", "SHORTENED", "adapt", "commands", "python_blocks", "run_python", "run_shell", "section"]

README = Path(__file__).resolve().parents[2] / "README.md"

# README section -> the replacements its python code runs with in the client tier (a section left
# out runs as written). Shorter runs only: the recipe, not the training, is under test.
SHORTENED: dict[str, dict[str, str]] = {
    # two epochs of one step on a pair of images, resized by the model to 128 px instead of 800
    "torchvision (Faster R-CNN)": {
        "range(10)": "range(2)",
        "batch_size=8": "batch_size=2",
        "workers=4": "workers=2",
        "num_classes=len(ds.classes)": "num_classes=len(ds.classes), min_size=128, max_size=160",
    },
}
_HEADING = re.compile(r"^(#+) (.+)$")


def section(heading: str) -> str:
    """The README text under the heading titled ``heading`` (any level, hashes left out), up to
    the next heading of the same or a higher level; its subsections are included."""
    lines = README.read_text().splitlines()
    fenced, start, level = False, None, 0
    for k, line in enumerate(lines):
        fenced ^= line.startswith("```")
        match = None if fenced else _HEADING.match(line)
        if match is None:
            continue
        if start is not None and len(match[1]) <= level:
            return "\n".join(lines[start:k])
        if start is None and match[2].strip() == heading:
            start, level = k + 1, len(match[1])
    if start is None:
        raise LookupError(f"README.md has no heading {heading!r}")
    return "\n".join(lines[start:])


def python_blocks(heading: str) -> list[str]:
    """The fenced ```python blocks of the section, in order."""
    return re.findall(r"^```python\n(.*?)^```", section(heading), re.S | re.M)


def commands(heading: str) -> list[str]:
    """The section's indented (4-space) command lines outside fenced blocks, in order."""
    text = re.sub(r"^```.*?^```", "", section(heading), flags=re.S | re.M)
    return [line.strip() for line in text.splitlines() if line.startswith("    ") and line.strip()]


def adapt(code: str, replacements: dict[str, str]) -> str:
    """``code`` with each key of ``replacements`` replaced; every key must occur in it."""
    for old, new in replacements.items():
        if old not in code:
            raise AssertionError(f"the README's code no longer contains {old!r}:\n{code}")
        code = code.replace(old, new)
    return code


def run_python(heading: str, namespace: dict[str, Any], replacements: dict[str, str] | None = None) -> dict[str, Any]:
    """Run the section's python blocks as one program in ``namespace`` (returned), adapted by
    ``replacements`` (default: the section's entry in ``SHORTENED``)."""
    blocks = python_blocks(heading)
    assert blocks, f"README section {heading!r} shows no python code"
    code = adapt("\n".join(blocks), SHORTENED.get(heading, {}) if replacements is None else replacements)
    exec(compile(code, f"README.md ({heading})", "exec"), namespace)
    return namespace


def run_shell(command: str, timeout: float = 600) -> str:
    """Run a shell command in the working folder; its output (stdout and stderr), or a failed assert.

    The command does not see pytest's ``PYTEST_CURRENT_TEST``: Ultralytics would take it for its
    own test suite and write its runs into its installed package folder.
    """
    env = {name: value for name, value in os.environ.items() if name != "PYTEST_CURRENT_TEST"}
    done = subprocess.run(["bash", "-c", command], capture_output=True, text=True, timeout=timeout, env=env)
    output = done.stdout + done.stderr
    assert done.returncode == 0, f"{command}\nexited {done.returncode}:\n{output[-4000:]}"
    return output
