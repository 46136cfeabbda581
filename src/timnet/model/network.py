"""TIM-Net (Ye et al., ICASSP 2023) in one readable PyTorch module.

Shapes: B batch, T frames, F MFCC coefficients (39), C filters (39), L levels (8; IEMOCAP 10), K classes.
Keras details kept so the authors' weights load and training behaves alike: causal padding on the
left, BatchNorm eps 1e-3 / Keras momentum 0.99 (PyTorch momentum 0.01), Glorot-uniform kernels,
zero biases, SpatialDropout1D (whole channels), level weights U(-0.05, 0.05).
Activations stay channels-last [B, T, C] throughout, as in Keras.
"""

from __future__ import annotations

import contextlib
import copy

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from ..accel.blas import matmul
from ..core.config import TIMNetConfig


class _CausalConvGEMM(torch.autograd.Function):
    """Causal dilated conv on channels-last [B, T, C] as one GEMM per kernel tap, with a hand-written backward.

    y[t] = b + sum_j W_j x[t - (k-1-j) d]. The older taps accumulate in place into the shifted output view
    (`baddbmm_`), so no [B, T, C] temporary is made: that halves the forward's time against a product plus a
    slice add. A training epoch runs 1.4x faster than with Conv1d on an AVX2 machine (oneDNN's conv runs 39
    channels x kernel 2 at a third of GEMM speed there), 1.07x on an AVX-512 EPYC (benchmarks/bench_model.py);
    gradients equal Conv1d's to 1e-14 in float64 (tests/test_model.py).
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


def causal_conv_export(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, dilation: int) -> torch.Tensor:
    """The same causal conv as ONNX export traces it: [B, T, C] -> channels-first `F.pad` + `F.conv1d` -> back.

    `_CausalConvGEMM`'s in-place accumulation into a slice exports to a graph that runs and is wrong, so export
    must never see it. In onnxruntime this form is the fast one: its transpose optimizer cancels the transposes
    between neighbouring convs, and `export.optimize_graph` folds each left pad into its Conv (measured: 1.7x the
    samples per second of a pad + one MatMul per tap formulation).
    """
    k = weight.shape[-1]
    padded = F.pad(x.transpose(1, 2), ((k - 1) * dilation, 0))  # [B, C_in, (k-1)*d + T], zeros before t = 0
    return F.conv1d(padded, weight, bias, dilation=dilation).transpose(1, 2)  # [B, T, C_out]


class CausalConv1d(nn.Conv1d):
    """Keras Conv1D(padding='causal'): sees only the past (left padding (k - 1) * dilation).

    Parameters are a Conv1d's ([C_out, C_in, k]), so weights load and save as such, but it runs on
    channels-last input [B, T, C_in] -> [B, T, C_out] as GEMMs (see `_CausalConvGEMM`), or out of place
    while being exported to ONNX (`causal_conv_export`).
    """

    blas = "torch"  # whose BLAS runs the products on the CPU (`blas.resolve_blas`; TIMNet.use_blas sets it)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if torch.onnx.is_in_onnx_export():
            return causal_conv_export(x, self.weight, self.bias, self.dilation[0])
        blas = self.blas if x.device.type == "cpu" else "torch"
        return _CausalConvGEMM.apply(x, self.weight, self.bias, self.dilation[0], blas)


class SpatialDropout1d(nn.Module):
    """Keras SpatialDropout1D on [B, T, C]: drops whole channels per utterance (nn.Dropout1d, channels last)."""

    def __init__(self, p: float):
        super().__init__()
        self.p = p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0:
            return x
        return x * self.keep(x)

    def keep(self, x: torch.Tensor) -> torch.Tensor:
        """The keep mask [B, 1, C] (0 or 1 / (1 - p)) from torch's generator; `fused` draws it here too, so both
        paths drop the same channels."""
        return x.new_empty(x.shape[0], 1, x.shape[2]).bernoulli_(1 - self.p).div_(1 - self.p)


class TemporalAwareBlock(nn.Module):
    """2 x (causal dilated conv -> BN -> ReLU -> SpatialDropout), then gate: x * sigmoid(h)."""

    def __init__(self, channels: int, kernel_size: int, dilation: int, dropout: float):
        super().__init__()
        self.conv1 = CausalConv1d(channels, channels, kernel_size, dilation=dilation)
        self.bn1 = nn.BatchNorm1d(channels, eps=1e-3, momentum=0.01)
        self.conv2 = CausalConv1d(channels, channels, kernel_size, dilation=dilation)
        self.bn2 = nn.BatchNorm1d(channels, eps=1e-3, momentum=0.01)
        self.drop = SpatialDropout1d(dropout)

    fuse = True  # with numpy's BLAS, train and evaluate through `fused` (benchmarks/bench_model.py turns it off)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # [B, T, C] -> [B, T, C]
        return self.pooled(x)[0]

    def pooled(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(block(x) [B, T, C], its mean over time [B, C] where a fused pass gives it, else None)."""
        run = self.fused_pass(x)
        return run(self, x) if run else (self._unfused(x), None)

    def fused_pass(self, x: torch.Tensor):
        """The `fused` pass for x (training, or evaluation without autograd, on the CPU with numpy's BLAS), or None."""
        if not (self.fuse and self.conv1.blas == "numpy"):
            return None
        from ..accel import cpu_kernel as fused  # numba takes ~0.4 s to import: only CPU work with numpy's BLAS loads it

        return fused.pass_for(self, x)

    def _unfused(self, x: torch.Tensor) -> torch.Tensor:
        h = self.drop(F.relu(self._norm(self.bn1, self.conv1(x))))
        h = self.drop(F.relu(self._norm(self.bn2, self.conv2(h))))
        return x * torch.sigmoid(h)

    @staticmethod
    def _norm(bn: nn.Module, h: torch.Tensor) -> torch.Tensor:
        """BatchNorm over batch and time of channels-last [B, T, C] (BatchNorm1d takes [N, C]); nothing where
        `fold_batchnorm` moved it into the conv."""
        if isinstance(bn, nn.Identity):
            return h
        return bn(h.reshape(-1, h.shape[-1])).view_as(h)


