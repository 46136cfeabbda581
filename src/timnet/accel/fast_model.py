"""`TIMNet.levels` with the CPU kernel's blocks and/or recomputed blocks: `AcceleratedTIMNet`, the same module,
parameters and state dict as the reference model with another `levels`. `accelerate` uses it only after
`accel.check` has shown it equal to the reference's `levels` for this very model (so a changed `levels`, or a
changed block, is never trained through it)."""

from __future__ import annotations

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
        """[B, T, F] MFCCs -> [B, C, L], as `TIMNet.levels`."""
        fwd = self.forward_in(x)  # [B, T, C]
        bwd = self.backward_in(x.flip(1))  # [B, T, C], time reversed
        blocks = [*self.forward_blocks, *self.backward_blocks]
        kernel = self.kernel and all(cpu_kernel.runs_on(b, fwd) for b in blocks)
        run = cpu_kernel.run if kernel else _as_defined
        C = fwd.shape[-1]
        if kernel:  # the kernel's channels, padded with zeros once for all levels: [B, T, W]
            fwd, bwd = (F.pad(h, (0, cpu_kernel.width(C) - C)) for h in (fwd, bwd))
        pooled = []
        for f_block, b_block in zip(self.forward_blocks, self.backward_blocks):
            if self.recompute and self.training:
                (fwd, f_mean), (bwd, b_mean) = recomputed(run, f_block, fwd), recomputed(run, b_block, bwd)
            else:
                (fwd, f_mean), (bwd, b_mean) = run(f_block, fwd), run(b_block, bwd)
            if kernel:  # the kernel's own means: no [B, T, C] sum, and backward adds no broadcast gradient
                pooled.append((f_mean + b_mean)[:, :C])
            else:
                pooled.append((fwd + bwd).mean(dim=1))  # [B, C]
        return torch.stack(pooled, dim=-1)  # [B, C, L]
