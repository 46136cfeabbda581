"""Which device and how many cores: the one place that asks torch and the OS."""

from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path

import torch

from .atomic import write_json
from .errors import TimnetError


def available_cores() -> int:
    """Cores this process may run on (the affinity mask on Linux, e.g. under a batch scheduler)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def cache_root() -> Path:
    """Where measurements of this machine are kept: $TIMNET_CACHE, else ~/.cache/timnet (XDG_CACHE_HOME respected)."""
    root = os.environ.get("TIMNET_CACHE") or Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "timnet"
    return Path(root)


def read_cache(path: Path) -> dict:
    """The measurements cached in `path` (under cache_root()); none where it is missing or unreadable."""
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def cached_on_disk(path: Path, key: str, compute):
    """`path`'s value for `key` (a cache under cache_root()), computed and added where missing, keeping what other
    processes wrote meanwhile; a read-only home keeps nothing (computed again next time)."""
    cache = read_cache(path)
    if key not in cache:
        cache[key] = compute()
        try:
            write_json(path, {**read_cache(path), key: cache[key]})
        except OSError:
            pass
    return cache[key]


def pick_device(name: str = "auto") -> str:
    """`auto`: CUDA, then Apple MPS, then CPU; a named device is checked to exist."""
    if name != "auto":
        if name.startswith("cuda") and not torch.cuda.is_available():
            raise TimnetError(
                f"--device {name}: PyTorch sees no CUDA GPU (install a CUDA build of torch, or use --device cpu)"
            )
        index = name.partition(":")[2]
        if name.startswith("cuda") and index and not (index.isdigit() and int(index) < torch.cuda.device_count()):
            raise TimnetError(f"--device {name}: this machine has CUDA GPUs 0..{torch.cuda.device_count() - 1}")
        if name == "mps" and not torch.backends.mps.is_available():
            raise TimnetError("--device mps: Apple Metal (MPS) is not available in this PyTorch (use --device cpu)")
        return name
    if torch.cuda.is_available():
        return "cuda"
    if torch.backends.mps.is_available():
        return "mps"
    return "cpu"


def device_rng_state(device: torch.device) -> torch.Tensor:
    """The state of the generator dropout draws from on `device`: CUDA's or MPS's default one, on CPU torch's
    global one."""
    if device.type == "cuda":
        return torch.cuda.get_rng_state(device)
    if device.type == "mps":
        return torch.mps.get_rng_state()
    return torch.get_rng_state()


def set_device_rng_state(device: torch.device, state: torch.Tensor) -> None:
    if device.type == "cuda":
        torch.cuda.set_rng_state(state, device)
    elif device.type == "mps":
        torch.mps.set_rng_state(state)
    else:
        torch.set_rng_state(state)


def on_device(device: torch.device | str):
    """Make `device` the current CUDA device (streams, events and graph capture bind to the current one: units on
    cuda:1 need it); nothing elsewhere."""
    device = torch.device(device)
    return torch.cuda.device(device) if device.type == "cuda" else contextlib.nullcontext()
