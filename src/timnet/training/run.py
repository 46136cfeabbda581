"""A training run: plan its units (seed x fold, index sets fixed up front), prepare it on disk (or open it to
resume), execute its units with a backend (`local`: this process or a worker pool; `ray`: a cluster), and finish
it: the run workbook, the summary row, the confusion heatmap and the curves grid.

    run_training(cfg, mfcc_file, how)  ==  finish_run(*execute([prepare_run(cfg, mfcc_file, how.roots)], device, how))

One unit is `unit.train_unit(UnitJob)`; its files and resume rules are in `unit`, the run store in `run_store`.
"""

from __future__ import annotations

import itertools
import shutil
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from ..accel.accelerate import FastPathDeclined
from ..accel.blas import resolve_blas
from ..accel.capture import resolve_capture
from ..accel.packed_model import resolve_pack
from ..core.calibration import calibration_line, calibration_sheets
from ..core.config import Config
from ..core.errors import TimnetError
from ..core.locks import sole_writer
from ..core.metrics import speaker_table, table_confusion
from ..core.report import (
    append_summary,
    cell_sheet,
    fold_table,
    plot_confusion,
    plot_curves_grid,
    plot_reliability,
    run_predictions,
    run_sheets,
    summary_row,
    write_workbook,
)
from ..core.validation import check_choice
from ..data.corpora import corpus_caveat
from ..data.feature_facts import feature_facts
from ..data.feature_files import FeatureSet, load_features
from ..data.leakage import audit, leakage_line
from ..data.shared_features import share_features, without_samples
from ..data.splits import protocol_splits, validation_split
from .cluster import run_units_on_ray
from .compiling import should_compile
from .execution import Execution
from .packed_training import reference_model
from .pool import plan_workers, run_units
from .run_store import Roots, RunPaths, UnitResult, create_run, new_run_id, open_run, read_run_record, unit_name
from .step import step_declines
from .unit import UnitJob


def plan_jobs(cfg: Config, features: FeatureSet, mfcc_file: Path, paths: RunPaths, device: str) -> list[UnitJob]:
    """All (seed, fold[, cell]) units of a run, with their index sets fixed up front (and saved with the run)."""
    t = cfg.train
    seeds = t.run_seeds
    # Folds always come from the dataset's seed (for `random`: the authors' exact test sets);
    # several seeds repeat the training (init, shuffling, dropout, validation carve) on the same folds.
    manifest, splits = protocol_splits(cfg, features.manifest)
    need_val = t.checkpoint == "best-val" or t.patience > 0 or t.calibrate
    held_out = {"speaker": manifest.speaker, "speaker-sentence": manifest.speaker, "sentence": manifest.sentence}
    groups = held_out.get(t.protocol)  # validation holds out what the protocol holds out of the test part
    gpus = torch.cuda.device_count() if device == "cuda" else 0
    jobs = []
    for seed in seeds:
        for split in splits:
            train, test = split.train, split.test
            val = np.array([], dtype=np.int64)
            if need_val:
                train, val = validation_split(train, features.y, groups, t.val_fraction, seed)
            unit_device = f"cuda:{len(jobs) % gpus}" if gpus > 1 else device  # units spread over the GPUs
            jobs.append(
                UnitJob(
                    cfg.to_dict(),
                    str(mfcc_file),
                    split.fold,
                    seed,
                    train.tolist(),
                    test.tolist(),
                    val.tolist(),
                    str(paths.models),
                    str(paths.logs),
                    unit_name(split.fold, seed, len(seeds) > 1, split.cell),
                    unit_device,
                    cell=split.cell,
                )
            )
    return jobs


def units_line(cfg: Config, jobs: list[UnitJob]) -> str:
    """What a protocol with cells trains, said before training: how many units, and how a fold pools them ("" for a
    protocol without cells)."""
    cells = {(j.fold, j.cell) for j in jobs if j.cell}
    if not cells:
        return ""
    folds, groups = len({f for f, _ in cells}), len({c for _, c in cells})
    seeds = len(cfg.train.run_seeds)
    made = f"{len(cells)} units" if len(cells) == folds * groups else f"{len(cells)} units (the cells with utterances)"
    return (
        f"protocol {cfg.train.protocol}: {folds} speaker groups x {groups} sentence groups = {made}"
        + (f" x {seeds} seeds" if seeds > 1 else "")
        + ", each testing its speakers on its sentences, trained on the other speakers' other sentences; a fold is "
        f"a speaker group and pools its cells' predictions, so means and intervals are over {folds} folds"
    )


