"""Write the three thin notebooks at the repo root (no outputs). Run after changing configs/:

python tools/make_notebooks.py
"""

from __future__ import annotations

from pathlib import Path

import nbformat
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

from timnet import load_config
from timnet.config import known_datasets

ROOT = Path(__file__).resolve().parents[1]


def settings_table() -> str:
    rows = [
        "| dataset | signal length (samples @ 22.05 kHz) | MFCC frames | classes | KFold seed | levels |",
        "|---|---|---|---|---|---|",
    ]
    for name in known_datasets():
        c = load_config(name)
        rows.append(
            f"| {name} | {c.features.signal_length} | {c.features.frames} | {', '.join(c.dataset.classes)} | "
            f"{c.train.seed} | {c.model.levels} |"
        )
    return "\n".join(rows)


def parameters(source: str):
    cell = new_code_cell(source.strip())
    cell.metadata["tags"] = ["parameters"]
    return cell


def notebook(title: str, intro: str, params: str, cells: list[str]) -> nbformat.NotebookNode:
    nb = new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nb.cells = [
        new_markdown_cell(
            f"# {title}\n\n{intro.strip()}\n\n**Per-dataset settings** (from `configs/<dataset>.toml`):\n\n"
            f"{settings_table()}\n\nEdit only the next cell (tagged `parameters`), then run all cells."
        ),
        parameters(params),
    ] + [new_code_cell(c.strip()) for c in cells]
    for i, cell in enumerate(nb.cells):  # stable ids: regenerating writes the same file
        cell.id = f"cell-{i}"
    return nb


def generated() -> dict[str, str]:
    """The notebooks' file contents as this script writes them, by file name."""
    return {
        f"{name}.ipynb": nbformat.writes(nb) + "\n"
        for name, nb in (("preprocess", PREPROCESS), ("train", TRAIN), ("tsne", TSNE))
    }


PREPROCESS = notebook(
    "1 · Preprocess: audio → MFCC",
    """
Reads a corpus in the layout it is distributed in (`Datasets/<DATASET>/…`; see README, *Corpora*) and writes
`MFCC/<DATASET>.npy` in the authors' format (`{"x": [N, T, 39], "y": one-hot}`), `MFCC/<DATASET>.csv` (one row
per utterance with file name, label, speaker; skipped files with the reason) and `MFCC/<DATASET>.json` (settings).
The recipe is the authors': 22.05 kHz (soxr_hq), centred pad/crop to the signal length, 39 MFCCs.
Running it again with nothing changed does nothing.
CASIA: set `data_dir` to the authors' `CASIA.npy` and `trust_pickle = True`.
""",
    """
dataset = "EMODB"        # CASIA, EMODB, EMOVO, IEMOCAP, RAVDESS, SAVEE, or a path to your own .toml
data_dir = None          # default: Datasets/<dataset>
mfcc_dir = "MFCC"
workers = None           # processes; None = all cores
skip_bad = False         # True: skip unreadable/silent/misnamed files and list them in the manifest
overwrite = False        # True: replace features made from other data or settings
trust_pickle = False     # only for a pickled .npy you trust (the authors' CASIA features)
overrides = {}           # any config value, e.g. {"features.res_type": "soxr_vhq"}
""",
    [
        """
from pathlib import Path

import pandas as pd

import timnet
from timnet.features import preprocess

cfg = timnet.load_config(dataset, overrides)
result = preprocess(cfg, Path(data_dir or f"Datasets/{cfg.dataset.name}"), Path(mfcc_dir), workers=workers,
                    skip_bad=skip_bad, overwrite=overwrite, trust_pickle=trust_pickle)
state = "(up to date, nothing recomputed)" if result.up_to_date else "written"
print(f"{result.npy}: {result.count} utterances", state)
pd.DataFrame(result.skipped, columns=["skipped file", "reason"])
""",
        """
manifest = pd.read_csv(result.npy.with_suffix(".csv"), dtype=str, keep_default_na=False)
manifest[manifest.status == "ok"].groupby("label", sort=False).size().rename("utterances").to_frame()
""",
    ],
)

