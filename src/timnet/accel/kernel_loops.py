"""The CPU kernel's loops over channels-last arrays, compiled by numba (imported only where the kernel runs: numba
takes a while to import). What each computes: `cpu_kernel`, which calls them."""

from __future__ import annotations

import numpy as np
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
def conv_norm_relu(P, d, scale, shift, h):  # pragma: no cover (numba)
    """Inference: h[t] = relu((P[t, :C] + P[t - d, C:]) * scale + shift), with the conv's bias and BatchNorm's
    running statistics folded into scale and shift."""
    B, T, C = h.shape
    zero = h.dtype.type(0)
    for b in range(B):
        for t in range(T):
            hr, pr = h[b, t], P[b, t, :C]
            if t >= d:
                pq = P[b, t - d, C:]
                for c in range(C):
                    z = (pr[c] + pq[c]) * scale[c] + shift[c]
                    hr[c] = zero if z <= zero else z
            else:
                for c in range(C):
                    z = pr[c] * scale[c] + shift[c]
                    hr[c] = zero if z <= zero else z


@njit(**JIT)
def gate(x, s, out, total):  # pragma: no cover (numba)
    """out = x * s and its sum over time into total [B, C]: one pass instead of torch's product and mean."""
    B, T, C = x.shape
    for b in range(B):
        tr = total[b]
        for t in range(T):
            xr, sr, outr = x[b, t], s[b, t], out[b, t]
            for c in range(C):
                v = xr[c] * sr[c]
                outr[c] = v
                tr[c] += v


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
def norm_back(gz, y, mean, k, km1, a, d, G, sb):  # pragma: no cover (numba)
    """BatchNorm's input gradient gy = k (gz - m1 - xhat m2) = k gz - k m1 - (y - mean) a, with a = k invstd m2,
    into G[:, :, :C], and shifted d frames earlier into G[:, :, C:] (zeros past the end), so that G^T @ x gives
    both taps' weight gradients in one product; gy's sum (the conv bias's gradient) into sb."""
    B, T, C = y.shape
    for b in range(B):
        for t in range(T):
            gzr, yr, gr = gz[b, t], y[b, t], G[b, t]
            for c in range(C):
                gr[c] = k[c] * gzr[c] - km1[c] - (yr[c] - mean[c]) * a[c]
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
            gr, qr = gx[b, t], Q[b, t, :C]
            if t + d < T:
                qn = Q[b, t + d, C:]  # a slice, not qn[C + c]: numba checks a computed index's sign
                for c in range(C):
                    gr[c] += qr[c] + qn[c]
            else:
                for c in range(C):
                    gr[c] += qr[c]
