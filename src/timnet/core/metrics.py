"""Metrics and per-utterance prediction tables: what train, evaluate, predict and tsne share.

Over folds (and seeds) every output — CLI, notebook, run workbook, summary workbook, sweeps — reports
mean ± SAMPLE standard deviation (ddof=1), computed by `mean_std` alone.
"""

from __future__ import annotations

import natsort
import numpy as np
import pandas as pd

METRICS = ("war", "uar", "f1")


def scores(y_true: np.ndarray, y_pred: np.ndarray) -> dict[str, float]:
    """WAR (accuracy), UAR (mean recall over the classes present) and macro-F1, in %."""
    if len(y_true) == 0:
        return {"war": float("nan"), "uar": float("nan"), "f1": float("nan")}
    from sklearn import metrics  # imported when used: ~2 s of start-up that `timnet --help` and predict skip

    present = np.unique(y_true)
    return {
        "war": float(np.mean(y_true == y_pred) * 100),
        "uar": float(metrics.recall_score(y_true, y_pred, labels=present, average="macro", zero_division=0) * 100),
        "f1": float(metrics.f1_score(y_true, y_pred, labels=present, average="macro", zero_division=0) * 100),
    }


def confusion(y_true: np.ndarray, y_pred: np.ndarray, classes: list[str]) -> pd.DataFrame:
    from sklearn.metrics import confusion_matrix  # imported when used (see `scores`)

    m = confusion_matrix(y_true, y_pred, labels=range(len(classes)))
    return pd.DataFrame(m, index=pd.Index(classes, name="true"), columns=pd.Index(classes, name="predicted"))


def prediction_table(
    manifest: pd.DataFrame,
    idx: np.ndarray,
    probs: np.ndarray,
    classes: list[str],
    columns: tuple[str, ...] = ("file", "stem", "label"),
    **keys,
) -> pd.DataFrame:
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


def mean_std(values) -> tuple[float, float]:
    """(mean, sample standard deviation with ddof=1); the std of a single value is NaN, not 0."""
    v = np.asarray(values, dtype=float)
    return float(v.mean()), (float(v.std(ddof=1)) if len(v) > 1 else float("nan"))


def fold_statistics(folds: pd.DataFrame) -> dict[str, float]:
    """`{war_mean, war_std, uar_mean, ...}` over the rows (folds x seeds) of a per-fold table."""
    stats = {}
    for metric in METRICS:
        stats[f"{metric}_mean"], stats[f"{metric}_std"] = mean_std(folds[metric])
    return stats


def speaker_table(predictions: pd.DataFrame) -> pd.DataFrame:
    """Per speaker: `n` test predictions, WAR and UAR (%) of them, pooled over the folds that tested the speaker
    (`folds`); with several seeds, scores per seed averaged over the seeds (`n` is per seed). From a prediction
    table with seed, fold, speaker, label and predicted columns (labels as names or indices); "" speakers are one
    row, `unknown`."""
    table = predictions.assign(speaker=predictions.speaker.fillna("").astype(str).replace("", "unknown"))
    rows = []
    for speaker in natsort.natsorted(table.speaker.unique()):
        mine = table[table.speaker == speaker]
        per_seed = [scores(g.label.to_numpy(), g.predicted.to_numpy()) for _, g in mine.groupby("seed", sort=True)]
        rows.append(
            {
                "speaker": speaker,
                "n": len(mine) / mine.seed.nunique(),
                "war": float(np.mean([s["war"] for s in per_seed])),
                "uar": float(np.mean([s["uar"] for s in per_seed])),
                "folds": ",".join(map(str, sorted(mine.fold.unique()))),
                "seeds": mine.seed.nunique(),
            }
        )
    out = pd.DataFrame(rows, columns=["speaker", "n", "war", "uar", "folds", "seeds"])
    if (out.n == out.n.round()).all():
        out["n"] = out.n.astype(int)
    return out
