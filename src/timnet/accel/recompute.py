"""Activation checkpointing of TIM-Net's blocks (`train.recompute`): keep only each block's input for backward and
compute the rest again there. The same numbers (dropout replays its RNG state, BatchNorm's running statistics are
put back after the second pass), about a third more compute, much less memory on long utterances."""

from __future__ import annotations

import contextlib
from typing import Callable

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from ..core.config import Config

# `train.recompute = "auto"` recomputes when a batch's saved activations would exceed this: IEMOCAP's long
# utterances op by op (GPUs; one unit on 2+ CPU threads), not EMO-DB's or SAVEE's, nor IEMOCAP through the CPU
# kernel, which saves fewer arrays (benchmarks/results/design_measurements.md).
RECOMPUTE_ABOVE_BYTES = 1e9


def should_recompute(setting: str, cfg: Config, batch_size: int, kernel: bool = False) -> bool:
    """`on`, `off`, or `auto`: recompute block activations in backward where a batch's saved activations would
    pass RECOMPUTE_ABOVE_BYTES: per block about 9 tensors of [B, T, C] floats op by op, 5 through the CPU kernel
    (`kernel`); 2 x levels blocks."""
    if setting == "auto":
        per_block = (5 if kernel else 9) * batch_size * cfg.features.frames * cfg.model.filters * 4
        return per_block * 2 * cfg.model.levels > RECOMPUTE_ABOVE_BYTES
    return setting == "on"


@contextlib.contextmanager
def _statistics_frozen(block: nn.Module):
    """While a block is recomputed for backward, BatchNorm's running statistics are updated a second time:
    put back what the forward pass left (through `.data`, which autograd's saved tensors do not track)."""
    norms = [m for m in block.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats]
    kept = [(bn.running_mean.clone(), bn.running_var.clone(), bn.num_batches_tracked.clone()) for bn in norms]
    try:
        yield
    finally:
        for bn, (mean, var, count) in zip(norms, kept):
            bn.running_mean.data.copy_(mean)
            bn.running_var.data.copy_(var)
            bn.num_batches_tracked.data.copy_(count)


def recomputed(forward: Callable, block: nn.Module, x: torch.Tensor):
    """forward(block, x), keeping only x for backward."""
    contexts = lambda: (contextlib.nullcontext(), _statistics_frozen(block))  # noqa: E731
    return checkpoint(forward, block, x, use_reentrant=False, context_fn=contexts)
