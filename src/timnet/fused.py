"""A temporal-aware block's training pass on the CPU as 4 BLAS products and a few fused passes over memory.

The unfused block runs ~14 elementwise passes forward and ~20 backward over [B, T, C] tensors that miss the cache
(conv bias, the older tap's add, BatchNorm's statistics and normalisation, ReLU, SpatialDropout, the gate, and their
gradients), and saves 7 tensors for backward. Here each chain is one numba loop and the block saves 5 (x, y1, h1,
y2, sigmoid): 1.4x faster per block and 1.28x per training epoch on a 2-core AMD EPYC (benchmarks/bench_model.py); a
2-fold `timnet train` peaks at ~1.47 GB instead of ~1.88. Both taps of a kernel-2 conv are one product with 2C
outputs, P = x @ [W1 | W0], then y[t] = P[t, :C] + P[t - d, C:] + b inside the loop; backward likewise. BatchNorm's
sums are accumulated in float64. The block also returns its output's mean over time (its level's pooling,
`model.TIMNet.levels`), whose gradient joins inside `gate_back`: no [B, T, C] sum of the two directions forward, no
broadcast gradient added by autograd backward (~2 % of an epoch). Gradients equal the unfused block's and model's to
float rounding (tests/test_model.py). Used by units that train with numpy's BLAS (`train.blas`); every other path
(evaluation, export, torch's BLAS, accelerators) is unfused.
"""

from __future__ import annotations

import numpy as np
import torch
from numba import njit

# numba's on-disk cache next to this file (or its user cache): compiled once per machine, not in every worker. No
# fastmath: a NaN must come out of ReLU and its gradient as it does from torch's (a diverged batch shows as NaN).
JIT = {"cache": True, "error_model": "numpy"}

# helpers: numba loops over channels-last arrays, y/h/x/g: [B, T, C], P/Q/G: [B, T, 2C], masks [B, C]


@njit(**JIT)
def conv_out_stats(P, bias, d, y, s1, s2):  # pragma: no cover (numba)
    """y[t] = P[t, :C] + P[t - d, C:] + bias; per-channel sum and sum of squares of y (float64) into s1, s2."""
    B, T, C = y.shape
    for b in range(B):
        for t in range(T):
            yr, pr = y[b, t], P[b, t]
            if t >= d:
                pq = P[b, t - d]
                for c in range(C):
                    yr[c] = pr[c] + pq[C + c] + bias[c]
            else:
                for c in range(C):
                    yr[c] = pr[c] + bias[c]
            for c in range(C):
                acc = np.float64(yr[c])
                s1[c] += acc
                s2[c] += acc * acc


@njit(**JIT)
def norm_relu_drop(y, scale, shift, mask, h):  # pragma: no cover (numba)
    """h = dropout(relu(y * scale + shift)): BatchNorm as one affine map per channel, then ReLU and the mask."""
    B, T, C = y.shape
    zero = y.dtype.type(0)
    for b in range(B):
        m = mask[b]
        for t in range(T):
            yr, hr = y[b, t], h[b, t]
            for c in range(C):
                z = yr[c] * scale[c] + shift[c]
                hr[c] = (zero if z <= zero else z) * m[c]  # ReLU as torch's: NaN stays NaN


@njit(**JIT)
def gate_back(g, gm, x, s, mask, y, scale, shift, mean, invstd, gx, gz, s1, s2):  # pragma: no cover (numba)
    """Through out = x * s (s = sigmoid(h2)), whose gradient is g + gm (gm [B, C]: from its mean over time, the
    level's pooling, broadcast over t): gx = g s, and to h2's pre-activation z2 = y2 * scale + shift:
    gz = g x s (1 - s) mask where z2 > 0 (recomputed from y2); BatchNorm's sums of gz and gz * xhat."""
    B, T, C = y.shape
    zero, one = y.dtype.type(0), y.dtype.type(1)
    for b in range(B):
        m, gmr = mask[b], gm[b]
        for t in range(T):
            gr, xr, sr, yr, gxr, gzr = g[b, t], x[b, t], s[b, t], y[b, t], gx[b, t], gz[b, t]
            for c in range(C):
                sv, gv = sr[c], gr[c] + gmr[c]
                gxr[c] = gv * sv
                z = gv * xr[c] * sv * (one - sv) * m[c]
                z = zero if yr[c] * scale[c] + shift[c] <= zero else z
                gzr[c] = z
                s1[c] += np.float64(z)
                s2[c] += np.float64(z) * ((yr[c] - mean[c]) * invstd[c])


