"""Emotion prediction for new audio, with the preprocessing read from the model (never re-typed).

The models (read by `timnet.load_model`): an exported folder or hub id (`model=`, torch or onnxruntime), a
training run (`run=`) or the authors' published fold weights (`weights=` + `dataset=`). The fold models' class
probabilities are averaged, or one fold is used (`fold=k`), which then equals that fold's evaluation output
for its test files. A model trained with `train.normalize = speaker` takes the files given together as ONE
speaker (their own statistics over all their frames) and says so (the table's `attrs["note"]`).
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd
from natsort import natsorted

from ..core.errors import TimnetError
from ..data.corpus_scan import AUDIO_SUFFIXES
from ..training.run_store import run_dir
from .loading import load_model


def collect_audio(inputs: list[str | Path]) -> list[Path]:
    """Audio files from files, folders (every audio file below, in natural order) and CSV lists (column `path`
    or `file`, else the first; relative paths are relative to the CSV's folder)."""
    files: list[Path] = []
    for item in map(Path, inputs):
        if item.is_dir():
            found = natsorted((p for p in item.rglob("*") if p.suffix.lower() in AUDIO_SUFFIXES), key=str)
            if not found:
                raise TimnetError(f"{item}: no audio files ({', '.join(sorted(AUDIO_SUFFIXES))}) in this folder")
            files += found
        elif item.suffix.lower() == ".csv":
            table = read_file_list(item)
            column = next((c for c in ("path", "file") if c in table.columns), table.columns[0])
            files += [p if p.is_absolute() else item.parent / p for p in map(Path, table[column].astype(str))]
        else:
            files.append(item)
    if not files:
        raise TimnetError("no audio files given")
    return files


def read_file_list(path: Path) -> pd.DataFrame:
    """A CSV list of audio files, or one line saying why it is not one."""
    fix = "one audio file per row, in a column `path` (or `file`, or the first)"
    try:
        table = pd.read_csv(path, dtype=str, keep_default_na=False)
    except FileNotFoundError:
        raise TimnetError(f"{path}: no such CSV list of files") from None
    except (ValueError, UnicodeDecodeError, pd.errors.ParserError, pd.errors.EmptyDataError) as err:
        reason = (str(err).splitlines() or [type(err).__name__])[0][:200]
        raise TimnetError(f"{path}: not a readable CSV list of files ({reason}) — {fix}") from None
    if table.empty or not len(table.columns):
        raise TimnetError(f"{path}: lists no files — {fix}")
    return table


def model_source(
    run: str | Path | None = None,
    weights: Path | None = None,
    model: str | Path | None = None,
    models_root: Path = Path("Models"),
) -> str | Path:
    """The one source of models a prediction names (exactly one of run, weights, model), for `load_model`;
    a run is checked to be one here, so its error says so."""
    given = [v for v in (run, weights, model) if v is not None]
    if len(given) != 1:
        raise TimnetError(
            "give one source of models: --model DIR (exported) or a hub id, --run RUN, or --weights ZIP with --dataset"
        )
    return run_dir(run, models_root) if run is not None else given[0]


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
    (all its seeds', or `seed`'s), or one fold's (`fold=k`); `timnet.load_model` reads them.
    """
    source = model_source(run, weights, model, models_root)
    models = load_model(
        source, dataset=dataset, fold=fold, seed=seed, engine=engine, device=device, models_root=models_root
    )
    return models.predict(collect_audio(files), None, workers, skip_bad, progress)
