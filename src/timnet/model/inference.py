"""Batched inference: the one forward path (probabilities and embeddings) that training accuracy, evaluation,
prediction, t-SNE and the ONNX check share."""

from __future__ import annotations

import numpy as np
import torch

from ..core.devices import pick_device
from .network import TIMNet


@torch.no_grad()
def infer(model: TIMNet, x, batch_size: int = 256, device: str = "auto") -> tuple[np.ndarray, np.ndarray]:
    """(probabilities [N, K], embeddings [N, C]) in eval mode; `x` is [N, T, F] (numpy or a tensor)."""
    device = pick_device(device)
    model = model.to(device).eval()
    probs, embs = [], []
    for start in range(0, len(x), batch_size):
        p, e = model.classify(torch.as_tensor(x[start : start + batch_size], device=device))
        probs.append(p.cpu().numpy())
        embs.append(e.cpu().numpy())
    k, c = model.config.n_classes, model.config.filters
    return (
        np.concatenate(probs) if probs else np.zeros((0, k), np.float32),
        np.concatenate(embs) if embs else np.zeros((0, c), np.float32),
    )


def accuracy(model: TIMNet, x, y, batch_size: int = 256, device: str = "auto") -> float:
    """Accuracy in % of the model on [N, T, F] inputs with labels `y`; NaN for no inputs."""
    if not len(x):
        return float("nan")
    probs, _ = infer(model, x, batch_size, device)
    return 100.0 * float(np.mean(probs.argmax(1) == np.asarray(torch.as_tensor(y).cpu())))
