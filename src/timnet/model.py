"""TIM-Net (Ye et al., ICASSP 2023) in one readable PyTorch module.

Shapes: B batch, T frames, F MFCC coefficients (39), C filters (39), L levels (8; IEMOCAP 10), K classes.
Keras details kept so the authors' weights load and training behaves alike: causal padding on the
left, BatchNorm eps 1e-3 / Keras momentum 0.99 (PyTorch momentum 0.01), Glorot-uniform kernels,
zero biases, SpatialDropout1D (= whole channels, nn.Dropout1d), level weights U(-0.05, 0.05).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn


@dataclass
class TIMNetConfig:
    n_classes: int
    n_mfcc: int = 39
    filters: int = 39
    kernel_size: int = 2
    levels: int = 8
    dropout: float = 0.1

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_config(cls, config) -> "TIMNetConfig":
        """The architecture of a `timnet.config.Config` (classes, MFCCs, [model] section)."""
        m = config.model
        return cls(n_classes=config.n_classes, n_mfcc=config.features.n_mfcc, filters=m.filters,
                   kernel_size=m.kernel_size, levels=m.levels, dropout=m.dropout)


class CausalConv1d(nn.Conv1d):
    """Conv1d that sees only the past: left-pad by (k - 1) * dilation (Keras padding='causal')."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # [B, C_in, T] -> [B, C_out, T]
        return super().forward(F.pad(x, ((self.kernel_size[0] - 1) * self.dilation[0], 0)))


class TemporalAwareBlock(nn.Module):
    """2 x (causal dilated conv -> BN -> ReLU -> SpatialDropout), then gate: x * sigmoid(h)."""

    def __init__(self, channels: int, kernel_size: int, dilation: int, dropout: float):
        super().__init__()
        self.conv1 = CausalConv1d(channels, channels, kernel_size, dilation=dilation)
        self.bn1 = nn.BatchNorm1d(channels, eps=1e-3, momentum=0.01)
        self.conv2 = CausalConv1d(channels, channels, kernel_size, dilation=dilation)
        self.bn2 = nn.BatchNorm1d(channels, eps=1e-3, momentum=0.01)
        self.drop = nn.Dropout1d(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # [B, C, T] -> [B, C, T]
        h = self.drop(F.relu(self.bn1(self.conv1(x))))
        h = self.drop(F.relu(self.bn2(self.conv2(h))))
        return x * torch.sigmoid(h)


class TIMNet(nn.Module):
    def __init__(self, config: TIMNetConfig):
        super().__init__()
        self.config = config
        c = config
        self.forward_in = CausalConv1d(c.n_mfcc, c.filters, 1)
        self.backward_in = CausalConv1d(c.n_mfcc, c.filters, 1)
        dilations = [2**i for i in range(c.levels)]
        self.forward_blocks = nn.ModuleList(TemporalAwareBlock(c.filters, c.kernel_size, d, c.dropout) for d in dilations)
        self.backward_blocks = nn.ModuleList(TemporalAwareBlock(c.filters, c.kernel_size, d, c.dropout) for d in dilations)
        self.level_weights = nn.Parameter(torch.empty(c.levels))
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
        nn.init.uniform_(self.level_weights, -0.05, 0.05)

    def levels(self, x: torch.Tensor) -> torch.Tensor:
        """Per-level features: [B, T, F] MFCCs -> [B, C, L] (forward + backward, averaged over time)."""
        x = x.transpose(1, 2)                 # [B, F, T]
        fwd = self.forward_in(x)              # [B, C, T]
        bwd = self.backward_in(x.flip(-1))    # [B, C, T], time reversed
        pooled = []
        for f_block, b_block in zip(self.forward_blocks, self.backward_blocks):
            fwd, bwd = f_block(fwd), b_block(bwd)
            pooled.append((fwd + bwd).mean(dim=-1))  # [B, C]
        return torch.stack(pooled, dim=-1)   # [B, C, L]

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """Penultimate embedding (t-SNE, prediction): learned weighted sum over levels, [B, C]."""
        return self.levels(x) @ self.level_weights

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """[B, T, F] MFCCs -> [B, K] logits (softmax gives the Keras model's output)."""
        return self.classifier(self.embed(x))


def count_parameters(model: nn.Module) -> tuple[int, int]:
    """(total, trainable) the way Keras counts them: BatchNorm moving statistics are non-trainable."""
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    stats = sum(b.numel() for name, b in model.named_buffers() if name.endswith(("running_mean", "running_var")))
    return trainable + stats, trainable
