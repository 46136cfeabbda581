"""Experiment sweeps: a grid of runs, all their units submitted at once (local pool or Ray), one workbook.

    timnet sweep examples/sweep_emodb.toml [--backend ray] [--resume SWEEP] [--status SWEEP]

A grid file (TOML):
    name = "emodb_protocols"                      # the sweep id's prefix (default: the file's name)
    [runs]                                        # what every run shares
    dataset = "EMODB"
    mfcc = "MFCC/EMODB.npy"                       # default MFCC/<DATASET>.npy (relative to the working folder)
    set = { "train.folds" = 10, "train.epochs" = 500 }
    [grid]                                        # one run per combination, in this order
    dataset = ["EMODB", "RAVDESS"]
    protocol = ["random", "speaker"]              # short for "train.protocol"
    checkpoint = ["last", "best-val"]             # "train.checkpoint"
    seed = [46, 1, 2]                             # one run per training seed ("train.seeds" = [s])
    "train.lr" = [0.001, 0.0005]                  # any config value
    evaluate_on = ["RAVDESS", "EMOVO"]            # cross-corpus cells (here or in [runs]; not a grid dimension);
                                                  # audio from Datasets/<NAME> or [runs] evaluate_data = {NAME = "dir"}

The sweep's record, `Results/sweeps/<sweep>.json`, names its runs (one run id each); its workbook,
`Results/sweeps/<sweep>.xlsx`, has one row per run; every run also gets its row in the summary workbook. With
`evaluate_on`, every run is also scored on each other corpus listed (`analysis.cross_corpus`): sheets
`cross_corpus` (one row per cell) and `cross_corpus_uar` (source x target), and a workbook and summary row per cell.
"""

from __future__ import annotations

import itertools
import json
from datetime import datetime
from pathlib import Path

import pandas as pd
import torch

from ..analysis.cross_corpus import grid_targets, sweep_cells
from ..core.atomic import write_json
from ..core.config import TRAIN_SHORTCUTS, load_config, read_toml
from ..core.errors import TimnetError
from ..core.locks import sole_writer_of_all
from ..core.metrics import METRICS
from ..core.report import write_workbook
from ..training.execution import Execution
from ..training.run import execute, finish_run, prepare_run
from ..training.run_store import Roots, read_run_record

ALIASES = TRAIN_SHORTCUTS  # grid keys such as protocol = [...] stand for train.protocol


def _setting(path: Path, key: str) -> str:
    if key in ("dataset", "seed"):
        return key
    name = ALIASES.get(key, key)
    if "." not in name:
        raise TimnetError(
            f"{path}: grid key {key!r} is not a setting — use dataset, seed, {', '.join(ALIASES)} "
            'or SECTION.KEY (e.g. "train.lr")'
        )
    return name


def _check_types(path: Path, data: dict) -> None:
    """The grid file's parts are of the kinds load_grid reads (a table where a table belongs, text where text)."""
    for section in ("runs", "grid"):
        if not isinstance(data.get(section, {}), dict):
            raise TimnetError(f"{path}: {section} must be a [{section}] table, got {data[section]!r}")
    runs = data.get("runs", {})
    for key in ("dataset", "mfcc"):
        if not isinstance(runs.get(key, ""), str):
            raise TimnetError(f"{path}: [runs] {key} must be a string, got {runs[key]!r}")
    if not isinstance(runs.get("set", {}), dict) or not isinstance(data.get("name", ""), str):
        raise TimnetError(f'{path}: name must be a string and [runs] set a table, e.g. set = {{ "train.epochs" = 2 }}')