def check_planned(record: dict, jobs: list[UnitJob], stems: pd.Series, run_id: str) -> None:
    """A resumed run trains the units its record names, on the same test utterances (a run planned with another
    fold assignment, e.g. by a version whose speaker-sentence had no cells, is refused in one line)."""
    planned = [(j.unit, stems.iloc[j.test].tolist()) for j in jobs]
    recorded = [(u["unit"], list(u["test_stems"])) for u in record["folds"]]
    if planned != recorded:
        names = [u for u, _ in recorded]
        raise TimnetError(
            f"run {run_id} was planned with other units or test parts ({len(names)}: {', '.join(names[:3])}, …) "
            f"than this version makes of its config ({len(planned)}) — start a new run"
        )


@dataclass
class PreparedRun:
    """A run on disk (record written) with the units still to train; `finish_run` turns results into outputs."""

    cfg: Config
    paths: RunPaths
    features: FeatureSet
    jobs: list[UnitJob]


def prepare_run(
    cfg: Config | None,
    mfcc: Path | None,
    roots: Roots,
    resume: str | None = None,
    device: str = "auto",
    only_folds: list[int] | None = None,
) -> PreparedRun:
    """Create a run (or open one to resume): its record, and one job per (seed, fold) unit selected. On the CPU the
    record holds the BLAS `train.blas = auto` chose, so every unit and every resume of the run uses that one."""
    if resume:
        record = open_run(roots.models, resume)
        cfg, mfcc, run_id = Config.from_dict(record["config"]), Path(record["mfcc"]), resume
    else:
        cfg.train.validate()
        cfg = Config.from_dict(cfg.to_dict())  # the caller's config stays as given
        if device.startswith("cpu"):  # accelerators keep the setting: their products are always torch's
            cfg.train.blas = resolve_blas(cfg.train.blas, device)
        mfcc = Path(mfcc)
        run_id = new_run_id(cfg, roots.models)
    resolve_capture(cfg.train.capture, device)  # train.capture=on off CUDA: one line, before anything is written
    paths = roots.run(run_id)
    features = load_features(mfcc, cfg.dataset.classes)
    if features.x.shape[1:] != (cfg.features.frames, cfg.features.n_mfcc):
        raise TimnetError(
            f"{mfcc}: features are {features.x.shape[1:]} per utterance, the config expects "
            f"({cfg.features.frames}, {cfg.features.n_mfcc}) — wrong --dataset or features made with other settings"
        )
    jobs = plan_jobs(cfg, features, mfcc, paths, device)
    if resume:
        check_planned(record, jobs, features.manifest.stem, run_id)
    for line in (corpus_caveat(cfg.dataset, features.manifest), units_line(cfg, jobs)):
        if line:
            warnings.warn(line, stacklevel=2)
    if not resume:
        tests = [{"unit": j.unit, "fold": j.fold, "seed": j.seed} | ({"cell": j.cell} if j.cell else {}) for j in jobs]
        for unit, job in zip(tests, jobs):
            unit["test_stems"] = features.manifest.stem.iloc[job.test].tolist()
        create_run(paths, cfg, mfcc, device, tests)
    selected = [j for j in jobs if only_folds is None or j.fold in only_folds]
    return PreparedRun(cfg, paths, features, selected)


def packable(cfg: Config, device: str) -> str | None:
    """Why the units of cfg's model and training step cannot be packed on `device` (`step.step_declines`), or None."""
    return step_declines(reference_model(cfg, device), cfg.train, torch.device(device))


