"""Which device and how many cores: the one place that asks torch and the OS."""

from __future__ import annotations

import os

import torch

from .errors import TimnetError


def available_cores() -> int:
    """Cores this process may run on (the affinity mask on Linux, e.g. under a batch scheduler)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def pick_device(name: str = "auto") -> str:
    """`auto`: CUDA, then Apple MPS, then CPU; a named device is checked to exist."""
    if name != "auto":
        if name.startswith("cuda") and not torch.cuda.is_available():
            raise TimnetError(
                f"--device {name}: PyTorch sees no CUDA GPU (install a CUDA build of torch, or use --device cpu)"
            )
        if name == "mps" and not torch.backends.mps.is_available():
            raise TimnetError("--device mps: Apple Metal (MPS) is not available in this PyTorch (use --device cpu)")
        return name
    if torch.cuda.is_available():
        return "cuda"
    if torch.backends.mps.is_available():
        return "mps"
    return "cpu"
