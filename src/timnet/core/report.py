"""What a run reports: its tables (per fold, per utterance, confusion), its workbook, the cross-run
`Accuracy Analysis Summary.xlsx`, and its figures (per-unit curves, curves grid, confusion heatmap).

Workbooks are written to a temporary file and renamed, so a crash never leaves half a workbook,
and a run's workbook is never overwritten (each run has its own id).
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd

from .atomic import atomic_path
from .config import Config
from .errors import TimnetError
from .locks import exclusive
from .metrics import METRICS, fold_statistics, mean_std, prediction_table, scores, table_confusion
from .published import NOT_PUBLISHED, FeatureFacts, not_comparable, number_text, published_cell, published_numbers

SUMMARY_NAME = "Accuracy Analysis Summary.xlsx"
# published source (`published.PUBLISHED`) -> its columns in the summary (`paper_war`, ...) and how lines name it
SUMMARY_COLUMNS = {"paper": "paper", "update_2023": "authors_2023"}
SUMMARY_LABELS = {"paper": "paper (best epoch on the test fold)", "update_2023": "authors' 2023 update (last epoch)"}


def config_sheet(cfg: Config) -> pd.DataFrame:
    rows = [
        (f"{section}.{key}", str(value)) for section, values in cfg.to_dict().items() for key, value in values.items()
    ]
    return pd.DataFrame(rows, columns=["setting", "value"])


def write_workbook(path: Path, sheets: dict[str, pd.DataFrame], overwrite: bool = False) -> Path:
    """Write sheets atomically; refuse to replace an existing workbook unless `overwrite`."""
    path = Path(path)
    if path.suffix != ".xlsx":
        raise TimnetError(f"{path}: results are written as .xlsx — give a file name ending in .xlsx")
    if path.exists() and not overwrite:
        raise TimnetError(f"{path} already exists — earlier results are never overwritten; choose another file name")
    with atomic_path(path) as tmp:
        with pd.ExcelWriter(tmp, engine="openpyxl") as writer:
            for name, frame in sheets.items():
                frame.to_excel(writer, sheet_name=name[:31], index=frame.index.name is not None)
    return path


def write_evaluation(path: Path, ev, cfg: Config, source: str) -> Path:
    folds = ev.folds.copy()
    overall = {"fold": "overall", "n_test": int(folds.n_test.sum()), "missing": ev.missing, **ev.overall}
    folds = pd.concat([folds, pd.DataFrame([overall])], ignore_index=True)
    info = pd.DataFrame({"setting": ["weights"], "value": [source]})
    return write_workbook(
        path, {"folds": folds, "predictions": ev.predictions, "config": pd.concat([info, config_sheet(cfg)])}
    )


def summary_row(
    run_id: str, cfg: Config, folds: pd.DataFrame, seeds: list[int], facts: FeatureFacts, folds_made: int
) -> dict:
    """One line of the cross-run summary: mean ± sample std over folds (and seeds), beside the published numbers
    where the run is their setting (`published.not_comparable`; else the reason). `folds_made`: the folds the
    protocol made (fewer than asked where a corpus has fewer speakers or texts)."""
    t = cfg.train
    row = {
        "run": run_id,
        "dataset": cfg.dataset.name,
        "protocol": t.protocol,
        "checkpoint": t.checkpoint_label,
        "folds": folds_made,
        "epochs": t.epochs,
        "seeds": ",".join(map(str, seeds)),
        "utterances": int(folds.n_test.sum()),
    }
    stats = fold_statistics(folds)
    for metric in METRICS:
        per_seed = folds.groupby("seed")[metric].mean() if "seed" in folds else folds[metric]
        row[f"{metric}_mean"] = round(stats[f"{metric}_mean"], 2)
        row[f"{metric}_std"] = round(stats[f"{metric}_std"], 2)
        row[f"{metric}_std_over_seeds"] = round(mean_std(per_seed)[1], 2)
    for source, column in SUMMARY_COLUMNS.items():
        numbers = published_numbers(cfg.published, source)
        if all(math.isnan(v) for v in numbers.values()):
            row |= {f"{column}_{metric}": NOT_PUBLISHED for metric in numbers}
            continue
        reasons = not_comparable(cfg.to_dict(), facts, t.checkpoint, source)
        row |= {f"{column}_{metric}": published_cell(value, reasons) for metric, value in numbers.items()}
    return row


def summary_lines(run_id: str, summary: dict) -> list[str]:
    """A run's result as the CLI and train.ipynb print it; beside it each published number the run may be compared
    with, or why not (nothing where the dataset has none)."""
    s = summary
    protocol = s.get("protocol", "random")
    lines = [
        f"run {run_id}, protocol {protocol}, checkpoint {s['checkpoint']}: WAR {s['war_mean']:.2f} ± {s['war_std']:.2f}"
        f"  UAR {s['uar_mean']:.2f} ± {s['uar_std']:.2f}  macro-F1 {s['f1_mean']:.2f} ± {s['f1_std']:.2f} "
        "(mean ± sample std over folds)"
    ]
    published = []
    for source, column in SUMMARY_COLUMNS.items():
        war, uar = s.get(f"{column}_war", NOT_PUBLISHED), s.get(f"{column}_uar", NOT_PUBLISHED)
        if war == uar == NOT_PUBLISHED:
            continue
        what = SUMMARY_LABELS[source]
        if isinstance(war, str) and war.startswith("not comparable"):
            published.append(f"{what}: {war}")
        else:
            published.append(f"{what}: WAR {number_text(war)} · UAR {number_text(uar)}")
    notes = [s[key] for key in ("leakage", "calibration") if s.get(key)]
    return lines + ([" · ".join(published)] if published else []) + notes


def append_summary(results_dir: Path, row: dict) -> Path:
    """Add (or refresh, for the same run id) one row of `Results/Accuracy Analysis Summary.xlsx`."""
    path = Path(results_dir) / SUMMARY_NAME
    with exclusive(path):  # runs finishing at the same time must not drop each other's row
        table = pd.read_excel(path, sheet_name="runs") if path.exists() else pd.DataFrame()
        if len(table) and "run" in table:
            table = table[table.run.astype(str) != row["run"]]
        table = pd.concat([table, pd.DataFrame([row])], ignore_index=True)
        return write_workbook(path, {"runs": table}, overwrite=True)


def unit_rows(results) -> list[dict]:
    """One row per unit (`run_store.UnitResult`): seed, fold (cell where it has one), test size, chosen epoch, training
    time, WAR/UAR/F1."""
    return [
        {
            "seed": r.seed,
            "fold": r.fold,
            **({"cell": r.cell} if r.cell else {}),
            "n_test": len(r.test_index),
            "epoch": r.epoch,
            "train_seconds": round(r.seconds, 1),
            **r.metrics,
        }
        for r in results
    ]


def fold_table(results, labels: np.ndarray | None = None) -> pd.DataFrame:
    """One row per (seed, fold). A fold made of cells (`speaker-sentence`: `data.splits.Split`) is one row of its
    cells pooled: its scores from their predictions together (`labels`: the feature set's class indices), test
    sizes and training times summed, `epoch` the cells' chosen epochs; so every statistic over folds counts the
    fold once. A protocol without cells: the units' rows as they are."""
    if labels is None or not any(r.cell for r in results):
        return pd.DataFrame(unit_rows(results))
    groups: dict[tuple[int, int], list] = {}
    for r in results:
        groups.setdefault((r.seed, r.fold), []).append(r)
    rows = []
    for (seed, fold), cells in groups.items():
        index = np.concatenate([np.asarray(r.test_index, dtype=np.int64) for r in cells])
        predicted = np.concatenate([r.probs.argmax(1) for r in cells])
        rows.append(
            {
                "seed": seed,
                "fold": fold,
                "cells": len(cells),
                "n_test": len(index),
                "epoch": ",".join(str(r.epoch) for r in cells),
                "train_seconds": round(sum(r.seconds for r in cells), 1),
                **scores(np.asarray(labels)[index], predicted),
            }
        )
    return pd.DataFrame(rows)


def cell_sheet(results) -> dict[str, pd.DataFrame]:
    """{"cells": one row per unit} where folds are made of cells (`fold_table` pools them), else {}."""
    return {"cells": pd.DataFrame(unit_rows(results))} if any(r.cell for r in results) else {}


def run_predictions(manifest: pd.DataFrame, results, classes: list[str]) -> pd.DataFrame:
    """Every unit's test utterances with their predicted class and probabilities, keyed by seed and fold (and cell,
    where folds have cells)."""
    columns = ("file", "stem", "label", "speaker")
    cells = any(r.cell for r in results)
    tables = [
        prediction_table(
            manifest,
            np.asarray(r.test_index, dtype=np.int64),
            r.probs,
            classes,
            columns,
            seed=r.seed,
            fold=r.fold,
            **({"cell": r.cell} if cells else {}),
        )
        for r in results
    ]
    return pd.concat(tables, ignore_index=True)


def run_sheets(
    run_id: str,
    cfg: Config,
    folds: pd.DataFrame,
    predictions: pd.DataFrame,
    caveat: str = "",
    extra: dict[str, pd.DataFrame] | None = None,
) -> dict[str, pd.DataFrame]:
    """The run workbook's sheets: folds (+ mean and std rows), predictions, confusion (pooled, per fold), the
    `extra` sheets (leakage, calibration), config (with the corpus' `caveat` first, e.g. that CASIA's folds are not
    the authors')."""
    classes = cfg.dataset.classes
    per_fold = pd.concat(
        [
            table_confusion(group, classes).stack().rename("count").reset_index().assign(seed=seed, fold=fold)
            for (seed, fold), group in predictions.groupby(["seed", "fold"], sort=True)
        ],
        ignore_index=True,
    )
    stat = fold_statistics(folds)
    stats = pd.DataFrame(
        [{"seed": "", "fold": name, **{m: stat[f"{m}_{name}"] for m in METRICS}} for name in ("mean", "std")]
    )
    meta = pd.DataFrame(
        {
            "setting": ["run", "checkpoint policy", "utterances predicted", "std"],
            "value": [
                run_id,
                cfg.train.checkpoint_label,
                len(predictions),
                "sample standard deviation over the folds (x seeds), ddof=1",
            ],
        }
    )
    if caveat:
        meta = pd.concat([pd.DataFrame({"setting": ["caveat"], "value": [caveat]}), meta], ignore_index=True)
    return {
        "folds": pd.concat([folds, stats], ignore_index=True),
        "predictions": predictions,
        "confusion": table_confusion(predictions, classes),
        "confusion_per_fold": per_fold[["seed", "fold", "true", "predicted", "count"]],
        **(extra or {}),
        "config": pd.concat([meta, config_sheet(cfg)], ignore_index=True),
    }


# --- figures ----------------------------------------------------------------------------------
def pyplot():
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    return plt


def plot_confusion(table: pd.DataFrame, path: Path, title: str) -> Path:
    """Row-normalised confusion heatmap (colour = share of each true class), counts written in the cells."""
    plt = pyplot()
    counts = table.to_numpy()
    shares = counts / np.maximum(counts.sum(axis=1, keepdims=True), 1)
    n = len(table)
    fig, ax = plt.subplots(figsize=(1.1 * n + 2, 1.0 * n + 1.5))
    image = ax.imshow(shares, cmap="Blues", vmin=0, vmax=1)
    for i in range(n):
        for j in range(n):
            ax.text(
                j,
                i,
                f"{counts[i, j]}\n{100 * shares[i, j]:.0f}%",
                ha="center",
                va="center",
                fontsize=8,
                color="white" if shares[i, j] > 0.6 else "black",
            )
    ax.set_xticks(range(n), table.columns, rotation=45, ha="right")
    ax.set_yticks(range(n), table.index)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title, fontsize=10)
    fig.colorbar(image, ax=ax, fraction=0.046, label="share of the true class")
    fig.tight_layout()
    return save_figure(fig, path)