@contextlib.contextmanager
def _statistics_frozen(block: nn.Module):
    """While a block is recomputed for backward, BatchNorm's running statistics are updated a second time:
    put back what the forward pass left (through `.data`, which autograd's saved tensors do not track)."""
    norms = [m for m in block.modules() if isinstance(m, nn.BatchNorm1d)]
    kept = [(bn.running_mean.clone(), bn.running_var.clone(), bn.num_batches_tracked.clone()) for bn in norms]
    try:
        yield
    finally:
        for bn, (mean, var, count) in zip(norms, kept):
            bn.running_mean.data.copy_(mean)
            bn.running_var.data.copy_(var)
            bn.num_batches_tracked.data.copy_(count)


def _recomputed(block: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
    """block.pooled(x), keeping only x for backward (activation checkpointing)."""
    contexts = lambda: (contextlib.nullcontext(), _statistics_frozen(block))  # noqa: E731
    return checkpoint(block.pooled, x, use_reentrant=False, context_fn=contexts)


class TIMNet(nn.Module):
    """TIM-Net: MFCCs [B, T, F] -> emotion logits [B, K], laid out like the authors' Keras model so their weights load.

    The utterance is read in both directions (as recorded, and time-reversed): a 1x1 causal conv each, then
    `levels` temporal-aware blocks of dilation 1, 2, 4, ...; after every level the two directions are added and
    averaged over time. A learnt weight per level sums the levels into the [B, C] embedding (`embed`: the
    penultimate layer that t-SNE shows), and one dense layer gives the logits (`classify`: probabilities too).
    `config` stays on the module because saved models store it to rebuild the network.
    """

    def __init__(self, config: TIMNetConfig):
        super().__init__()
        self.config = config
        c = config
        self.forward_in = CausalConv1d(c.n_mfcc, c.filters, 1)
        self.backward_in = CausalConv1d(c.n_mfcc, c.filters, 1)
        dilations = [2**i for i in range(c.levels)]
        self.forward_blocks = nn.ModuleList(
            TemporalAwareBlock(c.filters, c.kernel_size, d, c.dropout) for d in dilations
        )
        self.backward_blocks = nn.ModuleList(
            TemporalAwareBlock(c.filters, c.kernel_size, d, c.dropout) for d in dilations
        )
        self.level_weights = nn.Parameter(torch.empty(c.levels))
        self.classifier = nn.Linear(c.filters, c.n_classes)
        self.recompute = False  # training memory: keep only block inputs, recompute the rest in backward
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Keras initialisation: Glorot-uniform kernels, zero biases, U(-0.05, 0.05) level weights."""
        for m in self.modules():
            if isinstance(m, (nn.Conv1d, nn.Linear)):
                nn.init.xavier_uniform_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.BatchNorm1d):
                m.reset_parameters()
        nn.init.uniform_(self.level_weights, -0.05, 0.05)

    def levels(self, x: torch.Tensor) -> torch.Tensor:
        """Per-level features: [B, T, F] MFCCs -> [B, C, L] (forward + backward, averaged over time)."""
        fwd = self.forward_in(x)  # [B, T, C]
        bwd = self.backward_in(x.flip(1))  # [B, T, C], time reversed
        C = fwd.shape[-1]
        if all(block.fused_pass(fwd) for block in [*self.forward_blocks, *self.backward_blocks]):
            from ..accel.cpu_kernel import (
                width,  # the fused blocks' padded channels, zero throughout: once for all levels
            )

            fwd, bwd = F.pad(fwd, (0, width(C) - C)), F.pad(bwd, (0, width(C) - C))  # [B, T, W]
        pooled = []
        for f_block, b_block in zip(self.forward_blocks, self.backward_blocks):
            if self.recompute and self.training:  # same numbers (dropout replays its RNG state), ~1/3 more compute
                (fwd, f_mean), (bwd, b_mean) = _recomputed(f_block, fwd), _recomputed(b_block, bwd)
            else:
                (fwd, f_mean), (bwd, b_mean) = f_block.pooled(fwd), b_block.pooled(bwd)
            if f_mean is None or b_mean is None:
                pooled.append((fwd + bwd).mean(dim=1))  # [B, C]
            else:  # the fused blocks' own means: no [B, T, C] sum, and backward adds no broadcast gradient
                pooled.append((f_mean + b_mean)[:, :C])
        return torch.stack(pooled, dim=-1)  # [B, C, L]

    def use_blas(self, blas: str) -> None:
        """Run every causal convolution's products through `blas` (`torch` or `numpy`: CPU tensors only)."""
        for m in self.modules():
            if isinstance(m, CausalConv1d):
                m.blas = blas

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """Penultimate embedding (t-SNE, prediction): learned weighted sum over levels, [B, C]."""
        return self.levels(x) @ self.level_weights

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """[B, T, F] MFCCs -> [B, K] logits (softmax gives the Keras model's output)."""
        return self.classifier(self.embed(x))

    def classify(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """[B, T, F] MFCCs -> (probabilities [B, K], embedding [B, C]): what every inference path returns."""
        emb = self.embed(x)
        return torch.softmax(self.classifier(emb), dim=-1), emb


@torch.no_grad()
def fold_batchnorm(model: TIMNet) -> TIMNet:
    """An inference copy with every BatchNorm folded into the conv before it (eval-mode BN is affine):
    W' = W * g / sqrt(v + eps), b' = (b - m) * g / sqrt(v + eps) + beta. Fewer operations in an ONNX graph
    (~1.1x faster in onnxruntime here); equal to the model to float rounding (checked at export)."""
    folded = copy.deepcopy(model).eval()
    for block in [*folded.forward_blocks, *folded.backward_blocks]:
        for conv, name in ((block.conv1, "bn1"), (block.conv2, "bn2")):
            bn = getattr(block, name)
            scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)  # [C_out]
            conv.weight.mul_(scale[:, None, None])
            conv.bias.copy_((conv.bias - bn.running_mean) * scale + bn.bias)
            setattr(block, name, nn.Identity())
    return folded


def count_parameters(model: nn.Module) -> tuple[int, int]:
    """(total, trainable) the way Keras counts them: BatchNorm moving statistics are non-trainable."""
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    stats = sum(b.numel() for name, b in model.named_buffers() if name.endswith(("running_mean", "running_var")))
    return trainable + stats, trainable
