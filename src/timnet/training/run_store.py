"""The run store: what a training run is on disk, and how it is read back.

    Models/<run>/config.json            the run record (schema below), also copied to logs/<run>/
    Models/<run>/<unit>.pt              a finished unit: weights, config, metrics, test predictions, history
    Models/<run>/in_progress/<unit>.pt  a unit's per-epoch state (written by `train`), removed when it is finished
    Models/<run>/writer.lock, .json     held by the one process training the run (`locks.sole_writer`)
    logs/<run>/<unit>.csv, <unit>.png   per-epoch history and curves
    Results/<run>.xlsx                  the run workbook (`report`)

Run ids are `<DATASET>_<protocol>_<checkpoint>_<yyyymmdd-hhmmss>[_n]`; a unit (one fold of one seed) is
`fold_<k>`, or `fold_<k>_seed<s>` when the run has several seeds; under `speaker-sentence` a fold has cells
(`data.splits.Split`), one unit each: `fold_<k>_cell<j>[_seed<s>]`. The record holds `run_id`, `config` (the
effective config), `mfcc` (absolute path) and `mfcc_sha256` (resume refuses a changed file), `device`,
`created`, and `folds`: one entry per unit with `unit`, `fold`, `seed` (and `cell` where there are cells) and
`test_stems`.
"""

from __future__ import annotations

import io
import json
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from ..core.atomic import write_bytes, write_json
from ..core.config import Config
from ..core.errors import TimnetError
from ..data.feature_files import sha256
from ..model.network import TIMNet, TIMNetConfig

RECORD = "config.json"
# What a finished unit's file holds (`torch.load(path, weights_only=True)`).
UNIT_KEYS = frozenset(
    {
        "state_dict",
        "config",
        "model_config",
        "fold",
        "seed",
        "metrics",
        "epoch",
        "seconds",
        "checkpoint",
        "optimistic",
        "test_index",
        "confusion",
        "test_stems",
        "test_probs",
        "history",
        "temperature",  # train.calibrate: T fitted on the validation part, else None (absent in older files)
        "also",  # {policy: {metrics, epoch, test_probs}}: the last epoch where best-val/best-test chose another
    }
)


@dataclass
class Roots:
    """The three top folders runs go to (the CLI's --models/--logs/--results)."""

    models: Path = Path("Models")
    logs: Path = Path("logs")
    results: Path = Path("Results")

    @property
    def sweeps(self) -> Path:
        return self.results / "sweeps"

    def run(self, run_id: str) -> "RunPaths":
        return RunPaths.under(run_id, self.models, self.logs, self.results)


@dataclass
class RunPaths:
    run_id: str
    models: Path
    logs: Path
    results: Path

    @classmethod
    def under(cls, run_id: str, models_root: Path, logs_root: Path, results_root: Path) -> "RunPaths":
        return cls(run_id, Path(models_root) / run_id, Path(logs_root) / run_id, Path(results_root))

    @property
    def workbook(self) -> Path:
        return self.results / f"{self.run_id}.xlsx"

    def unit_file(self, unit: str) -> Path:
        return self.models / f"{unit}.pt"

    def state_file(self, unit: str) -> Path:
        return self.models / "in_progress" / f"{unit}.pt"


def unit_name(fold: int, seed: int, several_seeds: bool, cell: int = 0) -> str:
    return f"fold_{fold}" + (f"_cell{cell}" if cell else "") + (f"_seed{seed}" if several_seeds else "")


def new_run_id(cfg: Config, models_root: Path) -> str:
    base = f"{cfg.dataset.name}_{cfg.train.protocol}_{cfg.train.checkpoint}_{datetime.now():%Y%m%d-%H%M%S}"
    run_id, n = base, 1
    while (Path(models_root) / run_id).exists():
        n += 1
        run_id = f"{base}_{n}"
    return run_id


def latest_run(models_root: Path, dataset: str) -> str:
    """The most recently started run of a dataset (for notebooks that follow a training run)."""
    runs = sorted(
        (p for p in Path(models_root).glob(f"{dataset}_*") if (p / RECORD).is_file()), key=lambda p: p.stat().st_mtime
    )
    if not runs:
        raise TimnetError(
            f"{models_root}: no {dataset} run yet — run train.ipynb (or `timnet train`) first, or set run_id"
        )
    return runs[-1].name


