"""A training process keeps its freed buffers (`allocator`): they are reused, not faulted in again."""

from __future__ import annotations

import json
import platform
import subprocess
import sys

import pytest

SCRIPT = """
import json, resource, numpy as np
from timnet.accel.allocator import keep_freed_memory

def faults_per_step():  # as a step: 16 buffers of 3.75 MB live at once (saved for backward), then all freed
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(10):
        buffers = [np.ones((12032, 78), np.float32) for _ in range(16)]
        del buffers
    return (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) / 10

faults_per_step()
default = faults_per_step()
kept = keep_freed_memory()
faults_per_step()
print(json.dumps({"default": default, "kept": kept, "after": faults_per_step()}))
"""


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="mallopt's thresholds are glibc's")
def test_freed_buffers_are_reused_instead_of_faulted_in_again():
    out = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, check=True).stdout
    faults = json.loads(out.splitlines()[-1])
    assert faults["kept"] is True
    assert faults["default"] > 5000, faults  # ~900 fresh pages per buffer with glibc's defaults
    assert faults["after"] < 50, faults
