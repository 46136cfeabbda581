"""TIM-Net (Ye et al., ICASSP 2023): the reference model, plain PyTorch, read top to bottom.

This file is the definition. Training on the CPU, packed units and captured steps run faster code (`timnet.accel`),
and each of those paths is checked against this file before it is used: change a layer here and every fast path
either computes your change or says, in one line, that it steps aside (README "Changing the model").

Shapes: B batch, T frames, F MFCC coefficients (39), C filters (39), L levels (8; IEMOCAP 10), K classes.
Keras details kept so the authors' weights load and training behaves alike: causal padding on the left, BatchNorm
eps 1e-3 / Keras momentum 0.99 (PyTorch momentum 0.01), Glorot-uniform kernels, zero biases, SpatialDropout1D
(whole channels), level weights U(-0.05, 0.05). Activations stay channels-last [B, T, C] throughout, as in Keras.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..core.config import TIMNetConfig


class CausalConv1d(nn.Conv1d):
    """Keras Conv1D(padding='causal') on channels-last input: y[t] sees x[t], x[t - d], ... (zeros before t = 0).
    Parameters are a Conv1d's ([C_out, C_in, k]), so weights load and save as such."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # [B, T, C_in] -> [B, T, C_out]
        k, d = self.kernel_size[0], self.dilation[0]
        padded = F.pad(x.transpose(1, 2), ((k - 1) * d, 0))  # [B, C_in, (k-1)*d + T]
        return F.conv1d(padded, self.weight, self.bias, dilation=d).transpose(1, 2)


