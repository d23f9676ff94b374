"""Facts about the machine a test needs, and how a test says it lacks one."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest


def _find_python_313() -> str | None:
    """A Python 3.13 interpreter that runs (pyenv's shims exist even where 3.13 is not the selected version)."""
    candidates = [*map(str, sorted(Path.home().glob(".pyenv/versions/3.13*/bin/python3.13"))), shutil.which("python3.13")]
    for candidate in filter(None, candidates):
        if subprocess.run([candidate, "-c", "import venv"], capture_output=True).returncode == 0:
            return candidate
    return None


#: Colab's Python, where this machine has it (pyenv on the course's CI machines)
PYTHON_313 = _find_python_313()


def needs(condition: bool, message: str) -> None:
    """Skip where a learner's machine lacks what this check needs; in CI, which has it, fail instead."""
    if not condition:
        pytest.fail(message) if os.environ.get("CI") else pytest.skip(message)
