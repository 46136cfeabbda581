"""`TIMNet.levels` with the CPU kernel's blocks and/or recomputed blocks: `AcceleratedTIMNet`, the same module,
parameters and state dict as the reference model with another `levels`. `accelerate` uses it only after
`accel.check` has shown it equal to the reference's `levels` for this very model (so a changed `levels`, or a
changed block, is never trained through it)."""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F

from ..model.network import TIMNet
from . import cpu_kernel
from .recompute import recomputed


def _as_defined(block: torch.nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, None]:
    return block(x), None


class AcceleratedTIMNet(TIMNet):
    """The reference TIM-Net whose levels run through the CPU kernel (`kernel`: CPU tensors in training, or in
    evaluation without autograd; any other input runs the blocks as defined) and/or keep only each block's input
    for backward (`recompute`, in training)."""

    kernel = False
    recompute = False

    def levels(self, x: torch.Tensor) -> torch.Tensor:
        """[B, T, F] MFCCs -> [B, C, L], as `TIMNet.levels` (both directions, or the forward one)."""
        streams = [self.forward_in(x)]  # [B, T, C] per direction
        chains = [self.forward_blocks]
        if self.backward_in is not None:
            streams.append(self.backward_in(x.flip(1)))  # time reversed
            chains.append(self.backward_blocks)
        kernel = self.kernel and all(cpu_kernel.runs_on(b, streams[0]) for chain in chains for b in chain)
        forward = cpu_kernel.block_forward if kernel else _as_defined
        C = streams[0].shape[-1]
        if kernel:  # the kernel's channels, padded with zeros once for all levels: [B, T, W]
            streams = [F.pad(h, (0, cpu_kernel.width(C) - C)) for h in streams]
        pooled = []
        for level in range(len(self.forward_blocks)):
            means = []
            for i, chain in enumerate(chains):
                if self.recompute and self.training:
                    streams[i], mean = recomputed(forward, chain[level], streams[i])
                else:
                    streams[i], mean = forward(chain[level], streams[i])
                means.append(mean)
            if kernel:  # the kernel's own means: no [B, T, C] sum, and backward adds no broadcast gradient
                pooled.append(functools.reduce(torch.add, means)[:, :C])
            else:
                pooled.append(functools.reduce(torch.add, streams).mean(dim=1))  # [B, C]
        return torch.stack(pooled, dim=-1)  # [B, C, L]
