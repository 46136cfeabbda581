"""The CPU kernel: a temporal-aware block's training pass as 4 BLAS products (numpy's) and a few numba _loops().

The block op by op runs ~14 elementwise passes forward and ~20 backward over [B, T, C] tensors that miss the cache
(conv bias, the older tap's add, BatchNorm's statistics and normalisation, ReLU, SpatialDropout, the gate, and their
gradients), and saves 7 tensors for backward. Here each chain is one numba loop and the block saves 5 (x, y1, h1,
y2, sigmoid). Both taps of a kernel-2 conv are one product with 2C outputs, P = x @ [W1 | W0], then
y[t] = P[t, :C] + P[t - d, C:] + b inside the loop; backward likewise. BatchNorm's sums are accumulated in float64.
The block also returns its output's mean over time (its level's pooling), whose gradient joins inside `gate_back`:
no [B, T, C] sum of the two directions forward, no broadcast gradient added by autograd backward. The blocks work
in channels padded with zeros to a multiple of 8 (`width`).

It implements the reference `TemporalAwareBlock` exactly as written in `model/network.py` today, and nothing else:
`block_declines` checks the structure and `accel.check` that it computes what the reference computes (gradients to
float rounding, tests/test_model.py and tests/test_model_variants.py); otherwise `accelerate` does not use it.
Speed: benchmarks/bench_model.py; results in benchmarks/results/.
"""

from __future__ import annotations

import functools

import numpy as np
import torch
from torch.nn import BatchNorm1d

from ..model.network import CausalConv1d, SpatialDropout1d, TemporalAwareBlock
from .code_key import plain_subclass
from .gemm_conv import conv_declines


@functools.cache
def _loops():
    """The numba loops, imported the first time the kernel runs (numba takes a while to import)."""
    from . import kernel_loops

    return kernel_loops


