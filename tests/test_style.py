"""Style does not drift: ruff (configured in pyproject.toml) finds nothing, and the code is ruff-formatted."""

from __future__ import annotations

import shutil
import subprocess
import sys

import pytest
from conftest import REPO


def ruff(*args: str) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "ruff"] if shutil.which("ruff") is None else ["ruff"]
    return subprocess.run([*command, *args], cwd=REPO, capture_output=True, text=True)


@pytest.mark.skipif(
    subprocess.run([sys.executable, "-m", "ruff", "--version"], capture_output=True).returncode,
    reason="ruff is not installed (it is in requirements.txt)",
)
def test_ruff_check_and_format_find_nothing():
    check = ruff("check", ".")
    assert check.returncode == 0, check.stdout[-3000:]
    form = ruff("format", "--check", ".")
    assert form.returncode == 0, f"run `ruff format .`:\n{form.stdout[-3000:]}"
