"""Write the three thin notebooks at the repo root (no outputs). Run after changing configs/:

python tools/make_notebooks.py
"""

from __future__ import annotations

from pathlib import Path

import nbformat
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

from timnet import load_config
from timnet.core.config import known_datasets

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


SETUP = """
from pathlib import Path

import pandas as pd
from IPython.display import Image, display

import timnet
from timnet.notebook import show_errors_as_one_line

show_errors_as_one_line()  # an error you can fix: one line naming the setting above, not a traceback
"""

PREPROCESS = notebook(
    "1 · Preprocess: audio → MFCC",
    """
Reads a corpus in the layout it is distributed in (`Datasets/<DATASET>/…`; see README, *Corpora*) and writes
`MFCC/<DATASET>.npy` in the authors' format (`{"x": [N, T, 39], "y": one-hot}`), `MFCC/<DATASET>.csv` (one row
per utterance with file name, label, speaker; skipped files with the reason) and `MFCC/<DATASET>.json` (settings).
The recipe is the authors': 22.05 kHz (soxr_hq), centred pad/crop to the signal length, 39 MFCCs.
Running it again with nothing changed does nothing. `EXAMPLE` (the default) is a synthetic corpus written to
`Datasets/EXAMPLE` when it is not there, so Run All works on a fresh clone.
CASIA: set `data_dir` to the authors' `CASIA.npy` and `trust_pickle = True`.
""",
    """
dataset: str = "EXAMPLE"  # EXAMPLE, CASIA, EMODB, EMOVO, IEMOCAP, RAVDESS, SAVEE, or a path to your own .toml
data_dir: str = None     # the corpus folder (None: Datasets/<dataset>)
mfcc_dir: str = "MFCC"   # where the features go
workers: int = None      # processes for feature extraction (None: all cores)
skip_bad: bool = False   # True: skip unreadable, silent or misnamed files and list them in the manifest
overwrite: bool = False  # True: replace features made from other data or settings
trust_pickle: bool = False  # True only for a pickled .npy you trust (the authors' CASIA features)
overrides: dict = {}     # any config value, e.g. {"features.res_type": "soxr_vhq"}
""",
    [
        SETUP
        + """
from timnet.data.mfcc_extraction import preprocess
from timnet.pipeline import ensure_example, preprocess_lines

cfg = timnet.load_config(dataset, overrides)
data = Path(data_dir or f"Datasets/{cfg.dataset.name}")
if ensure_example(cfg, data):
    print(f"wrote the synthetic example corpus to {data} (for a real corpus: dataset = 'EMODB', and data_dir)")
result = preprocess(cfg, data, Path(mfcc_dir), workers=workers, skip_bad=skip_bad, overwrite=overwrite,
                    trust_pickle=trust_pickle)
print("\\n".join(preprocess_lines(result)))
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
Every training value left at `None` is the dataset's own (`configs/<dataset>.toml`, the table above: EXAMPLE trains
4 folds × 20 epochs in well under a minute, EMODB 10 × 500 as the authors did), so changing `dataset` is all it takes.
`protocol`: `random` = the authors' KFold (their order and seed), `speaker` = speaker-independent folds.
`checkpoint`: `last` (authors' 2023 numbers), `best-val` (validation carved from the training part),
`best-test` (the paper's protocol: optimistic, labelled so). Interrupted? Set `resume` to the run id and run again.
""",
    """
dataset: str = "EXAMPLE"  # as in preprocess.ipynb
mfcc_dir: str = "MFCC"   # where preprocess.ipynb wrote the features
folds: int = None        # None: the dataset's setting (so for every value down to patience)
epochs: int = None       # epochs per fold
batch_size: int = None   # the authors: 64
protocol: str = None     # random (the authors' KFold) or speaker (speaker-independent)
checkpoint: str = None   # last, best-val or best-test (the paper's, optimistic)
seeds: list = None       # e.g. [46, 1, 2]: repeat training on the same folds for mean ± std over seeds
patience: int = None     # early stopping on validation accuracy (0: off)
device: str = "auto"     # auto (CUDA, then MPS, then CPU), cpu, cuda or mps
workers: int = None      # units trained at once in worker processes (None: one per CPU core)
resume: str = None       # a run id to continue after an interruption (leave the values above at None)
models_dir: str = "Models"  # the three output folders
logs_dir: str = "logs"
results_dir: str = "Results"
overrides: dict = {}     # any config value, e.g. {"train.lr": 0.0005}
""",
    [
        SETUP
        + """
from timnet.core.config import shortcut_overrides
from timnet.core.report import summary_lines
from timnet.notebook import execution
from timnet.training.run import check_resume, run_training

settings = shortcut_overrides({"folds": folds, "epochs": epochs, "batch_size": batch_size, "protocol": protocol,
                               "checkpoint": checkpoint, "seeds": seeds, "patience": patience})
check_resume(resume, [*settings, *overrides])
cfg = None if resume else timnet.load_config(dataset, {**overrides, **settings})
mfcc = None if resume else Path(mfcc_dir) / f"{cfg.dataset.name}.npy"
how = execution(models_dir, logs_dir, results_dir, device, workers)  # where the run goes, how its units train
result = run_training(cfg, mfcc, how, resume=resume)
result.folds
""",
        """
print("\\n".join(summary_lines(result.run_id, result.summary)))
display(Image(filename=str(result.curves_png)))  # every fold's curves in one figure
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
dataset: str = "EXAMPLE"  # as in train.ipynb
run_id: str = None       # None: the latest run of dataset
weights: str = None      # or the authors' weights zip, e.g. "../shared/data/timnet-weights/EMODB_46.zip"
data: str = None         # with weights: corpus folder or MFCC .npy (None: MFCC/<dataset>.npy)
perplexity: float = 30.0  # t-SNE's neighbourhood size
tsne_seed: int = 0       # t-SNE's random state
speaker_markers: bool = False  # True: one marker shape per speaker
models_dir: str = "Models"
results_dir: str = "Results"
""",
    [
        SETUP
        + """
from timnet.analysis.tsne import tsne_figure

figure = tsne_figure(dataset, run_id, weights, data, Path(models_dir), Path(results_dir), perplexity, tsne_seed,
                     speaker_markers)
print(f"{figure.summary} -> {figure.png}, {figure.csv}")
display(Image(filename=str(figure.png)))
"""
    ],
)

if __name__ == "__main__":
    for name, text in generated().items():
        (ROOT / name).write_text(text, encoding="utf-8")
        print(f"wrote {name}")
