"""The fast paths (`timnet.accel`) against the reference model, in float64 where they must agree to rounding:
the GEMM convolution, the CPU kernel (training and evaluation), recomputation."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from conftest import model_config
from torch import nn

from timnet.accel import cpu_kernel
from timnet.accel.accelerate import Acceleration, accelerate
from timnet.accel.gemm_conv import GemmCausalConv1d
from timnet.model.network import CausalConv1d, TemporalAwareBlock, TIMNet


@pytest.mark.parametrize("blas", ["torch", "numpy"])
@pytest.mark.parametrize("kernel_size, dilation", [(1, 1), (2, 1), (2, 16), (2, 64), (3, 5)])
def test_gemm_causal_conv_equals_left_padded_conv1d(kernel_size, dilation, blas):
    """Forward and all gradients of the GEMM formulation, through either BLAS, equal F.pad + F.conv1d (float64,
    so exactly)."""
    torch.manual_seed(0)
    conv = CausalConv1d(5, 4, kernel_size, dilation=dilation).double()
    conv.__class__, conv.blas = GemmCausalConv1d, blas
    nn.init.normal_(conv.bias)
    x = torch.randn(3, 40, 5, dtype=torch.float64, requires_grad=True)  # dilation 64 > T: only padding behind
    upstream = torch.randn(3, 40, 4, dtype=torch.float64)

    ours = conv(x)
    grads = torch.autograd.grad((ours * upstream).sum(), (x, conv.weight, conv.bias))
    padded = F.pad(x.transpose(1, 2), ((kernel_size - 1) * dilation, 0))
    reference = F.conv1d(padded, conv.weight, conv.bias, dilation=dilation).transpose(1, 2)
    expected = torch.autograd.grad((reference * upstream).sum(), (x, conv.weight, conv.bias))

    torch.testing.assert_close(ours, reference, rtol=1e-12, atol=1e-12)
    for got, want in zip(grads, expected):
        torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(CausalConv1d.forward(conv, x), reference, rtol=0, atol=0)  # the reference is that


@pytest.mark.parametrize("dropout", [0.0, 0.3])
@pytest.mark.parametrize("dilation", [1, 8, 64])
def test_fused_block_equals_the_block_op_by_op(dilation, dropout):
    """The fused training pass (numpy's BLAS) gives the unfused block's output, every gradient and the running
    statistics, from the same dropout draws (float64: to rounding); at dilation 64 > T the older tap sees only
    padding. A wrong shift, mask, BatchNorm term or sum fails by far more than the tolerance."""
    torch.manual_seed(0)
    plain = TemporalAwareBlock(6, 2, dilation, dropout).double().train()
    for m in (plain.bn1, plain.bn2, plain.conv1, plain.conv2):  # nothing at its neutral value
        nn.init.uniform_(m.weight, 0.5, 1.5) if isinstance(m, nn.BatchNorm1d) else None
        nn.init.uniform_(m.bias, -0.3, 0.3)
    fused = copy.deepcopy(plain)
    x = torch.randn(5, 40, 6, dtype=torch.float64, requires_grad=True)
    upstream = torch.randn(5, 40, 6, dtype=torch.float64)

    results = []
    for block in (plain, fused):
        torch.manual_seed(1)  # the same dropout masks
        out = block(x) if block is plain else cpu_kernel.fused_block(block, x)[0]
        params = [p for p in block.parameters()]
        grads = torch.autograd.grad((out * upstream).sum(), (x, *params))
        results.append((out, grads, [b.clone() for b in block.buffers()]))
    (want, want_grads, want_stats), (got, got_grads, got_stats) = results
    torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-10)
    scale = max(g.abs().max() for g in want_grads)  # conv biases before BatchNorm: gradient ~0, compared absolutely
    for g, w in zip(got_grads, want_grads):
        torch.testing.assert_close(g, w, rtol=1e-9, atol=1e-12 * scale)
    for g, w in zip(got_stats, want_stats):
        torch.testing.assert_close(g.double(), w.double(), rtol=1e-10, atol=1e-12)
    assert want_stats[-1].item() == 1  # num_batches_tracked moved once


def test_the_fused_blocks_padded_channels_stay_zero_and_change_nothing():
    """`AcceleratedTIMNet.levels` pads the kernel's channels to `cpu_kernel.width` (39 -> 40) once: the padded
    channels come out exactly zero, with zero gradient, and the real channels are bit for bit those of a C-channel
    call."""
    fused = cpu_kernel
    assert [fused.width(c) for c in (6, 8, 39, 40)] == [8, 8, 40, 40]
    torch.manual_seed(0)
    block = TemporalAwareBlock(6, 2, 2, 0.3).train()
    x = torch.randn(4, 30, 6)
    upstream = torch.randn(4, 30, 6)
    results = []
    for inp in (x, F.pad(x, (0, 2))):
        inp = inp.clone().requires_grad_()
        torch.manual_seed(1)
        out, mean = fused.fused_block(block, inp)
        (grad,) = torch.autograd.grad((out[..., :6] * upstream).sum() + mean[:, :6].sum(), inp)
        results.append((out, mean, grad))
    (out, mean, grad), (pout, pmean, pgrad) = results
    assert out.shape == (4, 30, 6) and pout.shape == (4, 30, 8) and pmean.shape == (4, 8)
    assert not pout[..., 6:].any() and not pmean[:, 6:].any() and not pgrad[..., 6:].any()
    assert torch.equal(pout[..., :6], out) and torch.equal(pmean[:, :6], mean) and torch.equal(pgrad[..., :6], grad)


def test_a_fused_model_trains_like_the_unfused_one_in_float32():
    """Whole model, float32, Adam steps with dropout: the fused path's losses follow the unfused ones."""
    losses = {}
    for fuse in (False, True):
        torch.manual_seed(0)
        model = TIMNet(model_config(n_classes=4)).train()
        assert accelerate(model, "numpy", kernel=fuse).kernel == fuse
        opt = torch.optim.Adam(model.parameters(), lr=3e-3)
        y = torch.randint(0, 4, (16,))
        x = torch.randn(16, 50, 39) + y[:, None, None]  # learnable: the class shifts every coefficient
        losses[fuse] = []
        for _ in range(8):
            loss = F.cross_entropy(model(x), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
            losses[fuse].append(loss.item())
    assert losses[True][-1] < 0.85 * losses[True][0]  # it learns (1.36 -> 1.08 here)
    torch.testing.assert_close(torch.tensor(losses[True]), torch.tensor(losses[False]), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("recompute", [False, True])
def test_a_fused_models_gradients_equal_the_unfused_ones_in_float64(recompute):
    """Whole model, float64, EMO-DB's dropout: with the fused blocks, whose level pooling is their own mean (its
    gradient joins inside `gate_back`; the last level's output feeds only that mean), every parameter's gradient
    is the unfused model's to rounding, recomputed or not. A pooling gradient dropped, doubled or not divided by T
    fails by far more than the tolerance."""
    torch.manual_seed(0)
    model = TIMNet(model_config(n_classes=4)).double().train()
    x = torch.randn(6, 50, 39, dtype=torch.float64)
    grads = {}
    for fuse in (False, True):
        assert accelerate(model, "numpy", kernel=fuse, recompute=recompute) == Acceleration("numpy", fuse, recompute)
        torch.manual_seed(1)  # the same dropout masks
        loss = model(x).logsumexp(-1).sum()
        grads[fuse] = torch.autograd.grad(loss, list(model.parameters()))
    scale = max(g.abs().max() for g in grads[False])
    for got, want in zip(grads[True], grads[False]):
        torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-12 * scale)


def test_the_fused_evaluation_equals_the_op_by_op_one():
    """Evaluation without autograd on the CPU with numpy's BLAS (the per-epoch validation of training) runs each
    block as `cpu_kernel.inference_block` (BatchNorm's running statistics folded into the conv): the same
    probabilities and embeddings as op by op to rounding (float64), standalone blocks too; with autograd on, the
    block runs op by op."""
    torch.manual_seed(0)
    model = TIMNet(model_config(n_classes=4)).double().eval()
    with torch.no_grad():  # running statistics and BatchNorm parameters away from their neutral values
        for bn in [m for m in model.modules() if isinstance(m, nn.BatchNorm1d)]:
            bn.running_mean.uniform_(-0.5, 0.5), bn.running_var.uniform_(0.5, 2), bn.weight.uniform_(0.5, 1.5)
            bn.bias.uniform_(-0.3, 0.3)
        for conv in [m for m in model.modules() if isinstance(m, nn.Conv1d)]:
            conv.bias.uniform_(-0.3, 0.3)
    x = torch.randn(5, 50, 39, dtype=torch.float64)
    block = model.forward_blocks[2]
    with torch.no_grad():
        want, want_block = model.classify(x), block(x)
        assert accelerate(model, "numpy", kernel=True).kernel and cpu_kernel.runs_on(block, x)
        got, got_block = model.classify(x), cpu_kernel.inference_block(block, x)[0]
    for g, w in zip((*got, got_block), (*want, want_block)):
        torch.testing.assert_close(g, w, rtol=1e-10, atol=1e-12)
    assert not cpu_kernel.runs_on(block, x)  # autograd on: op by op


def test_recomputed_fused_blocks_give_the_same_bits_and_free_their_activations():
    """`train.recompute` with the fused blocks: the same gradients to the bit, and the blocks' activations (numpy
    arrays, which tracemalloc sees) are not held from forward to backward, as they were when kept on ctx."""
    import tracemalloc

    runs = {}
    for traced in (False, True):  # untraced first: what the first call imports (numba, checkpoint's) is not held
        for recompute in (False, True):
            torch.manual_seed(0)
            model = TIMNet(model_config(n_classes=4)).train()
            accelerate(model, "numpy", kernel=True, recompute=recompute)
            x = torch.randn(8, 60, 39)
            torch.manual_seed(1)
            if traced:
                tracemalloc.start()
            loss = model(x).logsumexp(-1).sum()
            held = tracemalloc.get_traced_memory()[0]
            tracemalloc.stop()
            loss.backward()
            runs[recompute] = held, [p.grad.clone() for p in model.parameters()]
    (held_all, grads), (held_inputs, recomputed) = runs[False], runs[True]
    assert all(torch.equal(a, b) for a, b in zip(grads, recomputed))
    assert held_all > 16 * 4 * x.numel() * 4, "16 blocks each hold 4 float32 arrays of x's size"
    assert held_inputs < 0.1 * held_all, (held_inputs, held_all)


def test_a_nan_goes_through_the_fused_block_as_through_torchs():
    """A diverged weight (NaN) shows as NaN in the output, as op by op, not as a finite x * sigmoid(0) from a ReLU
    (or fastmath) that turned NaN into 0."""
    torch.manual_seed(0)
    block = TemporalAwareBlock(6, 2, 1, 0.0).train()
    with torch.no_grad():
        block.conv2.weight[1, 0, 0] = float("nan")
    x = torch.randn(2, 20, 6)
    want, got = block(x), cpu_kernel.fused_block(copy.deepcopy(block), x)[0]
    assert want[..., 1].isnan().all() and torch.equal(got.isnan(), want.isnan())
