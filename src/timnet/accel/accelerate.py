"""The one call that makes a unit's model fast: `accelerate(model, blas=..., kernel=..., recompute=...)`.

Each fast path takes the place of part of the reference model only where `check.difference` shows it computes
the same as the reference does, for this model; otherwise it steps aside with one line (a `FastPathDeclined`
warning naming the path, the reason, and what runs instead) and that part runs as `model/network.py` defines it:

- GEMM convolutions (`gemm_conv`): every reference `CausalConv1d`, its products through torch's or numpy's BLAS;
- the CPU kernel (`cpu_kernel`, through `fast_model.AcceleratedTIMNet`): the reference temporal-aware blocks and
  their levels' pooling, numba loops around numpy's products;
- recomputation (`recompute`): each block's activations computed again in backward instead of kept.

Packed units (`packed_model`, and their captured steps: `capture`) are checked by `packed_model.pack_declines`.
"""

from __future__ import annotations

import functools
import warnings
from dataclasses import dataclass, field
from typing import Callable

import torch
from torch import nn

from ..model.network import CausalConv1d, TIMNet
from . import cpu_kernel
from .check import difference, equal, in_place, layer_difference
from .code_key import plain_subclass
from .fast_model import AcceleratedTIMNet
from .gemm_conv import GemmCausalConv1d, conv_declines


class FastPathDeclined(UserWarning):
    """A fast path stepped aside for this model: the reference runs instead (the message says why)."""


@dataclass
class Acceleration:
    """What runs faster than the reference in a model after `accelerate`, and what stepped aside."""

    blas: str = "reference"  # the convolutions' products: torch | numpy (GEMM), or reference (as defined)
    kernel: bool = False
    recompute: bool = False
    declined: list[str] = field(default_factory=list)


def reference(model: nn.Module) -> nn.Module:
    """The model as it was defined again (in place): every fast path taken out, each layer its own class again."""
    for m in model.modules():
        if type(m) is GemmCausalConv1d:
            m.__class__ = m.__dict__.pop("_defined_as", CausalConv1d)
            m.__dict__.pop("blas", None)
        elif type(m) is AcceleratedTIMNet:
            m.__class__ = m.__dict__.pop("_defined_as", TIMNet)
            for name in ("kernel", "recompute"):
                m.__dict__.pop(name, None)
    return model


def _swap(m: nn.Module, fast: type) -> None:
    """`m` runs as `fast` (which computes what its own class does), and `reference` gives it its class back."""
    m.__dict__["_defined_as"] = type(m)
    m.__class__ = fast


def _as_defined(model: nn.Module) -> None:
    """No GEMM convolutions: they declined."""


def _gemm(model: nn.Module, blas: str) -> None:
    for m in model.modules():
        if plain_subclass(type(m), CausalConv1d) and conv_declines(m) is None:
            _swap(m, GemmCausalConv1d)
            m.blas = blas


def _levels(model: nn.Module, kernel: bool, recompute: bool) -> None:
    _swap(model, AcceleratedTIMNet)
    model.kernel, model.recompute = kernel, recompute


def _decline(path: str, reason: str, instead: str) -> str:
    line = f"timnet: {path} steps aside: {reason}; {instead}"
    warnings.warn(line, FastPathDeclined, stacklevel=3)
    return line


def accelerate(
    model: TIMNet, blas: str = "torch", kernel: bool = False, recompute: bool | Callable[[bool], bool] = False
) -> Acceleration:
    """Make `model` (a reference TIM-Net, on its device) train faster in place, path by path, each only where it
    equals the reference (module doc). `recompute` may depend on whether the kernel runs: a callable given that.
    Returns what runs."""
    reference(model)
    device = next(model.parameters()).device
    done = Acceleration()
    if reason := _gemm_declines(model, blas, device):
        done.declined.append(_decline("the GEMM convolution", reason, "the convolutions run as defined"))
    gemm = functools.partial(_gemm, blas=blas) if reason is None else _as_defined
    kernel = kernel and device.type == "cpu" and _levels_decline(model, "the CPU kernel", done) is None
    if kernel and (reason := _kernel_declines(model) or _differs(model, gemm, blas, True, recompute, device)):
        done.declined.append(_decline("the CPU kernel", reason, "the blocks train op by op as defined"))
        kernel = False
    recompute = recompute(kernel) if callable(recompute) else recompute
    if recompute and _levels_decline(model, "recomputation", done) is None:
        if reason := _differs(model, gemm, blas, kernel, recompute, device):
            done.declined.append(_decline("recomputation", reason, "the blocks keep their activations"))
            recompute = False
    recompute = recompute and plain_subclass(type(model), TIMNet)
    gemm(model)
    done.blas = blas if any(type(m) is GemmCausalConv1d for m in model.modules()) else "reference"
    if kernel or recompute:
        _levels(model, kernel, recompute)
    done.kernel, done.recompute = kernel, recompute
    return done


def _levels_decline(model: nn.Module, path: str, done: Acceleration) -> str | None:
    """The kernel and recomputation replace `TIMNet.levels` (`AcceleratedTIMNet`): the reference class only (or a
    subclass that overrides nothing)."""
    if plain_subclass(type(model), TIMNet):
        return None
    reason = f"{type(model).__name__} is not the reference TIMNet"
    done.declined.append(_decline(path, reason, "the model runs as defined"))
    return reason


def _differs(model: TIMNet, gemm: Callable, blas: str, kernel: bool, recompute, device: torch.device) -> str | None:
    """Why `AcceleratedTIMNet` with these paths (and the GEMM convolutions where they run) is not the reference."""
    recompute = recompute(kernel) if callable(recompute) else recompute
    key = (blas, kernel, recompute, gemm is _as_defined)
    diff = difference(model, in_place(lambda m: (gemm(m), _levels(m, kernel, recompute))), device, key)
    return None if equal(diff, device) else f"it computes {diff:.1e} away from the reference (relative)"


def _gemm_declines(model: TIMNet, blas: str, device: torch.device) -> str | None:
    """Why the GEMM convolution cannot stand in for the model's causal convs: checked on each conv alone, keyed by
    the conv's own code and settings (an edit elsewhere in the block leaves its verdict as it is)."""
    convs = [m for m in model.modules() if isinstance(m, CausalConv1d)]
    if reason := next((r for m in convs if (r := conv_declines(m))), None):
        return reason
    for conv in convs:
        diff = layer_difference(conv, lambda m: _gemm(m, blas), device, ("gemm", blas))
        if not equal(diff, device):
            return f"its output differs from {type(conv).__name__}.forward's ({diff:.1e} relative)"
    return None


def _kernel_declines(model: TIMNet) -> str | None:
    blocks = [*getattr(model, "forward_blocks", []), *getattr(model, "backward_blocks", [])]
    if not blocks:
        return "the model has no temporal-aware blocks"
    return next((r for b in blocks if (r := cpu_kernel.block_declines(b))), None)


def runs_as_defined(model: nn.Module) -> bool:
    """Whether no fast path is in the model (an exported or loaded model)."""
    return not any(type(m) in (GemmCausalConv1d, AcceleratedTIMNet) for m in model.modules())