def load_grid(path: Path) -> dict:
    """The parsed grid file, its keys checked: {name, dataset, mfcc, set, grid: {setting: [values]}}."""
    path = Path(path)
    data = read_toml(path, "grid file")
    unknown = set(data) - {"name", "runs", "grid"}
    if unknown:
        raise TimnetError(f"{path}: unknown section(s) {sorted(unknown)}; a grid file has name, [runs] and [grid]")
    _check_types(path, data)
    runs = data.get("runs", {})
    grid = {}
    cells = grid_targets(path, data)  # evaluate_on: cross-corpus cells, not a dimension of the grid
    for key, values in data.get("grid", {}).items():
        if key == "evaluate_on":
            continue
        if not isinstance(values, list) or not values:
            raise TimnetError(f"{path}: [grid] {key} must be a non-empty list of values, got {values!r}")
        grid[_setting(path, key)] = values
    if "dataset" not in grid and "dataset" not in runs:
        raise TimnetError(f'{path}: say which dataset: dataset = "EMODB" in [runs] (or a list in [grid])')
    fixed = {_setting(path, k): v for k, v in runs.get("set", {}).items()}
    return {
        "name": data.get("name", path.stem),
        "dataset": runs.get("dataset"),
        "mfcc": runs.get("mfcc"),
        "set": fixed,
        "grid": grid,
        **cells,
    }


def expand(grid: dict) -> list[dict]:
    """One spec per combination: {dataset, values (the grid's choice), overrides (for load_config)}."""
    keys = list(grid["grid"])
    specs = []
    for combo in itertools.product(*(grid["grid"][k] for k in keys)):
        values = dict(zip(keys, combo))
        dataset = values.get("dataset", grid["dataset"])
        overrides = {**grid["set"], **{k: v for k, v in values.items() if k not in ("dataset", "seed")}}
        if "seed" in values:
            overrides["train.seeds"] = [values["seed"]]
        specs.append({"dataset": dataset, "values": values, "overrides": overrides})
    return specs


def _record_path(roots: Roots, sweep_id: str) -> Path:
    return roots.sweeps / f"{sweep_id}.json"


def read_sweep(roots: Roots, sweep_id: str) -> dict:
    path = _record_path(roots, sweep_id)
    if not path.is_file():
        known = ", ".join(sorted(p.stem for p in roots.sweeps.glob("*.json"))) or "none yet"
        raise TimnetError(f"{path}: no such sweep (sweeps in {roots.sweeps}: {known})")
    return json.loads(path.read_text())


def start_sweep(grid_file: Path, roots: Roots, device: str) -> tuple[dict, list]:
    """Create every run of the grid (record first, so an interrupted start resumes) -> (record, prepared runs)."""
    grid = load_grid(grid_file)
    specs = expand(grid)
    configs = [load_config(s["dataset"], s["overrides"]) for s in specs]  # every error before any run exists
    sweep_id = f"{grid['name']}_{datetime.now():%Y%m%d-%H%M%S}"
    while _record_path(roots, sweep_id).exists():
        sweep_id += "_2"
    record = {"sweep": sweep_id, "grid_file": str(grid_file), "grid": grid, "created": datetime.now().isoformat()}
    record["runs"] = []
    runs = []
    for spec, cfg in zip(specs, configs):
        mfcc = Path(grid["mfcc"] or Path("MFCC") / f"{cfg.dataset.name}.npy")
        if not mfcc.is_file():
            raise TimnetError(f"{mfcc}: no features — run `timnet preprocess --dataset {cfg.dataset.name}` first")
        run = prepare_run(cfg, mfcc, roots, device=device)
        runs.append(run)
        record["runs"].append({"run_id": run.paths.run_id, **spec})
        write_json(_record_path(roots, sweep_id), record)
    return record, runs


def resume_sweep(sweep_id: str, roots: Roots, device: str) -> tuple[dict, list]:
    record = read_sweep(roots, sweep_id)
    return record, reopen_runs(record, roots, device)


def reopen_runs(record: dict, roots: Roots, device: str) -> list:
    """The runs a sweep's or study's record names, prepared to train what is left of them."""
    return [prepare_run(None, None, roots, r["run_id"], device) for r in record["runs"]]