def run_dir(run: str | Path, models_root: Path = Path("Models")) -> Path:
    """A run's folder from its id (under models_root) or its path; one clear error if it is not a run."""
    path = Path(run) if Path(run).is_dir() else Path(models_root) / str(run)
    if not (path / RECORD).is_file():
        raise TimnetError(f"{path}: not a timnet run (no {RECORD}) — give a run id from {models_root}/")
    return path


def read_run_record(path: Path) -> dict:
    """A run's record (schema above) from its folder."""
    return json.loads((Path(path) / RECORD).read_text())


def create_run(paths: RunPaths, cfg: Config, mfcc: Path, device: str, units: list[dict]) -> dict:
    """Make the run's folders and write its record (in Models/ and, for people browsing logs, in logs/)."""
    record = {
        "run_id": paths.run_id,
        "config": cfg.to_dict(),
        "mfcc": str(Path(mfcc).resolve()),
        "mfcc_sha256": sha256(mfcc),
        "device": device,
        "created": datetime.now().isoformat(timespec="seconds"),
        "folds": units,
    }
    paths.models.mkdir(parents=True)
    paths.logs.mkdir(parents=True, exist_ok=True)
    write_json(paths.models / RECORD, record)
    write_json(paths.logs / RECORD, record)
    return record


def open_run(models_root: Path, run_id: str) -> dict:
    """The record of a run to resume, refused when its MFCC file changed (its folds would point at other utterances)."""
    path = Path(models_root) / run_id
    if not (path / RECORD).is_file():
        raise TimnetError(f"{path}: no run to resume ({RECORD} missing) — see the run ids in {models_root}")
    record = read_run_record(path)
    mfcc = Path(record["mfcc"])
    if not features_unchanged(record):
        raise TimnetError(
            f"{mfcc} is missing or changed since run {run_id} started, so its folds would point at other "
            "utterances — restore that file, or start a new run"
        )
    return record


def features_unchanged(record: dict) -> bool:
    """Whether the run's MFCC file is still there, as it was when the run started (its folds point into it)."""
    mfcc = Path(record["mfcc"])
    return mfcc.is_file() and sha256(mfcc) == record["mfcc_sha256"]


def save_pt(path: Path, obj: dict) -> None:
    """torch.save, atomically and durably; serialised in memory first, so a full disk is an OSError (one line
    from `atomic`), not the C++ writer's RuntimeError."""
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    write_bytes(path, buffer.getvalue())


def save_unit(path: Path, unit: dict) -> None:
    missing, extra = UNIT_KEYS - set(unit), set(unit) - UNIT_KEYS
    if missing or extra:
        raise ValueError(f"unit file schema: missing {sorted(missing)}, unknown {sorted(extra)}")
    save_pt(path, unit)


@dataclass
class UnitResult:
    fold: int
    seed: int
    metrics: dict
    epoch: int
    seconds: float
    test_index: list[int]
    probs: np.ndarray
    history: pd.DataFrame = field(repr=False, default_factory=pd.DataFrame)
    temperature: float | None = None  # train.calibrate's T; the calibrated probabilities are calibration.scaled
    cell: int = 0  # the fold's cell (`data.splits.Split`); named by the unit, not saved in its file


def load_result(path: Path, cell: int = 0) -> UnitResult:
    """A finished unit's result from its file; its `cell` is the job's (named by the unit, not kept in the file)."""
    saved = torch.load(path, map_location="cpu", weights_only=True)
    return UnitResult(
        saved["fold"],
        saved["seed"],
        saved["metrics"],
        saved["epoch"],
        saved["seconds"],
        saved["test_index"],
        saved["test_probs"].numpy(),
        pd.DataFrame(saved["history"]),
        saved.get("temperature"),
        cell,
    )


def load_unit_model(path: Path) -> TIMNet:
    """The model of a finished unit's file, in eval mode (`timnet.load_model` chooses which units)."""
    saved = torch.load(path, map_location="cpu", weights_only=True)
    model = TIMNet(TIMNetConfig(**saved["model_config"]))
    model.load_state_dict(saved["state_dict"])
    return model.eval()
