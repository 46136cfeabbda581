"""A fast path earns its place by computing what the reference computes, for the model at hand.

`difference(reference, fast)` runs a float64 copy of both (float32 where the device has no float64) on a few short
random utterances, from the same RNG state (so dropout drops the same channels): one training pass with its
backward, the running statistics it leaves, then an evaluation without autograd. It returns the largest relative
difference between the logits, every parameter's gradient (a parameter the fast path leaves without a gradient
counts as infinitely different), the buffers, and the evaluation's logits. Rounding gives ~1e-15; a changed layer
gives ~1e-5 or more. Results are kept under what they depend on (`signature`: the code the forward reaches, read
from memory each time, the model's structure and settings, the machine): per process, and on disk (`cache_file`),
so each worker process does not run the same check again, and an edit in a notebook is checked anew.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import math
from pathlib import Path
from typing import Callable

import torch
from torch import nn

from ..core.devices import cache_root, cached_on_disk
from .code_key import machine, model_code, model_settings

TOLERANCE = {torch.float64: 1e-9, torch.float32: 1e-4}
SHAPE = (4, 24)  # utterances, frames: longer than the first dilations, shorter than the last (both cases run)
_known: dict = {}


def signature(model: nn.Module, *extra) -> str:
    """What the answer depends on, as it stands now (`code_key`): the code the model's forward reaches, its
    layers' classes, settings and parameters, `extra` (the path, the device), the machine, and the fast paths'
    own code. A `__code__` edited in place, a patched helper or a changed dropout rate is a new signature."""
    text = repr((model_code(model), model_settings(model), extra, machine(), _fast_paths_code()))
    return hashlib.sha256(text.encode()).hexdigest()


def cache_file() -> Path:
    return cache_root() / "fast_paths.json"


def _fast_paths_code() -> str:
    """The SHA-256 of every module of this package, read now: a fast path's code changed, its checks run again."""
    folder = Path(__file__).parent
    return hashlib.sha256(b"".join(p.read_bytes() for p in sorted(folder.glob("*.py")))).hexdigest()


def float_type(device: torch.device) -> torch.dtype:
    return torch.float32 if device.type == "mps" else torch.float64


@contextlib.contextmanager
def seeded(device: torch.device, seed: int = 0):
    """torch's RNG seeded for a check, and restored after it (training's own draws are left as they were)."""
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else [], device_type=device.type):
        torch.manual_seed(seed)
        yield


def loss_weights(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """[K]: the check's loss is sum(logits * weights), which reaches every class's logit differently."""
    return torch.linspace(-1, 1, model.config.n_classes, dtype=x.dtype, device=x.device)


def passes(model: nn.Module, x: torch.Tensor) -> list[torch.Tensor | None]:
    """[training logits, each parameter's gradient, each buffer after it, evaluation logits] of `model` on x, the
    training pass from a seeded RNG."""
    model.train()
    with seeded(x.device):
        logits = model(x)
        (logits * loss_weights(model, x)).sum().backward()
    grads = [p.grad for p in model.parameters()]
    buffers = [b.detach().clone() for b in model.buffers()]
    model.eval()
    with torch.no_grad():
        evaluated = model(x)
    return [logits.detach(), *grads, *buffers, evaluated]


def largest_difference(expected: list, got: list) -> float:
    """max over tensors of max |a - b| / max(max |a|, 1e-3); inf where one is missing or shapes differ."""
    worst = 0.0
    for a, b in zip(expected, got, strict=True):
        if a is None and b is None:
            continue
        if a is None or b is None or a.shape != b.shape:
            return math.inf
        scale = max(a.abs().max().item(), 1e-3) if a.numel() else 1.0
        diff = (a.double() - b.double()).abs().max().item() if a.numel() else 0.0
        worst = max(worst, math.inf if math.isnan(diff) else diff / scale)
    return worst


def probe(model: nn.Module, device: torch.device) -> tuple[nn.Module, torch.Tensor]:
    """A float64 (or float32) copy of `model` on `device`, and random MFCCs [B, T, F] for it."""
    dtype = float_type(device)
    clone = copy.deepcopy(model).to(device=device, dtype=dtype)
    draw = torch.Generator().manual_seed(1)
    x = torch.randn(*SHAPE, model.config.n_mfcc, generator=draw, dtype=torch.float64).to(device=device, dtype=dtype)
    return clone, x


def in_place(make_fast: Callable[[nn.Module], object]) -> Callable:
    """The `passes` of a copy made fast in place by `make_fast(copy)`."""
    return lambda model, x: (make_fast(model), passes(model, x))[1]


def difference(model: nn.Module, fast: Callable, device: torch.device, key=()) -> float:
    """How far `fast(copy, x)` (the `passes` list of a fast path run on a copy of `model`) is from the reference
    `model`'s `passes`: `largest_difference`, cached per (`signature`, key)."""

    def compute() -> float:
        reference, x = probe(model, device)
        return largest_difference(passes(reference, x), fast(probe(model, device)[0], x))

    return cached(signature(model, device.type, *key), compute)


def layer_difference(layer: nn.Module, fast: Callable[[nn.Module], object], device: torch.device, key=()) -> float:
    """How far `layer` made fast in place by `fast(copy)` is from `layer` (channels-last [B, T, C] in and out):
    the output, and the gradients of the input and of every parameter, with the input's gradient wanted and not;
    `largest_difference`, cached per (`signature` of the layer alone, key)."""

    def run(module: nn.Module, x: torch.Tensor, grad_x: bool) -> list:
        x = x.clone().requires_grad_(grad_x)
        y = module(x)
        (y * torch.linspace(-1, 1, y.shape[-1], dtype=y.dtype, device=y.device)).sum().backward()
        return [y.detach(), x.grad, *(p.grad for p in module.parameters())]

    def compute() -> float:
        dtype = float_type(device)
        draw = torch.Generator().manual_seed(1)
        x = torch.randn(*SHAPE, layer.in_channels, generator=draw, dtype=torch.float64).to(device=device, dtype=dtype)
        worst = 0.0
        for grad_x in (True, False):
            reference, made = (copy.deepcopy(layer).to(device=device, dtype=dtype) for _ in range(2))
            fast(made)
            worst = max(worst, largest_difference(run(reference, x, grad_x), run(made, x, grad_x)))
        return worst

    return cached(signature(layer, device.type, *key), compute)


def cached(sig: str, compute: Callable[[], float]) -> float:
    """compute() for `sig` (a `signature`), kept per process and on disk (`cache_file`)."""
    if sig not in _known:
        _known[sig] = cached_on_disk(cache_file(), sig, compute)
    return _known[sig]


def equal(diff: float, device: torch.device) -> bool:
    return diff <= TOLERANCE[float_type(device)]