def plot_accuracies(ax, history: pd.DataFrame, markersize: float | None = None) -> None:
    """Train, validation and (logged) test accuracy per epoch on `ax`; a series logged only every few epochs
    (the test fold's) is drawn with dots."""
    for col, label in (("train_acc", "train"), ("val_acc", "validation"), ("test_acc", "test (logged only)")):
        known = history[history[col].notna()] if col in history else history.iloc[:0]
        if len(known):
            marker = "." if len(known) < len(history) else None
            ax.plot(known.epoch, known[col], label=label, marker=marker, markersize=markersize)


def plot_history(history: pd.DataFrame, path: Path, title: str, chosen_epoch: int) -> Path:
    """One unit's training loss, and its train / validation / (logged) test accuracy per epoch."""
    plt = pyplot()
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(10, 3.6))
    ax_loss.plot(history.epoch, history.loss, label="train loss")
    ax_loss.set_xlabel("epoch")
    ax_loss.set_ylabel("loss")
    plot_accuracies(ax_acc, history)
    ax_acc.axvline(chosen_epoch, color="grey", linestyle=":", label=f"chosen epoch {chosen_epoch}")
    ax_acc.set_xlabel("epoch")
    ax_acc.set_ylabel("accuracy %")
    ax_acc.legend(fontsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    return save_figure(fig, path)


def plot_curves_grid(histories: dict[str, pd.DataFrame], path: Path, title: str) -> Path:
    """Every unit's training loss and accuracies in one figure, one panel per unit."""
    plt = pyplot()
    cols = min(5, len(histories))
    rows = -(-len(histories) // cols)
    width = max(3.2 * cols, 0.1 * len(title))  # inches: a figure of few folds still fits its title
    fig, axes = plt.subplots(rows, cols, figsize=(width, 2.6 * rows), squeeze=False, sharey=True)
    for ax, (unit, history) in zip(axes.flat, histories.items()):
        plot_accuracies(ax, history, markersize=3)
        ax.set_title(unit, fontsize=9)
        ax.set_xlabel("epoch", fontsize=8)
    for ax in list(axes.flat)[len(histories) :]:
        ax.axis("off")
    axes[0, 0].set_ylabel("accuracy %")
    axes[0, 0].legend(fontsize=7)
    fig.suptitle(title)
    fig.tight_layout()
    return save_figure(fig, path)


def plot_reliability(bins: pd.DataFrame, path: Path, title: str) -> Path:
    """Reliability diagram: accuracy against mean confidence per bin (before and, if fitted, after temperature
    scaling), the diagonal where they agree, and how many utterances each bin holds."""
    plt = pyplot()
    fig, (ax, ax_n) = plt.subplots(2, 1, figsize=(5, 5.6), height_ratios=(3, 1), sharex=True)
    ax.plot([0, 1], [0, 1], color="grey", linestyle=":", label="perfectly calibrated")
    for when, group in bins.groupby("probabilities", sort=False):
        used = group[group["count"] > 0]
        ax.plot(used.confidence, used.accuracy, marker="o", label=f"{when} temperature scaling")
        ax_n.bar((group.lower + group.upper) / 2, group["count"], width=(group.upper - group.lower) * 0.9, alpha=0.5)
    ax.set_ylabel("accuracy")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.legend(fontsize=8)
    ax.set_title(title, fontsize=9)
    ax_n.set_xlabel("confidence (top probability)")
    ax_n.set_ylabel("utterances")
    fig.tight_layout()
    return save_figure(fig, path)


def save_figure(fig, path: Path) -> Path:
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=100, format="png")
    pyplot().close(fig)
    return path


def png_bytes(fig, dpi: int = 90) -> bytes:
    """A figure as PNG bytes (to embed in a page), closed."""
    import io

    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=dpi)
    pyplot().close(fig)
    return buffer.getvalue()