@njit(**JIT)
def conv_back_relu(Q, h, mask, y, mean, invstd, d, gz, s1, s2):  # pragma: no cover (numba)
    """The conv's input gradient gh[t] = Q[t, :C] + Q[t + d, C:], through the dropout mask and ReLU (h > 0) of
    the layer before; BatchNorm's sums of gz and gz * xhat of that layer."""
    B, T, C = y.shape
    zero = y.dtype.type(0)
    for b in range(B):
        m = mask[b]
        for t in range(T):
            qr, hr, gzr, yr = Q[b, t], h[b, t], gz[b, t], y[b, t]
            if t + d < T:
                qn = Q[b, t + d]
                for c in range(C):
                    v = (qr[c] + qn[C + c]) * m[c]
                    gzr[c] = zero if hr[c] <= zero else v
            else:
                for c in range(C):
                    v = qr[c] * m[c]
                    gzr[c] = zero if hr[c] <= zero else v
            for c in range(C):
                acc = np.float64(gzr[c])
                s1[c] += acc
                s2[c] += acc * ((yr[c] - mean[c]) * invstd[c])


@njit(**JIT)
def norm_back(gz, y, mean, invstd, k, m1, m2, d, G, sb):  # pragma: no cover (numba)
    """BatchNorm's input gradient gy = k (gz - m1 - xhat m2) into G[:, :, :C], and shifted d frames earlier into
    G[:, :, C:] (zeros past the end), so that G^T @ x gives both taps' weight gradients in one product; gy's sum
    (the conv bias's gradient) into sb."""
    B, T, C = y.shape
    for b in range(B):
        for t in range(T):
            gzr, yr, gr = gz[b, t], y[b, t], G[b, t]
            for c in range(C):
                gr[c] = k[c] * (gzr[c] - m1[c] - (yr[c] - mean[c]) * invstd[c] * m2[c])
            for c in range(C):
                sb[c] += np.float64(gr[c])
            if t >= d:
                earlier = G[b, t - d]
                for c in range(C):
                    earlier[C + c] = gr[c]
        for t in range(max(T - d, 0), T):
            earlier = G[b, t]
            for c in range(C):
                earlier[C + c] = 0


@njit(**JIT)
def add_conv_back(Q, d, gx):  # pragma: no cover (numba)
    """gx[t] += Q[t, :C] + Q[t + d, C:]: the first conv's input gradient added to the gate's."""
    B, T, C = gx.shape
    for b in range(B):
        for t in range(T):
            gr, qr = gx[b, t], Q[b, t]
            if t + d < T:
                qn = Q[b, t + d]
                for c in range(C):
                    gr[c] += qr[c] + qn[C + c]
            else:
                for c in range(C):
                    gr[c] += qr[c]


def _forward_layer(inp: np.ndarray, weight, bias, gamma, beta, mask, d: int, eps: float):
    """conv -> BatchNorm (batch statistics) -> ReLU -> dropout: (y, h, (mean, var, invstd, scale, shift))."""
    B, T, C = inp.shape
    dt = inp.dtype
    taps = torch.cat([weight[:, :, 1].t(), weight[:, :, 0].t()], dim=1).detach().contiguous().numpy()  # [C_in, 2 C_out]
    P = np.empty((B, T, 2 * C), dt)
    np.matmul(inp.reshape(B * T, C), taps, out=P.reshape(B * T, 2 * C))
    y = np.empty_like(inp)
    s1, s2 = np.zeros(C), np.zeros(C)
    conv_out_stats(P, bias.detach().numpy(), d, y, s1, s2)
    mean = s1 / (B * T)
    var = np.maximum(s2 / (B * T) - mean * mean, 0)  # biased, as BatchNorm normalises
    invstd = 1 / np.sqrt(var + eps)
    scale = (gamma.detach().numpy() * invstd).astype(dt)
    shift = (beta.detach().numpy() - mean * scale).astype(dt)
    h = np.empty_like(inp)
    norm_relu_drop(y, scale, shift, mask, h)
    return y, h, (mean, var, invstd, scale, shift)


def _backward_layer(gz, s1, s2, y, stats, gamma, weight, inp, d: int):
    """BatchNorm's and the conv's backward from gz (the gradient at BatchNorm's output) and its two sums:
    (Q, the conv's input gradient before the shift-add; weight, bias, gamma, beta gradients)."""
    B, T, C = y.shape
    N, dt = B * T, y.dtype
    mean, _, invstd, _, _ = stats
    G, sb = np.empty((B, T, 2 * C), dt), np.zeros(C)
    k = (gamma.detach().numpy() * invstd).astype(dt)
    norm_back(gz, y, mean.astype(dt), invstd.astype(dt), k, (s1 / N).astype(dt), (s2 / N).astype(dt), d, G, sb)
    G = G.reshape(N, 2 * C)
    taps = torch.cat([weight[:, :, 1], weight[:, :, 0]], dim=1).detach().contiguous().numpy()  # [C_out, 2 C_in]
    Q = np.empty((B, T, 2 * C), dt)
    np.matmul(G[:, :C], taps, out=Q.reshape(N, 2 * C))
    # x^T @ G, not G^T @ x: OpenBLAS runs this K = B*T product 1.2x faster that way round (1.65 vs 1.99 ms)
    grad_taps = torch.from_numpy(np.matmul(inp.reshape(N, C).T, G)).t().view(2, C, C)  # [current; older]
    grad_weight = torch.stack([grad_taps[1], grad_taps[0]], dim=-1)  # [C_out, C_in, 2]
    as_tensor = lambda a: torch.from_numpy(a.astype(dt))  # noqa: E731
    return Q, grad_weight, as_tensor(sb), as_tensor(s2), as_tensor(s1)