class SpatialDropout1d(nn.Module):
    """Keras SpatialDropout1D on [B, T, C]: drops whole channels per utterance."""

    def __init__(self, p: float):
        super().__init__()
        self.p = p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0:
            return x
        return x * self.keep(x)

    def keep(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """The keep mask [B, 1, C]: 0 or 1 / (1 - p), drawn from `generator` (torch's own when None)."""
        return x.new_empty(x.shape[0], 1, x.shape[2]).bernoulli_(1 - self.p, generator=generator).div_(1 - self.p)


def batch_norm(bn: nn.Module, h: torch.Tensor) -> torch.Tensor:
    """BatchNorm over batch and time of channels-last [B, T, C] (BatchNorm1d normalises [N, C]); nothing where ONNX
    export folded it into the conv before it (`onnx_export.absorb_batchnorm`)."""
    if isinstance(bn, nn.Identity):
        return h
    return bn(h.reshape(-1, h.shape[-1])).view_as(h)


class TemporalAwareBlock(nn.Module):
    """2 x (causal dilated conv -> BatchNorm -> ReLU -> SpatialDropout), then the gate: x * sigmoid(h) (without the
    gate, the paper's ablation: h)."""

    def __init__(self, channels: int, kernel_size: int, dilation: int, dropout: float, gate: bool = True):
        super().__init__()
        self.gate = gate
        self.conv1 = CausalConv1d(channels, channels, kernel_size, dilation=dilation)
        self.bn1 = nn.BatchNorm1d(channels, eps=1e-3, momentum=0.01)
        self.conv2 = CausalConv1d(channels, channels, kernel_size, dilation=dilation)
        self.bn2 = nn.BatchNorm1d(channels, eps=1e-3, momentum=0.01)
        self.drop = SpatialDropout1d(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # [B, T, C] -> [B, T, C]
        h = self.drop(F.relu(batch_norm(self.bn1, self.conv1(x))))
        h = self.drop(F.relu(batch_norm(self.bn2, self.conv2(h))))
        return x * torch.sigmoid(h) if self.gate else h

    def extra_repr(self) -> str:
        return f"gate={self.gate}"


class TIMNet(nn.Module):
    """TIM-Net: MFCCs [B, T, F] -> emotion logits [B, K], laid out like the authors' Keras model so their weights load.

    The utterance is read in both directions (as recorded, and time-reversed): a 1x1 causal conv each, then
    `levels` temporal-aware blocks of dilation 1, 2, 4, ...; after every level the two directions are added and
    averaged over time. A learnt weight per level sums the levels into the [B, C] embedding (`embed`: the
    penultimate layer that t-SNE shows), and one dense layer gives the logits (`classify`: probabilities too).
    `config` stays on the module because saved models store it to rebuild the network. The paper's ablations
    (`config.directions`, `fusion`, `gate`) read one direction, fuse the levels by their mean or take the last,
    and leave the gate out of the blocks.
    """

    def __init__(self, config: TIMNetConfig):
        super().__init__()
        self.config = c = config
        both = c.directions == "both"
        self.forward_in = CausalConv1d(c.n_mfcc, c.filters, 1)
        self.backward_in = CausalConv1d(c.n_mfcc, c.filters, 1) if both else None
        dilations = [2**i for i in range(c.levels)]
        self.forward_blocks = nn.ModuleList(
            TemporalAwareBlock(c.filters, c.kernel_size, d, c.dropout, c.gate) for d in dilations
        )
        self.backward_blocks = nn.ModuleList(
            TemporalAwareBlock(c.filters, c.kernel_size, d, c.dropout, c.gate) for d in (dilations if both else [])
        )
        self.level_weights = nn.Parameter(torch.empty(c.levels)) if c.fusion == "dynamic" else None
        self.classifier = nn.Linear(c.filters, c.n_classes)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Keras initialisation: Glorot-uniform kernels, zero biases, U(-0.05, 0.05) level weights."""
        for m in self.modules():
            if isinstance(m, (nn.Conv1d, nn.Linear)):
                nn.init.xavier_uniform_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.BatchNorm1d):
                m.reset_parameters()
        if self.level_weights is not None:
            nn.init.uniform_(self.level_weights, -0.05, 0.05)

    def levels(self, x: torch.Tensor) -> torch.Tensor:
        """Per-level features: [B, T, F] MFCCs -> [B, C, L] (forward + backward, averaged over time)."""
        fwd = self.forward_in(x)  # [B, T, C]
        bwd = self.backward_in(x.flip(1)) if self.backward_in is not None else None  # time reversed (or none)
        pooled = []
        for level, f_block in enumerate(self.forward_blocks):
            fwd = f_block(fwd)
            if bwd is None:  # one direction (ablation)
                pooled.append(fwd.mean(dim=1))  # [B, C]
            else:
                bwd = self.backward_blocks[level](bwd)
                pooled.append((fwd + bwd).mean(dim=1))  # [B, C]
        return torch.stack(pooled, dim=-1)  # [B, C, L]

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """Penultimate embedding (t-SNE, prediction), [B, C]: the learnt weighted sum over levels (ablations: their
        mean, or the last level)."""
        levels = self.levels(x)  # [B, C, L]
        if self.config.fusion == "mean":
            return levels.mean(dim=-1)
        if self.config.fusion == "last":
            return levels[..., -1]
        return levels @ self.level_weights

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """[B, T, F] MFCCs -> [B, K] logits (softmax gives the Keras model's output)."""
        return self.classifier(self.embed(x))

    def extra_repr(self) -> str:
        c = self.config
        return f"directions={c.directions}, fusion={c.fusion}, gate={c.gate}"

    def classify(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """[B, T, F] MFCCs -> (probabilities [B, K], embedding [B, C]): what every inference path returns."""
        emb = self.embed(x)
        return torch.softmax(self.classifier(emb), dim=-1), emb


def count_parameters(model: nn.Module) -> tuple[int, int]:
    """(total, trainable) the way Keras counts them: BatchNorm moving statistics are non-trainable."""
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    stats = sum(b.numel() for name, b in model.named_buffers() if name.endswith(("running_mean", "running_var")))
    return trainable + stats, trainable