def train_runs(runs: list, kind: str, name: str, device: str, how: Execution) -> list:
    """Every unit of `runs` (those of sweep or study `name`) at once on `device`, then each run's outputs ->
    [RunResult]. A sweep or study resumed while it still runs is refused (one writer per run)."""
    writers = [(run.paths.models, f"run {run.paths.run_id} of {kind} {name}") for run in runs]
    with sole_writer_of_all(writers):
        results = execute(runs, device, how, name)
        return [finish_run(run.cfg, run.features, run.paths, units) for run, units in zip(runs, results)]


def run_sweep(
    grid_file: Path | None = None, resume: str | None = None, how: Execution | None = None
) -> tuple[dict, pd.DataFrame, Path]:
    """Start (or resume) a sweep, train all its units at once, then write each run's outputs and the sweep's
    workbook -> (record, one row per run, workbook path)."""
    how = how or Execution()
    roots, device = how.roots, how.resolved_device()
    record, runs = resume_sweep(resume, roots, device) if resume else start_sweep(grid_file, roots, device)
    finished = train_runs(runs, "sweep", record["sweep"], device, how)
    table = pd.DataFrame([sweep_row(entry, run.summary) for entry, run in zip(record["runs"], finished)])
    sheets = {"runs": table, "grid": _grid_sheet(record)}
    if record["grid"].get("evaluate_on"):  # cross-corpus cells: each run on each other corpus
        sheets |= sweep_cells(record, roots, how.workers, how.progress)
    workbook = write_workbook(roots.sweeps / f"{record['sweep']}.xlsx", sheets, overwrite=True)
    return record, table, workbook


def sweep_row(entry: dict, summary: dict) -> dict:
    """One run of the sweep: its id, what the grid chose, protocol and policy, WAR/UAR/F1 mean ± std."""
    row = {"run": entry["run_id"], "dataset": summary["dataset"]}
    shown = ("dataset", "train.protocol", "train.checkpoint")  # columns of their own
    row |= {k: str(v) for k, v in sorted(entry["values"].items()) if k not in shown}  # as the record stores them
    row |= {"protocol": summary["protocol"], "checkpoint": summary["checkpoint"], "utterances": summary["utterances"]}
    for metric in METRICS:
        row[f"{metric}_mean"], row[f"{metric}_std"] = summary[f"{metric}_mean"], summary[f"{metric}_std"]
    row["complete"] = summary.get("complete", True)
    return row


def _grid_sheet(record: dict) -> pd.DataFrame:
    grid = record["grid"]
    rows = [("sweep", record["sweep"]), ("grid file", record["grid_file"]), ("created", record["created"])]
    rows += [(f"runs: {k}", str(v)) for k, v in grid["set"].items()]
    rows += [(f"grid: {k}", str(v)) for k, v in grid["grid"].items()]
    return pd.DataFrame(rows, columns=["setting", "value"])


def sweep_status(sweep_id: str, roots: Roots) -> pd.DataFrame:
    """How far each run of a sweep is: units finished, epochs trained (from the per-epoch state files)."""
    rows = []
    for entry in read_sweep(roots, sweep_id)["runs"]:
        run = roots.models / entry["run_id"]
        record = read_run_record(run)
        epochs = record["config"]["train"]["epochs"]
        units = [u["unit"] for u in record["folds"]]
        finished = [u for u in units if (run / f"{u}.pt").exists()]
        trained = epochs * len(finished)
        for u in set(units) - set(finished):
            state = run / "in_progress" / f"{u}.pt"
            if state.exists():
                try:
                    trained += torch.load(state, map_location="cpu", weights_only=True)["progress"]["epoch"]
                except Exception:  # noqa: BLE001 — being written right now: count it next time
                    pass
        rows.append(
            {
                "run": entry["run_id"],
                **{k: str(v) for k, v in entry["values"].items()},
                "units done": f"{len(finished)}/{len(units)}",
                "epochs": f"{trained}/{epochs * len(units)}",
            }
        )
    return pd.DataFrame(rows)
