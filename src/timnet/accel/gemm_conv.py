"""The causal convolution as GEMMs on channels-last tensors, with a hand-written backward: a faster
`model.network.CausalConv1d` on the CPU and GPUs, whose products run through torch's or numpy's BLAS (`blas`).

`accelerate` puts it in place of the reference forward (`GemmCausalConv1d`: the same module, parameters and
state dict, another forward) only after `check.layer_difference` shows the two equal on that very layer (its
verdict keyed by the conv's own code and settings: `check.signature`).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..model.network import CausalConv1d
from .blas import matmul
from .code_key import plain_subclass


class _CausalConvGEMM(torch.autograd.Function):
    """Causal dilated conv on channels-last [B, T, C] as one GEMM per tap, with a hand-written backward.

    y[t] = b + sum_j W_j x[t - (k-1-j) d]. The older taps accumulate in place into the shifted output view
    (`baddbmm_`), so no [B, T, C] temporary is made. Faster than Conv1d where oneDNN runs TIM-Net's 39 channels x
    2 taps far below GEMM speed (benchmarks/bench_model.py measures both on a machine).
    """

    @staticmethod
    def forward(
        ctx, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, dilation: int, blas: str = "torch"
    ) -> torch.Tensor:
        B, T, c_in = x.shape
        k = weight.shape[-1]
        x = x.contiguous()
        taps = weight.permute(2, 0, 1).contiguous()  # [k, C_out, C_in]: taps[j] = W_j
        if blas == "torch":
            y = torch.addmm(bias, x.view(B * T, c_in), taps[k - 1].t()).view(B, T, -1)  # current frame: [B, T, C_out]
        else:  # numpy's BLAS (`blas`): the product, then the bias
            y = matmul(x.view(B * T, c_in), taps[k - 1].t(), blas).view(B, T, -1).add_(bias)
        for j in range(k - 1):
            shift = (k - 1 - j) * dilation
            if shift >= T:  # taps further back than the sequence see only causal zero padding
                continue
            if blas == "torch":
                y[:, shift:].baddbmm_(x[:, :-shift], taps[j].t().expand(B, -1, -1))  # in place: no temporary
            else:
                y[:, shift:] += matmul(x.view(B * T, c_in), taps[j].t(), blas).view(B, T, -1)[:, :-shift]
        ctx.save_for_backward(x, taps)
        ctx.dilation, ctx.blas = dilation, blas
        return y

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad: torch.Tensor):
        x, taps = ctx.saved_tensors
        B, T, c_in = x.shape
        k = taps.shape[0]
        g = grad.contiguous()  # [B, T, C_out]
        gf = g.view(B * T, -1)
        blas = ctx.blas
        # the input convolutions' x is the MFCCs: no gradient wanted, two products a step saved
        grad_x = matmul(gf, taps[k - 1], blas).view(B, T, c_in) if ctx.needs_input_grad[0] else None  # [B, T, C_in]
        grad_w = torch.empty(k, *taps.shape[1:], dtype=taps.dtype, device=taps.device)  # [k, C_out, C_in]
        matmul(gf.t(), x.view(B * T, c_in), blas, out=grad_w[k - 1])
        for j in range(k - 1):
            shift = (k - 1 - j) * ctx.dilation
            if shift >= T:
                grad_w[j] = 0
                continue
            if grad_x is not None:  # x[t] reached y[t + shift]
                if blas == "torch":
                    grad_x[:, :-shift].baddbmm_(g[:, shift:], taps[j].expand(B, -1, -1))
                else:
                    grad_x[:, :-shift] += matmul(gf, taps[j], blas).view(B, T, c_in)[:, shift:]
            delayed = F.pad(x[:, :-shift], (0, 0, shift, 0))  # x[t - shift], zeros before the start
            matmul(gf.t(), delayed.view(B * T, c_in), blas, out=grad_w[j])
        return grad_x, grad_w.permute(1, 2, 0), g.sum((0, 1)), None, None


class GemmCausalConv1d(CausalConv1d):
    """A `CausalConv1d` whose forward is `_CausalConvGEMM` (its products through `blas` on CPU tensors)."""

    blas = "torch"

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # [B, T, C_in] -> [B, T, C_out]
        blas = self.blas if x.device.type == "cpu" else "torch"
        return _CausalConvGEMM.apply(x, self.weight, self.bias, self.dilation[0], blas)


def conv_declines(conv: torch.nn.Module) -> str | None:
    """Why `GemmCausalConv1d` cannot stand in for this layer, or None: it implements a reference `CausalConv1d`
    (or a subclass that overrides nothing; what its code computes, as written now, `check.layer_difference`
    compares) with a bias, one group and stride 1."""
    if not (type(conv) is GemmCausalConv1d or plain_subclass(type(conv), CausalConv1d)):
        return f"{type(conv).__name__} is not the reference CausalConv1d"
    if conv.bias is None or conv.groups != 1 or conv.stride != (1,) or conv.padding != (0,):
        return "a causal conv without bias, with groups, stride or padding of its own"
    return None
