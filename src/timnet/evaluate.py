"""Metrics, batched inference, and the reproduction of the authors' evaluation with their weights."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from sklearn.metrics import confusion_matrix, f1_score, recall_score

from .config import Config
from .corpora import canonical_stems
from .errors import TimnetError
from .features import FeatureSet
from .keras_weights import load_fold_models, seed_from_name
from .model import TIMNet, TIMNetConfig
from .splits import canonical_positions, kfold


def scores(y_true: np.ndarray, y_pred: np.ndarray) -> dict[str, float]:
    """WAR (accuracy), UAR (mean recall over the classes present) and macro-F1, in %."""
    if len(y_true) == 0:
        return {"war": float("nan"), "uar": float("nan"), "f1": float("nan")}
    present = np.unique(y_true)
    return {
        "war": float(np.mean(y_true == y_pred) * 100),
        "uar": float(recall_score(y_true, y_pred, labels=present, average="macro", zero_division=0) * 100),
        "f1": float(f1_score(y_true, y_pred, labels=present, average="macro", zero_division=0) * 100),
    }


def confusion(y_true: np.ndarray, y_pred: np.ndarray, classes: list[str]) -> pd.DataFrame:
    m = confusion_matrix(y_true, y_pred, labels=range(len(classes)))
    return pd.DataFrame(m, index=pd.Index(classes, name="true"), columns=pd.Index(classes, name="predicted"))


def prediction_table(manifest: pd.DataFrame, idx: np.ndarray, probs: np.ndarray, classes: list[str],
                     columns: tuple[str, ...] = ("file", "stem", "label"), **keys) -> pd.DataFrame:
    """Per-utterance predictions: `keys` (fold, seed), manifest columns, predicted, correct, p_<class>."""
    table = manifest.iloc[idx][list(columns)].reset_index(drop=True)
    for position, (name, value) in enumerate(keys.items()):
        table.insert(position, name, value)
    table["predicted"] = [classes[p] for p in probs.argmax(1)]
    table["correct"] = table.label.to_numpy() == table.predicted.to_numpy()
    for c, name in enumerate(classes):
        table[f"p_{name}"] = probs[:, c]
    return table


def _table_indices(predictions: pd.DataFrame, classes: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """(true, predicted) class indices of a prediction table."""
    return predictions.label.map(classes.index).to_numpy(), predictions.predicted.map(classes.index).to_numpy()


def table_scores(predictions: pd.DataFrame, classes: list[str]) -> dict[str, float]:
    """Overall scores of a prediction table (all folds pooled)."""
    return scores(*_table_indices(predictions, classes))


def table_confusion(predictions: pd.DataFrame, classes: list[str]) -> pd.DataFrame:
    """Confusion matrix of a prediction table (or of one fold's rows of it)."""
    return confusion(*_table_indices(predictions, classes), classes)


@torch.no_grad()
def infer(model: TIMNet, x: np.ndarray, batch_size: int = 256, device: str = "cpu") -> tuple[np.ndarray, np.ndarray]:
    """(probabilities [N, K], embeddings [N, C]) in eval mode."""
    model = model.to(device).eval()
    probs, embs = [], []
    for start in range(0, len(x), batch_size):
        batch = torch.as_tensor(x[start:start + batch_size], device=device)
        emb = model.embed(batch)
        probs.append(torch.softmax(model.classifier(emb), dim=-1).cpu().numpy())
        embs.append(emb.cpu().numpy())
    k, c = model.config.n_classes, model.config.filters
    return (np.concatenate(probs) if probs else np.zeros((0, k), np.float32),
            np.concatenate(embs) if embs else np.zeros((0, c), np.float32))


@dataclass
class Evaluation:
    """Per-fold table, per-utterance predictions, overall scores, and how much of the test data was there."""

    folds: pd.DataFrame
    predictions: pd.DataFrame
    overall: dict[str, float]
    missing: int
    embeddings: np.ndarray


def authors_test_folds(config: Config, features: FeatureSet, n_folds: int, seed: int) -> tuple[list[np.ndarray], list[int]]:
    """For fold k: the indices of `features` in the authors' test set k, and how many of it are missing."""
    canonical = canonical_stems(config.dataset)
    positions = canonical_positions(features.manifest.stem, canonical)
    if canonical is None:  # the feature file itself is the complete corpus (e.g. the authors' CASIA npy)
        if config.dataset.expected_count and len(features) != config.dataset.expected_count:
            raise TimnetError(f"{config.dataset.name}: the authors' folds need the complete corpus ({config.dataset.expected_count} "
                              f"utterances in their order), got {len(features)}")
        return [te for _, te in kfold(len(features), n_folds, seed)], [0] * n_folds
    if positions is None:
        unknown = [s for s in features.manifest.stem if s not in set(canonical.stem)]
        raise TimnetError(f"{unknown[0]}: not a file name of the complete {config.dataset.name} corpus — the authors' folds "
                          "are defined over the original file names")
    labels = canonical.label.to_numpy()[positions]
    if not np.array_equal(labels, np.asarray(config.dataset.classes)[features.y]):
        raise TimnetError("labels of the feature file disagree with the labels in the file names — wrong --dataset?")
    tests, missing = [], []
    for _, te in kfold(len(canonical), n_folds, seed):
        present = np.flatnonzero(np.isin(positions, te))
        tests.append(present)
        missing.append(len(te) - len(present))
    return tests, missing


def evaluate_weights(weights: Path, config: Config, features: FeatureSet, seed: int | None = None,
                     device: str = "cpu") -> Evaluation:
    """Evaluate the authors' fold-k weights on their fold-k test files that are present."""
    seed = seed if seed is not None else seed_from_name(weights)
    if seed is None:
        seed = config.train.seed
    models = load_fold_models(weights, TIMNetConfig.from_config(config))
    n_folds = max(models)
    tests, missing = authors_test_folds(config, features, n_folds, seed)
    rows, preds, embeddings = [], [], np.zeros((len(features), config.model.filters), np.float32)
    for k, model in models.items():
        idx = tests[k - 1]
        prob, emb = infer(model, features.x[idx], device=device)
        embeddings[idx] = emb
        rows.append({"fold": k, "n_test": len(idx), "missing": missing[k - 1], **scores(features.y[idx], prob.argmax(1))})
        preds.append(prediction_table(features.manifest, idx, prob, config.dataset.classes, fold=k))
    predictions = pd.concat(preds, ignore_index=True)
    return Evaluation(pd.DataFrame(rows), predictions, table_scores(predictions, config.dataset.classes), int(sum(missing)), embeddings)
