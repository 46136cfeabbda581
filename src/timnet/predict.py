"""Emotion prediction for new audio, with the preprocessing read from the model (never re-typed).

The models: an exported folder (`model=`, torch or onnxruntime), a training run (`run=`) or the authors'
published fold weights (`weights=` + `dataset=`). The fold models' class probabilities are averaged, or
one fold is used (`fold=k`), which then equals that fold's evaluation output for its test files.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd
from natsort import natsorted

from .config import load_config
from .errors import TimnetError
from .keras_weights import load_fold_models
from .model import TIMNetConfig
from .portable import PortableModel, from_fold_models, load_model
from .runs import FoldModels, load_run

AUDIO_SUFFIXES = (".wav", ".flac", ".ogg", ".mp3", ".aiff", ".aif")


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


def collect_audio(inputs: list[str | Path]) -> list[Path]:
    """Audio files from files, folders (every audio file below, in natural order) and CSV lists (column `path`
    or `file`, else the first; relative paths are relative to the CSV's folder)."""
    files: list[Path] = []
    for item in map(Path, inputs):
        if item.is_dir():
            found = natsorted((p for p in item.rglob("*") if p.suffix.lower() in AUDIO_SUFFIXES), key=str)
            if not found:
                raise TimnetError(f"{item}: no audio files ({', '.join(AUDIO_SUFFIXES)}) in this folder")
            files += found
        elif item.suffix.lower() == ".csv":
            table = pd.read_csv(item)
            column = next((c for c in ("path", "file") if c in table.columns), table.columns[0])
            files += [p if p.is_absolute() else item.parent / p for p in map(Path, table[column].astype(str))]
        else:
            files.append(item)
    if not files:
        raise TimnetError("no audio files given")
    return files


def open_models(
    run: str | Path | None = None,
    weights: Path | None = None,
    dataset: str | None = None,
    model: str | Path | None = None,
    engine: str = "auto",
    fold: int | None = None,
    seed: int | None = None,
    models_root: Path = Path("Models"),
    device: str = "auto",
) -> PortableModel:
    """The one source of models a prediction names (exactly one of run, weights, model)."""
    if sum(v is not None for v in (run, weights, model)) != 1:
        raise TimnetError(
            "give one source of models: --model DIR (exported), --run RUN, or --weights ZIP with --dataset"
        )
    if model is not None:
        return load_model(model, engine, device)
    if engine == "onnx":
        raise TimnetError("--engine onnx needs an exported model folder: timnet export, then --model DIR")
    if weights is not None and dataset is None:
        raise TimnetError(
            "--weights needs --dataset: the weights do not say which corpus (class names, signal length) they are for"
        )
    fold_models = (
        load_run(run, models_root, fold, seed) if run is not None else load_published(Path(weights), dataset, fold)
    )
    return from_fold_models(fold_models, device)


def predict_files(
    files: list[str | Path],
    run: str | Path | None = None,
    weights: Path | None = None,
    dataset: str | None = None,
    fold: int | None = None,
    models_root: Path = Path("Models"),
    device: str = "auto",
    seed: int | None = None,
    model: str | Path | None = None,
    engine: str = "auto",
    workers: int | None = None,
    skip_bad: bool = False,
    progress: bool = False,
) -> pd.DataFrame:
    """Predict the emotion of audio files (or folders, or CSV lists of files): a table of file, predicted emotion,
    its probability and the probability of every class.

    `timnet.predict(["a.wav"], model="exported/EMODB")`, `timnet.predict(["a.wav"], run="EMODB_random_last_...")`
    or `timnet.predict(["a.wav"], weights="EMODB_46.zip", dataset="EMODB")`. A run's fold models are averaged
    (all its seeds', or `seed`'s), or one fold's (`fold=k`).
    """
    models = open_models(run, weights, dataset, model, engine, fold, seed, models_root, device)
    return models.predict(collect_audio(files), fold if model is not None else None, workers, skip_bad, progress)