TRAIN = notebook(
    "2 · Train and evaluate over k folds",
    """
Trains one TIM-Net per fold from `MFCC/<DATASET>.npy` and evaluates it on the held-out fold.
Writes `Models/<run>/fold_<k>.pt`, `logs/<run>/` (per-epoch CSV and curves), `Results/<run>.xlsx` (per-fold metrics,
per-utterance predictions with file names, confusion matrix, config) and a row in
`Results/Accuracy Analysis Summary.xlsx`.
`protocol`: `random` = the authors' KFold (their order and seed), `speaker` = speaker-independent folds.
`checkpoint`: `last` (authors' 2023 numbers), `best-val` (validation carved from the training part),
`best-test` (the paper's protocol: optimistic, labelled so). Interrupted? Set `resume` to the run id and run again.
""",
    """
dataset = "EMODB"
mfcc_dir = "MFCC"
folds = 10
epochs = 500
protocol = "random"      # random | speaker
checkpoint = "last"      # last | best-val | best-test
seeds = None             # e.g. [46, 1, 2]: repeat training on the same folds, mean ± std; None = the dataset's seed
patience = 0             # early stopping on validation accuracy; 0 = off
device = "auto"          # auto | cpu | cuda | mps
resume = None            # a run id to continue after an interruption
models_dir, logs_dir, results_dir = "Models", "logs", "Results"
overrides = {}           # any config value, e.g. {"train.batch_size": 32}
""",
    [
        """
from pathlib import Path

import pandas as pd
from IPython.display import Image, display

import timnet
from timnet.train import run_training

settings = {"train.folds": folds, "train.epochs": epochs, "train.protocol": protocol, "train.checkpoint": checkpoint,
            "train.patience": patience, "train.seeds": seeds or []}
cfg = None if resume else timnet.load_config(dataset, {**overrides, **settings})
mfcc = None if resume else Path(mfcc_dir) / f"{cfg.dataset.name}.npy"
result = run_training(cfg, mfcc, Path(models_dir), Path(logs_dir), Path(results_dir), resume=resume, device=device)
result.folds
""",
        """
s = result.summary
print(f"run {result.run_id} ({s['checkpoint']}): WAR {s['war_mean']:.2f} ± {s['war_std']:.2f}  "
      f"UAR {s['uar_mean']:.2f} ± {s['uar_std']:.2f}  macro-F1 {s['f1_mean']:.2f} ± {s['f1_std']:.2f}")
print(f"paper (best epoch on test fold): WAR {s['paper_war']}  ·  "
      f"authors' 2023 update (last epoch): WAR {s['authors_2023_war']}")
print("mean ± sample standard deviation (ddof=1) over the folds")
display(Image(filename=str(Path(logs_dir) / result.run_id / "curves.png")))  # every fold's curves in one figure
""",
        """
display(Image(filename=str(result.confusion_png)))  # all test folds pooled; counts and row shares
""",
    ],
)

TSNE = notebook(
    "3 · t-SNE of the penultimate layer",
    """
Embeds every utterance with the fold model for which it was a test sample (the [N, 39] weighted sum over levels),
projects with t-SNE and writes a PNG and a CSV of coordinates with file names under `Results/<run>/`.
Leave `run_id = None` to use the latest run of `dataset`; or set `weights` to the authors' zip to draw their model.
""",
    """
dataset = "EMODB"
run_id = None            # None = the latest run of dataset
weights = None           # or the authors' weights zip, e.g. "../shared/data/timnet-weights/EMODB_46.zip"
data = None              # with weights: corpus folder or MFCC .npy (default MFCC/<dataset>.npy)
perplexity = 30.0
tsne_seed = 0           # t-SNE's random state
speaker_markers = False
models_dir, results_dir = "Models", "Results"
""",
    [
        """
from pathlib import Path

from IPython.display import Image, display

import timnet
from timnet.features import load_or_extract
from timnet.runs import latest_run
from timnet.tsne import embeddings_of, write_tsne

if weights:
    cfg = timnet.load_config(dataset)
    features, _ = load_or_extract(cfg, Path(data or f"MFCC/{cfg.dataset.name}.npy"))
    t = embeddings_of(weights=Path(weights), config=cfg, features=features, results_root=Path(results_dir))
else:
    run_id = run_id or latest_run(Path(models_dir), dataset)
    t = embeddings_of(run=run_id, models_root=Path(models_dir), results_root=Path(results_dir))
png, csv = write_tsne(t.out_dir, t.config, t.features, t.embeddings, t.title, perplexity, tsne_seed, speaker_markers,
                      t.notes)
print(f"silhouette by emotion: {t.silhouette:.2f} ({t.notes['align']})")
print(f"{len(t.features)} utterances -> {png}, {csv}")
display(Image(filename=str(png)))
"""
    ],
)

if __name__ == "__main__":
    for name, text in generated().items():
        (ROOT / name).write_text(text, encoding="utf-8")
        print(f"wrote {name}")
