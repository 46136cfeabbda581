"""Emotion prediction for new audio, with the preprocessing read from the run (never re-typed).

The fold models of a run (or the authors' published fold weights) each give class probabilities;
by default they are averaged, or one fold is used (`fold=k`), which then equals that fold's
evaluation output for its test files.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import soundfile as sf

from .config import load_config
from .errors import TimnetError
from .features import extract_file
from .keras_weights import load_fold_models
from .metrics import infer
from .model import TIMNetConfig
from .runs import FoldModels, load_run

LONG_FACTOR = 2.0  # warn when a file is this many times longer than the training length


def load_published(weights: Path, dataset: str, fold: int | None = None) -> FoldModels:
    """The authors' published fold weights for a dataset (features: the dataset's built-in config)."""
    config = load_config(dataset)
    models = {
        f"fold_{k}": m
        for k, m in load_fold_models(weights, TIMNetConfig.from_config(config)).items()
        if fold is None or k == fold
    }
    if not models:
        raise TimnetError(f"{weights}: no weights for fold {fold}")
    return FoldModels(config, models, str(weights))


def predict_features(fold_models: FoldModels, x: np.ndarray, device: str = "auto") -> np.ndarray:
    """Mean class probabilities over the fold models, [N, K]."""
    return np.mean([infer(m, x, device=device)[0] for m in fold_models.models.values()], axis=0)


def predict_files(
    files: list[str | Path],
    run: str | Path | None = None,
    weights: Path | None = None,
    dataset: str | None = None,
    fold: int | None = None,
    models_root: Path = Path("Models"),
    device: str = "auto",
    seed: int | None = None,
) -> pd.DataFrame:
    """Predict the emotion of audio files: a table of file, predicted emotion, probability per class.

    A run's fold models are averaged (all its seeds', or `seed`'s), or one fold's (`fold=k`):
    `timnet.predict(["a.wav"], run="EMODB_random_last_...")` or
    `timnet.predict(["a.wav"], weights="EMODB_46.zip", dataset="EMODB")`.
    """
    if (run is None) == (weights is None):
        raise TimnetError("give either a run (--run) or the authors' weights (--weights with --dataset)")
    if weights is not None and dataset is None:
        raise TimnetError(
            "--weights needs --dataset: the weights do not say which corpus (class names, signal length) they are for"
        )
    fold_models = (
        load_run(run, models_root, fold, seed) if run is not None else load_published(Path(weights), dataset, fold)
    )
    settings = fold_models.config.features
    if not files:
        raise TimnetError("no audio files given")
    x = np.stack([extract_file(Path(f), settings) for f in files])
    for f in files:
        seconds = sf.info(str(f)).duration
        limit = settings.signal_length / settings.sample_rate
        if seconds > LONG_FACTOR * limit:
            warnings.warn(
                f"{f}: {seconds:.1f} s long, the model was trained on {limit:.2f} s; only the middle "
                f"{limit:.2f} s is used (centre crop, as in training)",
                stacklevel=2,
            )
    probs = predict_features(fold_models, x, device)
    classes = fold_models.config.dataset.classes
    table = pd.DataFrame(
        {
            "file": [str(f) for f in files],
            "predicted": [classes[i] for i in probs.argmax(1)],
            "probability": probs.max(1),
        }
    )
    for c, name in enumerate(classes):
        table[name] = probs[:, c]
    return table