def width(channels: int) -> int:
    """The channels a fused block works in: padded with zero channels to a multiple of 8 (TIM-Net's 39 -> 40):
    OpenBLAS runs the weight-gradient product faster with 40 rows than with 39, and the loops' rows are whole
    vectors. The padded channels stay exactly zero: their weights,
    biases and BatchNorm scales are zero, and nothing reads them but this module."""
    return -(-channels // 8) * 8


def _padded(v: torch.Tensor, size: int) -> np.ndarray:
    """A [C] parameter as a numpy array of `size` values, zeros after C."""
    return np.pad(v.detach().numpy(), (0, size - v.shape[0]))


def _taps(weight: torch.Tensor, size: int, forward: bool) -> np.ndarray:
    """A kernel-2 conv's taps side by side, zero-padded to `size` channels: forward [W_in, 2 W_out] = [W1^T | W0^T]
    (P = x @ taps), backward [W_out, 2 W_in] = [W1 | W0] (Q = gy @ taps)."""
    w = weight.detach().numpy()
    w = w.transpose(1, 0, 2) if forward else w  # [rows, cols, 2]
    rows, cols = w.shape[:2]
    taps = np.zeros((size, 2 * size), w.dtype)
    taps[:rows, :cols] = w[:, :, 1]
    taps[:rows, size : size + cols] = w[:, :, 0]
    return taps


def _product(inp: np.ndarray, taps: np.ndarray) -> np.ndarray:
    """P = inp @ taps: [B, T, W] x [W, 2 W] -> [B, T, 2 W], both taps' outputs (numpy's BLAS)."""
    B, T, W = inp.shape
    P = np.empty((B, T, taps.shape[1]), inp.dtype)
    np.matmul(inp.reshape(B * T, W), taps, out=P.reshape(B * T, -1))
    return P


def _gated(x: torch.Tensor, s: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(out = x * s, its mean over time [B, W]) in one loop (`gate`); out in torch's memory, as x * s was."""
    B, T, W = x.shape
    out, total = torch.empty_like(x), np.zeros((B, W), x.numpy().dtype)
    _loops().gate(x.numpy(), s.numpy(), out.numpy(), total)
    return out, torch.from_numpy(total / T)


def _forward_layer(inp: np.ndarray, taps, bias, gamma, beta, mask, d: int, eps: float):
    """conv -> BatchNorm (batch statistics) -> ReLU -> dropout, all [W]-padded: (y, h, (mean, var, invstd, scale,
    shift))."""
    B, T, W = inp.shape
    dt = inp.dtype
    P = _product(inp, taps)
    y = np.empty_like(inp)
    s1, s2 = np.zeros(W), np.zeros(W)
    _loops().conv_out_stats(P, bias, d, y, s1, s2)
    mean = s1 / (B * T)
    var = np.maximum(s2 / (B * T) - mean * mean, 0)  # biased, as BatchNorm normalises
    invstd = 1 / np.sqrt(var + eps)
    scale = (gamma * invstd).astype(dt)
    shift = (beta - mean * scale).astype(dt)
    h = np.empty_like(inp)
    _loops().norm_relu_drop(y, scale, shift, mask, h)
    return y, h, (mean, var, invstd, scale, shift)


def _backward_layer(gz, s1, s2, y, stats, gamma, weight, inp, d: int):
    """BatchNorm's and the conv's backward from gz (the gradient at BatchNorm's output) and its two sums:
    (Q, the conv's input gradient before the shift-add; weight, bias, gamma, beta gradients, of the real C)."""
    B, T, W = y.shape
    C = weight.shape[0]
    N, dt = B * T, y.dtype
    mean, _, invstd, _, _ = stats
    G, sb = np.empty((B, T, 2 * W), dt), np.zeros(W)
    k = gamma * invstd
    _loops().norm_back(
        gz, y, mean.astype(dt), k.astype(dt), (k * s1 / N).astype(dt), (k * invstd * s2 / N).astype(dt), d, G, sb
    )
    G = G.reshape(N, 2 * W)
    Q = np.empty((B, T, 2 * W), dt)
    np.matmul(G[:, :W], _taps(weight, W, forward=False), out=Q.reshape(N, 2 * W))
    # x^T @ G, not G^T @ x: OpenBLAS runs this K = B*T product faster that way round
    R = np.matmul(inp.reshape(N, W).T, G)  # [W_in, 2 W_out]: current tap, then the older one
    grad_weight = torch.from_numpy(np.stack([R[:C, W : W + C].T, R[:C, :C].T], axis=-1))  # [C_out, C_in, 2]
    as_tensor = lambda a: torch.from_numpy(a[:C].astype(dt))  # noqa: E731
    return Q, grad_weight, as_tensor(sb), as_tensor(s2), as_tensor(s1)


# classes


class FusedBlock(torch.autograd.Function):
    """x [B, T, W] (W = width(C), channels past C zero) -> (out = x * sigmoid(h2) [B, T, W], its mean over time
    [B, W] (the level's pooling: its gradient joins out's inside `gate_back`, instead of being broadcast to
    [B, T, W] and added by autograd), BatchNorm statistics [4, C]: mean1, var1, mean2, var2 unbiased)."""

    @staticmethod
    def forward(ctx, x, w1, b1, g1, beta1, w2, b2, g2, beta2, mask1, mask2, dilation: int, eps: float):
        x = x.detach().contiguous()
        xn, m1, m2 = x.numpy(), mask1.numpy(), mask2.numpy()
        W, C = xn.shape[-1], w1.shape[0]
        p1, p2 = ((_padded(g, W), _padded(b, W)) for g, b in ((g1, beta1), (g2, beta2)))
        y1, h1, stats1 = _forward_layer(xn, _taps(w1, W, True), _padded(b1, W), *p1, m1, dilation, eps)
        y2, h2, stats2 = _forward_layer(h1, _taps(w2, W, True), _padded(b2, W), *p2, m2, dilation, eps)
        s = torch.from_numpy(h2).sigmoid_()  # h2 is not kept: backward finds ReLU's mask from y2
        # Through autograd, not as ctx attributes: activation checkpointing (`accel.recompute`) then frees them
        # after forward, autograd frees them after backward, and it notices an in-place change of x.
        activations = (x, *map(torch.from_numpy, (y1, h1, y2)), s)
        ctx.save_for_backward(*activations, mask1, mask2, w1, w2)
        ctx.stats, ctx.gammas, ctx.dilation = (stats1, stats2), (p1[0], p2[0]), dilation
        n = xn.shape[0] * xn.shape[1]
        stats = np.stack([stats1[0][:C], stats1[1][:C] * n / (n - 1), stats2[0][:C], stats2[1][:C] * n / (n - 1)])
        stats = torch.from_numpy(stats)
        ctx.mark_non_differentiable(stats)
        return (*_gated(x, s), stats)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad, grad_mean, _):
        *arrays, w1, w2 = ctx.saved_tensors
        xn, y1, h1, y2, s, m1, m2 = (t.detach().numpy() for t in arrays)
        (stats1, stats2), (g1, g2), d = ctx.stats, ctx.gammas, ctx.dilation
        _, T, W = xn.shape
        dt = xn.dtype
        g, gm = grad.detach().contiguous().numpy(), (grad_mean.detach() / T).contiguous().numpy()  # out's, its mean's
        gx, gz = np.empty_like(xn), np.empty_like(xn)
        s1, s2 = np.zeros(W), np.zeros(W)
        mean2, _, invstd2, scale2, shift2 = stats2
        _loops().gate_back(g, gm, xn, s, m2, y2, scale2, shift2, mean2.astype(dt), invstd2.astype(dt), gx, gz, s1, s2)
        Q2, gw2, gb2, gg2, gbeta2 = _backward_layer(gz, s1, s2, y2, stats2, g2, w2, h1, d)
        s1, s2 = np.zeros(W), np.zeros(W)
        _loops().conv_back_relu(Q2, h1, m1, y1, stats1[0].astype(dt), stats1[2].astype(dt), d, gz, s1, s2)
        Q1, gw1, gb1, gg1, gbeta1 = _backward_layer(gz, s1, s2, y1, stats1, g1, w1, xn, d)
        _loops().add_conv_back(Q1, d, gx)
        return torch.from_numpy(gx), gw1, gb1, gg1, gbeta1, gw2, gb2, gg2, gbeta2, None, None, None, None


# the block's entry points (`accelerate` puts them in place of `TemporalAwareBlock.forward`)

PARAMETERS = {f"{layer}.{p}" for layer in ("conv1", "bn1", "conv2", "bn2") for p in ("weight", "bias")}


def block_declines(block: torch.nn.Module) -> str | None:
    """Why this kernel cannot run `block`, or None: it implements exactly the reference `TemporalAwareBlock` (two
    kernel-2 causal convs with biases and one dilation, each followed by an affine BatchNorm with running
    statistics, one SpatialDropout, the gate) and nothing else (its classes, or subclasses that override nothing).
    What the block's code does is checked apart, by running both (`accel.check`)."""
    if not plain_subclass(type(block), TemporalAwareBlock):
        return f"{type(block).__name__} is not the reference TemporalAwareBlock"
    if not block.gate:
        return "the block without its gate: the kernel implements the gated block"
    names = {n for n, _ in block.named_parameters()}
    if names != PARAMETERS:
        return f"the block's parameters differ from the reference's ({', '.join(sorted(names ^ PARAMETERS))})"
    layers = dict(block.named_children())
    expected = {"conv1": CausalConv1d, "bn1": BatchNorm1d, "conv2": CausalConv1d, "bn2": BatchNorm1d}
    if layers.keys() != {*expected, "drop"} or not plain_subclass(type(block.drop), SpatialDropout1d):
        return "the block's layers differ from the reference's"
    if any(
        conv_declines(layers[n]) if k is CausalConv1d else not plain_subclass(type(layers[n]), k)
        for n, k in expected.items()
    ):
        return "the block's layers differ from the reference's"
    convs, norms = (block.conv1, block.conv2), (block.bn1, block.bn2)
    if any(c.kernel_size != (2,) or c.in_channels != c.out_channels for c in convs):
        return f"kernel size {block.conv1.kernel_size[0]}: the kernel implements kernel 2"
    if block.conv1.dilation != block.conv2.dilation:
        return "the block's two convs have different dilations"
    if not all(bn.affine and bn.track_running_stats and bn.momentum is not None for bn in norms) or (
        (block.bn1.eps, block.bn1.momentum) != (block.bn2.eps, block.bn2.momentum)
    ):
        return "a BatchNorm without affine parameters, running statistics or one eps and momentum"
    return None


def runs_on(block: torch.nn.Module, x: torch.Tensor) -> bool:
    """Whether this input suits the kernel (else the block runs as defined): CPU float32/float64 of the parameters'
    dtype with C or `width(C)` channels; in training more than one value per channel (else torch's own error), in
    evaluation no autograd."""
    C = block.conv1.in_channels
    if x.device.type != "cpu" or x.dtype != block.conv1.weight.dtype or x.dtype not in (torch.float32, torch.float64):
        return False
    if x.shape[-1] not in (C, width(C)):
        return False
    if block.training:
        return x.shape[0] * x.shape[1] > 1 and block.bn1.training and block.bn2.training
    return not torch.is_grad_enabled() and not (block.bn1.training or block.bn2.training)


def block_forward(block: torch.nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(block(x), its mean over time): `fused_block` in training, `inference_block` in evaluation."""
    return fused_block(block, x) if block.training else inference_block(block, x)


def _to_width(block: torch.nn.Module, x: torch.Tensor) -> tuple[int, int, bool, torch.Tensor]:
    """(C, W, whether x came with C channels != W, x with W channels)."""
    C, W = block.conv1.in_channels, width(block.conv1.in_channels)
    unpadded = x.shape[-1] == C != W
    return C, W, unpadded, torch.nn.functional.pad(x, (0, W - C)) if unpadded else x


def fused_block(block: torch.nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(block(x), its mean over time) in training mode (a `model.TemporalAwareBlock`): the same dropout draws from
    torch's generator, in the same order, and the same running-statistics update as the unfused block. x with
    `width(C)` channels (`fast_model.KernelTIMNet` pads once for all levels) gives them back so; x with C channels
    is padded here and C channels come back."""
    B = x.shape[0]
    C, W, unpadded, x = _to_width(block, x)

    def mask() -> torch.Tensor:  # SpatialDropout1d's keep mask for the C real channels, [B, W]
        keep = block.drop.keep(x[..., :C]).view(B, C) if block.drop.p else torch.ones(B, C, dtype=x.dtype)
        return torch.nn.functional.pad(keep, (0, W - C))

    mask1, mask2 = mask(), mask()
    c1, c2, bn1, bn2 = block.conv1, block.conv2, block.bn1, block.bn2
    out, pooled, stats = FusedBlock.apply(
        x, c1.weight, c1.bias, bn1.weight, bn1.bias, c2.weight, c2.bias, bn2.weight, bn2.bias, mask1, mask2,
        c1.dilation[0], bn1.eps,
    )  # fmt: skip
    with torch.no_grad():
        for bn, mean, var in ((bn1, stats[0], stats[1]), (bn2, stats[2], stats[3])):
            bn.running_mean.mul_(1 - bn.momentum).add_(mean.to(bn.running_mean.dtype), alpha=bn.momentum)
            bn.running_var.mul_(1 - bn.momentum).add_(var.to(bn.running_var.dtype), alpha=bn.momentum)
            bn.num_batches_tracked.add_(1)
    return (out[..., :C], pooled[:, :C]) if unpadded else (out, pooled)


@torch.no_grad()
def inference_block(block: torch.nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(block(x), its mean over time) in evaluation: per conv one product and one loop (its bias and BatchNorm's
    running statistics folded into one scale and shift, ReLU), then torch's sigmoid and one loop for the gate and
    the mean (the per-epoch validation of CPU training). Padding as `fused_block`."""
    C, W, unpadded, x = _to_width(block, x)
    x = x.contiguous()
    h = x.numpy()
    for conv, bn in ((block.conv1, block.bn1), (block.conv2, block.bn2)):
        scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)  # as BatchNorm in eval, in the parameters' dtype
        shift = bn.bias - bn.running_mean * scale + conv.bias * scale
        P = _product(h, _taps(conv.weight, W, True))
        h = np.empty_like(h)
        _loops().conv_norm_relu(P, conv.dilation[0], _padded(scale, W), _padded(shift, W), h)
    out, pooled = _gated(x, torch.from_numpy(h).sigmoid_())
    return (out[..., :C], pooled[:, :C]) if unpadded else (out, pooled)