# classes


class FusedBlock(torch.autograd.Function):
    """x [B, T, C] -> (out = x * sigmoid(h2) [B, T, C], its mean over time [B, C] (the level's pooling: its
    gradient joins out's inside `gate_back`, instead of being broadcast to [B, T, C] and added by autograd),
    BatchNorm statistics [4, C]: mean1, var1, mean2, var2 unbiased)."""

    @staticmethod
    def forward(ctx, x, w1, b1, g1, beta1, w2, b2, g2, beta2, mask1, mask2, dilation: int, eps: float):
        x = x.detach().contiguous()
        xn, m1, m2 = x.numpy(), mask1.numpy(), mask2.numpy()
        y1, h1, stats1 = _forward_layer(xn, w1, b1, g1, beta1, m1, dilation, eps)
        y2, h2, stats2 = _forward_layer(h1, w2, b2, g2, beta2, m2, dilation, eps)
        s = torch.from_numpy(h2).sigmoid_()  # h2 is not kept: backward finds ReLU's mask from y2
        # Through autograd, not as ctx attributes: activation checkpointing (`train.recompute`) then frees them
        # after forward, autograd frees them after backward, and it notices an in-place change of x.
        activations = (x, *map(torch.from_numpy, (y1, h1, y2)), s)
        ctx.save_for_backward(*activations, mask1, mask2, w1, g1, w2, g2)
        ctx.stats, ctx.dilation = (stats1, stats2), dilation
        n = xn.shape[0] * xn.shape[1]
        stats = torch.from_numpy(np.stack([stats1[0], stats1[1] * n / (n - 1), stats2[0], stats2[1] * n / (n - 1)]))
        ctx.mark_non_differentiable(stats)
        out = x * s
        return out, out.mean(dim=1), stats

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad, grad_mean, _):
        *arrays, w1, g1, w2, g2 = ctx.saved_tensors
        xn, y1, h1, y2, s, m1, m2 = (t.detach().numpy() for t in arrays)
        (stats1, stats2), d = ctx.stats, ctx.dilation
        _, T, C = xn.shape
        dt = xn.dtype
        g, gm = grad.detach().contiguous().numpy(), (grad_mean.detach() / T).contiguous().numpy()  # out's, its mean's
        gx, gz = np.empty_like(xn), np.empty_like(xn)
        s1, s2 = np.zeros(C), np.zeros(C)
        mean2, _, invstd2, scale2, shift2 = stats2
        gate_back(g, gm, xn, s, m2, y2, scale2, shift2, mean2.astype(dt), invstd2.astype(dt), gx, gz, s1, s2)
        Q2, gw2, gb2, gg2, gbeta2 = _backward_layer(gz, s1, s2, y2, stats2, g2, w2, h1, d)
        s1, s2 = np.zeros(C), np.zeros(C)
        conv_back_relu(Q2, h1, m1, y1, stats1[0].astype(dt), stats1[2].astype(dt), d, gz, s1, s2)
        Q1, gw1, gb1, gg1, gbeta1 = _backward_layer(gz, s1, s2, y1, stats1, g1, w1, xn, d)
        add_conv_back(Q1, d, gx)
        return torch.from_numpy(gx), gw1, gb1, gg1, gbeta1, gw2, gb2, gg2, gbeta2, None, None, None, None


# the block's entry points (model.TemporalAwareBlock)


def supports(block: torch.nn.Module, x: torch.Tensor) -> bool:
    """The fused pass covers what TIM-Net's blocks are: two kernel-2 convs with biases and one dilation, each
    followed by an affine BatchNorm in training with running statistics, one eps and momentum; CPU float32/float64
    tensors of the parameters' dtype, more than one value per channel (else torch's own error)."""
    convs, norms = (block.conv1, block.conv2), (block.bn1, block.bn2)
    return (
        x.device.type == "cpu"
        and x.dtype in (torch.float32, torch.float64)
        and x.shape[0] * x.shape[1] > 1
        and all(c.kernel_size[0] == 2 and c.bias is not None and c.weight.dtype == x.dtype for c in convs)
        and block.conv1.dilation == block.conv2.dilation
        and all(isinstance(bn, torch.nn.BatchNorm1d) and bn.training and bn.affine for bn in norms)
        and all(bn.track_running_stats and bn.momentum is not None for bn in norms)
        and (block.bn1.eps, block.bn1.momentum) == (block.bn2.eps, block.bn2.momentum)
    )


def fused_block(block: torch.nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(block(x), its mean over time) in training mode (a `model.TemporalAwareBlock`): the same dropout draws from
    torch's generator, in the same order, and the same running-statistics update as the unfused block."""
    B, _, C = x.shape

    def mask() -> torch.Tensor:  # SpatialDropout1d's keep mask, [B, C]
        return block.drop.keep(x).view(B, C) if block.drop.p else torch.ones(B, C, dtype=x.dtype)

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
    return out, pooled