def plan_packs(runs: list[PreparedRun], pending: list[UnitJob], device: str) -> list[list[UnitJob]]:
    """Each run's `pending` units in packs of `train.pack` (`packed_model.resolve_pack`: auto = all of a run's units on
    a GPU or MPS, one on CPU), a pack's units on one device (with several GPUs: one pack per GPU), its finished
    ones alone (they are only loaded); runs never share a pack."""
    keys, packs = {j.key for j in pending}, []
    for run in runs:
        packs += [[j] for j in run.jobs if j.key not in keys]
        on_device: dict[str, list[UnitJob]] = {}
        for job in run.jobs:
            if job.key in keys:
                on_device.setdefault(job.device, []).append(job)
        per_device = []
        for where, todo in on_device.items():
            size = resolve_pack(run.cfg.train.pack, device, len(todo))
            if size > 1 and (reason := packable(run.cfg, where)):
                line = f"timnet: packed units step aside: {reason}; each unit trains alone"
                warnings.warn(line, FastPathDeclined, stacklevel=2)
                size = 1
            per_device.append([todo[i : i + size] for i in range(0, len(todo), size)])
        packs += [pack for turn in itertools.zip_longest(*per_device) for pack in turn if pack]  # GPUs take turns
    return packs


def decide_execution(jobs: list[UnitJob], workers: int, packed: frozenset[str] = frozenset()) -> None:
    """Whether each unit compiles and whose BLAS it uses, decided by its executor, the one place. `compile = auto`
    counts the epochs of a process, not of a unit — the units a worker trains one after another reuse its compiled
    code, so 10 folds x 500 epochs on 2 workers compile where one 500-epoch fold would not (Ray: each unit counts
    alone) — and does not compile where numpy's BLAS was chosen (`should_compile`). `blas` is the BLAS of the
    unit's eager products (a compiled unit's are torch's: the compiler traces torch operations; if compiling
    fails, the unit goes on eagerly with `blas`). Units trained in a pack (`packed`: their keys) run the model's own
    forward under vmap (`accel.packed_model`) with torch's products; whether they compile is decided as for a unit
    alone."""
    per_worker = -(-len(jobs) // workers)
    for job in jobs:
        t = job.config["train"]
        blas = resolve_blas(t["blas"], job.device)
        job.compile = should_compile(t["compile"], t["epochs"], job.device, per_worker, blas)
        job.blas = "torch" if job.key in packed else blas


def _execute_local(runs, jobs, device: str, how: Execution, desc: str) -> list[UnitResult]:
    """This process (one unit after another) or a spawn pool sharing one memory-mapped copy of the features."""
    pending = [j for j in jobs if not j.final_path.exists()]
    packs = plan_packs(runs, pending, device)
    busy = {j.key for j in pending}
    workers, threads = plan_workers(sum(pack[0].key in busy for pack in packs), device, how.workers, how.threads)
    decide_execution(pending, workers, frozenset(j.key for pack in packs if len(pack) > 1 for j in pack))
    features = runs[0].features if workers == 1 and len(runs) == 1 else None
    folder = Path(tempfile.mkdtemp(prefix="timnet_features_")) if workers > 1 else None
    try:
        shared = share_features(runs, folder) if folder else {}
        for run in runs:  # workers read the features themselves; the outputs need only labels and manifest
            run.features = without_samples(run.features)
        return run_units(jobs, workers, threads, features, how.progress, desc, shared, packs)
    finally:
        if folder is not None:
            shutil.rmtree(folder, ignore_errors=True)


def _execute_ray(runs, jobs, device: str, how: Execution, desc: str) -> list[UnitResult]:
    """One Ray task per unit; each node reads the features from the MFCC file itself."""
    for run in runs:
        run.features = without_samples(run.features)
    decide_execution(jobs, len(jobs))
    return run_units_on_ray(jobs, how.threads, how.address, how.progress, desc)


# backend name -> executor of the units of a list of prepared runs
BACKENDS = {"local": _execute_local, "ray": _execute_ray}


def execute(runs: list[PreparedRun], device: str, how: Execution, desc: str = "") -> list[list[UnitResult]]:
    """Train the units of one or more runs at once on `device` with `how.backend` (`BACKENDS`); returns each run's
    results."""
    check_choice("backend", how.backend, BACKENDS)
    jobs = [j for run in runs for j in run.jobs]
    results = BACKENDS[how.backend](runs, jobs, device, how, desc)
    by_key = {j.key: r for j, r in zip(jobs, results)}
    return [[by_key[j.key] for j in run.jobs] for run in runs]


def check_resume(resume: str | None, given: list[str]) -> None:
    """A resumed run continues with its saved config: refuse anything that would change it (one line naming it)."""
    if resume and given:
        raise TimnetError(f"resuming {resume} continues it with its saved config; drop {', '.join(given)}")


def run_training(
    cfg: Config | None,
    mfcc: Path | None,
    how: Execution | None = None,
    resume: str | None = None,
    only_folds: list[int] | None = None,
) -> "RunResult":
    """Train every fold (x seed) of a run — in parallel worker processes by default, or on Ray — then write the run
    workbook and the summary row, under `how.roots`. `how.workers=1` trains in this process; `resume=RUN` (with cfg
    and mfcc None) continues an interrupted run."""
    how = how or Execution()
    check_resume(resume, [name for name, value in (("cfg", cfg), ("mfcc", mfcc)) if value is not None])
    shape = cfg if cfg is not None else Config.from_dict(open_run(how.roots.models, resume)["config"])
    device = how.resolved_device(shape)
    run = prepare_run(cfg, mfcc, how.roots, resume, device, only_folds)
    with sole_writer(run.paths.models, f"run {run.paths.run_id}"):  # two processes never train one run
        [results] = execute([run], device, how, run.paths.run_id)
        return finish_run(run.cfg, run.features, run.paths, results)


@dataclass
class RunResult:
    run_id: str
    folds: pd.DataFrame
    predictions: pd.DataFrame
    workbook: Path
    summary: dict
    confusion_png: Path
    curves_png: Path


def finish_run(cfg: Config, features: FeatureSet, paths: RunPaths, results: list[UnitResult]) -> RunResult:
    """The run's outputs from its units' results: workbook, summary row, confusion heatmap, curves grid."""
    classes = cfg.dataset.classes
    folds = fold_table(results, features.y)
    predictions = run_predictions(features.manifest, results, classes)
    caveat = corpus_caveat(cfg.dataset, features.manifest)
    leakage = audit(cfg, features.manifest, features.fingerprints())
    calibration = calibration_sheets(results, features.y)
    extra = {"leakage": leakage, "speakers": speaker_table(predictions)} | cell_sheet(results) | calibration
    sheets = run_sheets(paths.run_id, cfg, folds, predictions, caveat, extra)
    workbook = write_workbook(paths.workbook, sheets, overwrite=True)
    units_made = len(leakage) - 1  # the protocol's units (fewer than asked where a corpus has fewer groups)
    folds_made = int(leakage.fold.iloc[:-1].nunique())  # its folds: K_s speaker groups under speaker-sentence
    facts = feature_facts(Path(read_run_record(paths.models)["mfcc"]), cfg.dataset, features.manifest)
    summary = summary_row(paths.run_id, cfg, folds, cfg.train.run_seeds, facts, folds_made)
    pooled = calibration["calibration"].iloc[-1]
    summary |= {"ece": pooled.ece_before, "ece_calibrated": pooled.ece_after}
    summary |= {"leakage": leakage_line(leakage), "calibration": calibration_line(calibration)}
    summary["complete"] = len({(r.seed, r.fold, r.cell) for r in results}) == units_made * len(cfg.train.run_seeds)
    append_summary(paths.results, summary)
    what = f"{cfg.dataset.name} run {paths.run_id}"
    confusion_png = plot_confusion(
        table_confusion(predictions, classes),
        paths.results / paths.run_id / "confusion.png",
        f"{what}\n{len(predictions)} test utterances, checkpoint {cfg.train.checkpoint_label}",
    )
    several = len(cfg.train.run_seeds) > 1
    plot_reliability(
        calibration["reliability"], paths.results / paths.run_id / "reliability.png", f"{what}: reliability"
    )
    curves_png = plot_curves_grid(
        {
            f"fold {r.fold}" + (f" cell {r.cell}" if r.cell else "") + (f" seed {r.seed}" if several else ""): r.history
            for r in results
        },
        paths.logs / "curves.png",
        f"{what}: accuracy per epoch",
    )
    in_progress = paths.models / "in_progress"
    if in_progress.is_dir() and not any(in_progress.iterdir()):  # every unit finished: nothing left to resume
        in_progress.rmdir()
    return RunResult(paths.run_id, folds, predictions, workbook, summary, confusion_png, curves_png)
