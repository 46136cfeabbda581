"""Augmentation of a training batch, part of the one training step (`step`: `unit_step` alone, `augment_pack` for
packed units, each unit's batch as it is alone): SpecAugment-style time and coefficient masks of the MFCCs (Park et
al. 2019) and mixup (Zhang et al. 2018), as `train.time_masks`, `train.coefficient_masks`, `train.mixup` say. Every
draw comes from the unit's own generator (`augmentation_seed`, saved with its per-epoch state), so a run is
reproducible from its seed and exact on resume; off (the defaults: the authors' recipe) nothing is drawn.
"""

from __future__ import annotations

import numpy as np
import torch
from scipy.special import betaincinv

from ..core.config import TrainSettings


def augmentation_seed(seed: int) -> int:
    """The seed of a unit's augmentation generator, from the unit's seed and a fixed tag: a stream of its own (not
    the shuffling's, which the unit's seed itself starts), so augmenting moves no other draw."""
    return int(np.random.SeedSequence([seed, 45]).generate_state(1, np.uint64)[0] >> 1)


def augments(t: TrainSettings) -> bool:
    """Whether any augmentation is on (the defaults: none)."""
    return bool(t.time_masks or t.coefficient_masks or t.mixup)


def augment(x: torch.Tensor, y: torch.Tensor, t: TrainSettings, generator: torch.Generator | None) -> tuple:
    """A batch as the step trains on it: (x [B, T, F], mix). Mixup (`train.mixup` = alpha) mixes each utterance
    with a partner (a permutation of the batch) by lambda ~ Beta(alpha, alpha), one per batch, mix = (the partners'
    labels, lambda) for `mixed_loss`; then each utterance's time and coefficient masks (SpecAugment) set spans to
    the utterance's mean per coefficient (what 0 is to normalised features). Draws come from `generator` (a CPU
    one), in this order; off (the defaults) returns x itself, mix None and draws nothing."""
    mix = None
    if t.mixup:
        lam = betaincinv(t.mixup, t.mixup, float(torch.rand((), generator=generator, dtype=torch.float64)))
        partners = torch.randperm(len(x), generator=generator).to(x.device)
        lam = torch.tensor(float(lam), dtype=x.dtype, device=x.device)
        x = lam * x + (1 - lam) * x[partners]
        mix = (y[partners], lam)
    if t.time_masks or t.coefficient_masks:
        B, T, C = x.shape
        masked = torch.zeros(B, T, C, dtype=torch.bool)
        if t.time_masks:
            masked |= spans(B, T, t.time_masks, t.time_mask_width, generator)[:, :, None]
        if t.coefficient_masks:
            masked |= spans(B, C, t.coefficient_masks, t.coefficient_mask_width, generator)[:, None, :]
        x = torch.where(masked.to(x.device), x.mean(1, keepdim=True), x)
    return x, mix


def spans(batch: int, size: int, count: int, width: int, generator: torch.Generator | None) -> torch.Tensor:
    """[batch, size] bool: per row `count` spans, each of a width uniform in 0..width (at most size), starting
    uniformly where it fits."""
    widths = torch.randint(0, min(width, size) + 1, (batch, count), generator=generator)
    starts = (torch.rand(batch, count, generator=generator, dtype=torch.float64) * (size - widths + 1)).long()
    at = torch.arange(size)
    return ((at >= starts[..., None]) & (at < (starts + widths)[..., None])).any(1)


def augment_pack(x: torch.Tensor, y: torch.Tensor, t: TrainSettings, generators: list) -> tuple:
    """`augment` of each packed unit's batch (x [G, B, T, F], y [G, B]) from its own generator, as it is alone:
    (x, mix with [G, B] partners and [G] lambdas, or None)."""
    if not augments(t):
        return x, None
    done = [augment(x[g], y[g], t, generator) for g, generator in enumerate(generators)]
    mixes = [m for _, m in done]
    mix = None if mixes[0] is None else tuple(torch.stack(part) for part in zip(*mixes))
    return torch.stack([a for a, _ in done]), mix
