"""The reproduction of the authors' evaluation: their published fold weights on their own test folds."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from ..core.config import Config
from ..core.errors import TimnetError
from ..core.metrics import prediction_table, scores, table_scores
from ..data.corpora import canonical_stems
from ..data.feature_files import FeatureSet
from ..data.speaker_normalization import model_inputs
from ..data.splits import canonical_positions, kfold
from ..serving.loading import load_model
from ..serving.portable import PortableModel


@dataclass
class Evaluation:
    """Per-fold table, per-utterance predictions, overall scores, and how much of the test data was there."""

    folds: pd.DataFrame
    predictions: pd.DataFrame
    overall: dict[str, float]
    missing: int
    embeddings: np.ndarray


def authors_test_folds(
    config: Config, features: FeatureSet, n_folds: int, seed: int
) -> tuple[list[np.ndarray], list[int]]:
    """For fold k: the indices of `features` in the authors' test set k, and how many of it are missing."""
    canonical = canonical_stems(config.dataset)
    positions = canonical_positions(features.manifest.stem, canonical)
    if canonical is None:  # the feature file itself is the complete corpus (e.g. the authors' CASIA npy)
        if config.dataset.expected_count and len(features) != config.dataset.expected_count:
            raise TimnetError(
                f"{config.dataset.name}: the authors' folds need the complete corpus ({config.dataset.expected_count} "
                f"utterances in their order), got {len(features)}"
            )
        return [te for _, te in kfold(len(features), n_folds, seed)], [0] * n_folds
    if positions is None:
        unknown = [s for s in features.manifest.stem if s not in set(canonical.stem)]
        raise TimnetError(
            f"{unknown[0]}: not a file name of the complete {config.dataset.name} corpus — the authors' folds "
            "are defined over the original file names"
        )
    labels = canonical.label.to_numpy()[positions]
    if not np.array_equal(labels, np.asarray(config.dataset.classes)[features.y]):
        raise TimnetError("labels of the feature file disagree with the labels in the file names — wrong --dataset?")
    tests, missing = [], []
    for _, te in kfold(len(canonical), n_folds, seed):
        present = np.flatnonzero(np.isin(positions, te))
        tests.append(present)
        missing.append(len(te) - len(present))
    return tests, missing


def model_test_folds(
    model: PortableModel, features: FeatureSet, seed: int | None = None
) -> tuple[dict[str, np.ndarray], dict[str, int]]:
    """Per fold model: the indices in `features` of its authors' test files, and how many of them are missing.
    The KFold seed: `seed`, else the weights' name (EMODB_46 -> 46), else the config's."""
    seed = seed if seed is not None else model.kfold_seed
    seed = model.config.train.seed if seed is None else seed
    tests, missing = authors_test_folds(model.config, features, max(model.fold_of.values()), seed)
    folds = model.fold_of
    return {u: tests[folds[u] - 1] for u in model.units}, {u: missing[folds[u] - 1] for u in model.units}


def evaluate_model(model: PortableModel, features: FeatureSet, seed: int | None = None) -> Evaluation:
    """Evaluate each fold-k model (the authors' weights, usually) on the authors' fold-k test files that are present,
    fed what it was trained on (`train.normalize`)."""
    config = model.config
    features = model_inputs(features, config.train.normalize)
    tests, missing = model_test_folds(model, features, seed)
    rows, preds, embeddings = [], [], np.zeros((len(features), config.model.filters), np.float32)
    for unit in model.units:
        k, idx = model.fold_of[unit], tests[unit]
        prob, emb = model.unit_outputs(unit, features.x[idx])
        embeddings[idx] = emb
        rows.append(
            {"fold": k, "n_test": len(idx), "missing": missing[unit], **scores(features.y[idx], prob.argmax(1))}
        )
        preds.append(prediction_table(features.manifest, idx, prob, config.dataset.classes, fold=k))
    predictions = pd.concat(preds, ignore_index=True)
    return Evaluation(
        pd.DataFrame(rows),
        predictions,
        table_scores(predictions, config.dataset.classes),
        int(sum(missing.values())),
        embeddings,
    )


def evaluate_weights(
    weights: Path, config: Config, features: FeatureSet, seed: int | None = None, device: str = "auto"
) -> Evaluation:
    """Evaluate the authors' fold-k weights (read with the dataset's `config`) on their fold-k test files."""
    return evaluate_model(load_model(weights, dataset=config, engine="torch", device=device), features, seed)
