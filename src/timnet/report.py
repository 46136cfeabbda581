"""Spreadsheets: one workbook per run, and the cross-run `Accuracy Analysis Summary.xlsx`.

Workbooks are written to a temporary file and renamed, so a crash never leaves half a workbook,
and a run's workbook is never overwritten (each run has its own id).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from .atomic import atomic_path, exclusive
from .config import Config
from .errors import TimnetError
from .metrics import METRICS, fold_statistics, mean_std

SUMMARY_NAME = "Accuracy Analysis Summary.xlsx"


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


def summary_row(run_id: str, cfg: Config, folds: pd.DataFrame, seeds: list[int]) -> dict:
    """One line of the cross-run summary: mean ± sample std over folds (and seeds), beside published numbers."""
    t, p = cfg.train, cfg.published
    row = {
        "run": run_id,
        "dataset": cfg.dataset.name,
        "protocol": t.protocol,
        "checkpoint": t.checkpoint_label,
        "folds": t.folds,
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
    row.update(
        {
            "paper_war": p.paper_war,
            "paper_uar": p.paper_uar,
            "authors_2023_war": p.update_2023_war,
            "authors_2023_uar": p.update_2023_uar,
        }
    )
    return row


def append_summary(results_dir: Path, row: dict) -> Path:
    """Add (or refresh, for the same run id) one row of `Results/Accuracy Analysis Summary.xlsx`."""
    path = Path(results_dir) / SUMMARY_NAME
    with exclusive(path):  # runs finishing at the same time must not drop each other's row
        table = pd.read_excel(path, sheet_name="runs") if path.exists() else pd.DataFrame()
        if len(table) and "run" in table:
            table = table[table.run.astype(str) != row["run"]]
        table = pd.concat([table, pd.DataFrame([row])], ignore_index=True)
        return write_workbook(path, {"runs": table}, overwrite=True)


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


def plot_curves_grid(histories: dict[str, pd.DataFrame], path: Path, title: str) -> Path:
    """Every unit's training loss and accuracies in one figure, one panel per unit."""
    plt = pyplot()
    cols = min(5, len(histories))
    rows = -(-len(histories) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.2 * cols, 2.6 * rows), squeeze=False, sharey=True)
    for ax, (unit, history) in zip(axes.flat, histories.items()):
        for col, label in (("train_acc", "train"), ("val_acc", "validation"), ("test_acc", "test (logged only)")):
            known = history[history[col].notna()] if col in history else history.iloc[:0]
            if len(known):
                ax.plot(
                    known.epoch,
                    known[col],
                    label=label,
                    marker="." if len(known) < len(history) else None,
                    markersize=3,
                )
        ax.set_title(unit, fontsize=9)
        ax.set_xlabel("epoch", fontsize=8)
    for ax in list(axes.flat)[len(histories) :]:
        ax.axis("off")
    axes[0, 0].set_ylabel("accuracy %")
    axes[0, 0].legend(fontsize=7)
    fig.suptitle(title)
    fig.tight_layout()
    return save_figure(fig, path)


def save_figure(fig, path: Path) -> Path:
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=100, format="png")
    pyplot().close(fig)
    return path
