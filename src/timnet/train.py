"""Training over folds. One fold (for one seed) is one pure unit of work: `train_fold(FoldJob)`.

A unit reads the MFCC file named in its job, trains, and writes only its own files:
    Models/<run>/in_progress/<unit>.pt   everything needed to continue (model, optimiser, RNG, history),
                                         replaced atomically after every epoch, deleted when the unit ends
    Models/<run>/<unit>.pt         the chosen weights + config + metrics + test predictions
    logs/<run>/<unit>.csv, .png    per-epoch loss/accuracy and the curves
So a killed run (even kill -9) resumes exactly where it stopped, and finished units are never redone.

Checkpoint policies: `last` (authors' 2023 numbers), `best-val` (validation carved from the training
part), `best-test` (the paper: epoch picked on the test fold; optimistic, labelled as such). The test
fold is used for nothing else; its per-epoch accuracy is only logged.
"""
from __future__ import annotations

import copy
import json
import time
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from .atomic import atomic_path, write_json
from .config import Config
from .corpora import canonical_stems
from .errors import TimnetError
from .evaluate import confusion, infer, prediction_table, scores, table_confusion
from .features import FeatureSet, load_features, sha256
from .model import TIMNet, TIMNetConfig
from .splits import make_folds, validation_split


def pick_device(name: str = "auto") -> str:
    if name != "auto":
        if name.startswith("cuda") and not torch.cuda.is_available():
            raise TimnetError("--device cuda asked for, but PyTorch sees no CUDA GPU (install a CUDA build of torch)")
        if name == "mps" and not torch.backends.mps.is_available():
            raise TimnetError("--device mps asked for, but Apple Metal (MPS) is not available in this PyTorch")
        return name
    if torch.cuda.is_available():
        return "cuda"
    if torch.backends.mps.is_available():
        return "mps"
    return "cpu"


def unit_name(fold: int, seed: int, several_seeds: bool) -> str:
    return f"fold_{fold}_seed{seed}" if several_seeds else f"fold_{fold}"


@dataclass
class FoldJob:
    """Everything one fold needs; picklable, so it can run in any process."""

    config: dict
    mfcc: str
    fold: int
    seed: int
    train: list[int]
    test: list[int]
    val: list[int]
    models_dir: str
    logs_dir: str
    unit: str
    device: str = "cpu"
    progress: bool = True

    @property
    def final_path(self) -> Path:
        return Path(self.models_dir) / f"{self.unit}.pt"

    @property
    def state_path(self) -> Path:
        return Path(self.models_dir) / "in_progress" / f"{self.unit}.pt"


@dataclass
class FoldResult:
    fold: int
    seed: int
    metrics: dict
    epoch: int
    seconds: float
    test_index: list[int]
    probs: np.ndarray
    history: pd.DataFrame = field(repr=False, default_factory=pd.DataFrame)


def _accuracy(model: TIMNet, x: torch.Tensor, y: torch.Tensor, batch: int = 256) -> float:
    model.eval()
    with torch.no_grad():
        correct = sum(int((model(x[i:i + batch]).argmax(1) == y[i:i + batch]).sum()) for i in range(0, len(x), batch))
    return 100.0 * correct / max(1, len(x))


def _save(path: Path, obj: dict) -> None:
    with atomic_path(path) as tmp:
        torch.save(obj, tmp)


def train_fold(job: FoldJob, features: FeatureSet | None = None) -> FoldResult:
    """Train one fold (resuming from its state file if one exists) and return its test results."""
    if job.final_path.exists():
        return load_result(job.final_path)
    cfg = Config.from_dict(job.config)
    t = cfg.train
    features = features or load_features(Path(job.mfcc), cfg.dataset.classes)
    device = torch.device(job.device)
    x = torch.as_tensor(features.x, device=device)
    y = torch.as_tensor(features.y, device=device)
    tr, te, va = (torch.as_tensor(np.asarray(i, dtype=np.int64), device=device) for i in (job.train, job.test, job.val))

    torch.manual_seed(job.seed * 1000 + job.fold)
    model = TIMNet(TIMNetConfig.from_config(cfg)).to(device)
    opt = torch.optim.Adam(model.parameters(), lr=t.lr, betas=(t.beta1, t.beta2), eps=t.eps)
    shuffle = torch.Generator().manual_seed(job.seed * 1000 + job.fold)
    state = {"epoch": 0, "history": [], "best": None, "best_epoch": 0, "best_score": -1.0, "best_val": -1.0, "stale": 0, "seconds": 0.0}
    if job.state_path.exists():
        saved = torch.load(job.state_path, map_location=device, weights_only=True)
        model.load_state_dict(saved["model"])
        opt.load_state_dict(saved["optimizer"])
        torch.set_rng_state(saved["torch_rng"])
        shuffle.set_state(saved["shuffle_rng"])
        state = saved["progress"]

    watch = {"best-val": "val_acc", "best-test": "test_acc"}.get(t.checkpoint)
    bar = tqdm(total=t.epochs, initial=state["epoch"], desc=job.unit, unit="epoch", disable=not job.progress, leave=False)
    while state["epoch"] < t.epochs:
        started = time.perf_counter()
        model.train()
        order = tr[torch.randperm(len(tr), generator=shuffle).to(device)]
        loss_sum, correct = 0.0, 0
        for i in range(0, len(order), t.batch_size):
            idx = order[i:i + t.batch_size]
            logits = model(x[idx])
            loss = F.cross_entropy(logits, y[idx], label_smoothing=t.label_smoothing)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            loss_sum += float(loss.detach()) * len(idx)
            correct += int((logits.argmax(1) == y[idx]).sum())
        state["epoch"] += 1
        row = {"epoch": state["epoch"], "loss": loss_sum / len(order), "train_acc": 100.0 * correct / len(order),
               "val_acc": _accuracy(model, x[va], y[va]) if len(va) else float("nan"), "test_acc": _accuracy(model, x[te], y[te])}
        state["history"].append(row)
        if watch and row[watch] > state["best_score"]:
            state.update(best=copy.deepcopy(model.state_dict()), best_epoch=state["epoch"], best_score=row[watch])
        if len(va) and row["val_acc"] > state["best_val"]:  # early stopping watches validation only
            state.update(best_val=row["val_acc"], stale=0)
        else:
            state["stale"] += 1
        state["seconds"] += time.perf_counter() - started
        stop = t.patience > 0 and len(va) and state["stale"] >= t.patience
        if stop:
            state["epoch"] = t.epochs  # early stop: nothing left to run on resume
        _save(job.state_path, {"model": model.state_dict(), "optimizer": opt.state_dict(), "torch_rng": torch.get_rng_state(),
                               "shuffle_rng": shuffle.get_state(), "progress": state})
        _write_history(job, state["history"])
        bar.update(1 if not stop else t.epochs - bar.n)
        bar.set_postfix(loss=f"{row['loss']:.3f}", train=f"{row['train_acc']:.0f}%")
    bar.close()

    chosen_epoch = state["best_epoch"] if watch else len(state["history"])
    if watch:
        model.load_state_dict(state["best"])
    probs, _ = infer(model, features.x[job.test], device=str(device))
    metrics = scores(features.y[job.test], probs.argmax(1))
    result = FoldResult(job.fold, job.seed, metrics, chosen_epoch, state["seconds"], list(job.test), probs, pd.DataFrame(state["history"]))
    _save(job.final_path, {
        "state_dict": {k: v.cpu() for k, v in model.state_dict().items()}, "config": job.config, "model_config": model.config.to_dict(),
        "fold": job.fold, "seed": job.seed, "metrics": metrics, "epoch": chosen_epoch, "seconds": state["seconds"],
        "checkpoint": t.checkpoint, "optimistic": t.checkpoint == "best-test", "test_index": list(job.test),
        "confusion": confusion(features.y[job.test], probs.argmax(1), cfg.dataset.classes).to_numpy().tolist(),
        "test_stems": [str(s) for s in features.manifest.stem.iloc[job.test]], "test_probs": torch.from_numpy(probs),
        "history": state["history"],
    })
    job.state_path.unlink(missing_ok=True)
    plot_history(result.history, Path(job.logs_dir) / f"{job.unit}.png", f"{cfg.dataset.name} {job.unit} ({t.checkpoint})", chosen_epoch)
    return result


def load_result(path: Path) -> FoldResult:
    saved = torch.load(path, map_location="cpu", weights_only=True)
    return FoldResult(saved["fold"], saved["seed"], saved["metrics"], saved["epoch"], saved["seconds"], saved["test_index"],
                      saved["test_probs"].numpy(), pd.DataFrame(saved["history"]))


def _write_history(job: FoldJob, history: list[dict]) -> None:
    with atomic_path(Path(job.logs_dir) / f"{job.unit}.csv") as tmp:
        pd.DataFrame(history).to_csv(tmp, index=False)


def plot_history(history: pd.DataFrame, path: Path, title: str, chosen_epoch: int) -> None:
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(10, 3.6))
    ax_loss.plot(history.epoch, history.loss, label="train loss")
    ax_loss.set_xlabel("epoch")
    ax_loss.set_ylabel("loss")
    for col, label in (("train_acc", "train"), ("val_acc", "validation"), ("test_acc", "test (logged only)")):
        if history[col].notna().any():
            ax_acc.plot(history.epoch, history[col], label=label)
    ax_acc.axvline(chosen_epoch, color="grey", linestyle=":", label=f"chosen epoch {chosen_epoch}")
    ax_acc.set_xlabel("epoch")
    ax_acc.set_ylabel("accuracy %")
    ax_acc.legend(fontsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=100, format="png")
    plt.close(fig)


# --- a run: all folds x seeds ------------------------------------------------------------------
@dataclass
class RunPaths:
    run_id: str
    models: Path
    logs: Path
    results: Path

    @property
    def workbook(self) -> Path:
        return self.results / f"{self.run_id}.xlsx"


def latest_run(models_root: Path, dataset: str) -> str:
    """The most recently started run of a dataset (for notebooks that follow a training run)."""
    runs = sorted((p for p in Path(models_root).glob(f"{dataset}_*") if (p / "config.json").is_file()), key=lambda p: p.stat().st_mtime)
    if not runs:
        raise TimnetError(f"{models_root}: no {dataset} run yet — run train.ipynb (or `timnet train`) first, or set run_id")
    return runs[-1].name


def new_run_id(cfg: Config, models_root: Path) -> str:
    base = f"{cfg.dataset.name}_{cfg.train.protocol}_{cfg.train.checkpoint}_{datetime.now():%Y%m%d-%H%M%S}"
    run_id, n = base, 1
    while (models_root / run_id).exists():
        n += 1
        run_id = f"{base}_{n}"
    return run_id


def plan_jobs(cfg: Config, features: FeatureSet, mfcc: Path, paths: RunPaths, device: str, progress: bool) -> list[FoldJob]:
    """All (seed, fold) units of a run, with their index sets fixed up front (and saved with the run)."""
    t = cfg.train
    seeds = t.run_seeds
    # Folds always come from the dataset's seed (for `random`: the authors' exact test sets);
    # several seeds repeat the training (init, shuffling, dropout, validation carve) on the same folds.
    folds = make_folds(t.protocol, features.manifest, canonical_stems(cfg.dataset), t.folds, t.seed)
    need_val = t.checkpoint == "best-val" or t.patience > 0
    speakers = features.manifest.speaker if t.protocol == "speaker" else None
    jobs = []
    for seed in seeds:
        for k, (train, test) in enumerate(folds, start=1):
            val = np.array([], dtype=np.int64)
            if need_val:
                train, val = validation_split(train, features.y, speakers, t.val_fraction, seed)
            jobs.append(FoldJob(cfg.to_dict(), str(mfcc), k, seed, train.tolist(), test.tolist(), val.tolist(), str(paths.models),
                                str(paths.logs), unit_name(k, seed, len(seeds) > 1), device, progress))
    return jobs


def run_training(cfg: Config, mfcc: Path, models_root: Path = Path("Models"), logs_root: Path = Path("logs"),
                 results_root: Path = Path("Results"), resume: str | None = None, device: str = "auto",
                 progress: bool = True, only_folds: list[int] | None = None) -> "RunResult":
    """Train every fold (x seed) of a run, then write the run workbook and the summary row."""
    if resume:
        run_dir = Path(models_root) / resume
        if not (run_dir / "config.json").is_file():
            raise TimnetError(f"{run_dir}: no run to resume (config.json missing) — see the run ids in {models_root}")
        saved = json.loads((run_dir / "config.json").read_text())
        cfg, mfcc = Config.from_dict(saved["config"]), Path(saved["mfcc"])
        if not mfcc.is_file() or sha256(mfcc) != saved["mfcc_sha256"]:
            raise TimnetError(f"{mfcc} is missing or changed since run {resume} started, so its folds would point at other "
                              "utterances — restore that file, or start a new run")
        run_id = resume
    else:
        cfg.train.validate()
        mfcc = Path(mfcc)
        run_id = new_run_id(cfg, Path(models_root))
    paths = RunPaths(run_id, Path(models_root) / run_id, Path(logs_root) / run_id, Path(results_root))
    features = load_features(mfcc, cfg.dataset.classes)
    if features.x.shape[1:] != (cfg.features.frames, cfg.features.n_mfcc):
        raise TimnetError(f"{mfcc}: features are {features.x.shape[1:]} per utterance, the config expects "
                          f"({cfg.features.frames}, {cfg.features.n_mfcc}) — wrong --dataset or features made with other settings")
    device = pick_device(device)
    jobs = plan_jobs(cfg, features, mfcc, paths, device, progress)
    if not resume:
        paths.models.mkdir(parents=True)
        paths.logs.mkdir(parents=True, exist_ok=True)
        record = {"run_id": run_id, "config": cfg.to_dict(), "mfcc": str(mfcc.resolve()), "mfcc_sha256": sha256(mfcc), "device": device,
                  "created": datetime.now().isoformat(timespec="seconds"),
                  "folds": [{"unit": j.unit, "fold": j.fold, "seed": j.seed, "test_stems": features.manifest.stem.iloc[j.test].tolist()} for j in jobs]}
        write_json(paths.models / "config.json", record)
        write_json(paths.logs / "config.json", record)
    selected = [j for j in jobs if only_folds is None or j.fold in only_folds]
    results = [train_fold(job, features) for job in tqdm(selected, desc=f"{run_id}", unit="fold", disable=not progress)]
    return finish_run(cfg, features, paths, results)


@dataclass
class RunResult:
    run_id: str
    folds: pd.DataFrame
    predictions: pd.DataFrame
    workbook: Path
    summary: dict


def finish_run(cfg: Config, features: FeatureSet, paths: RunPaths, results: list[FoldResult]) -> RunResult:
    from .report import append_summary, config_sheet, summary_row, write_workbook

    classes = cfg.dataset.classes
    rows, preds = [], []
    for r in results:
        idx = np.asarray(r.test_index, dtype=np.int64)
        rows.append({"seed": r.seed, "fold": r.fold, "n_test": len(idx), "epoch": r.epoch, "train_seconds": round(r.seconds, 1), **r.metrics})
        preds.append(prediction_table(features.manifest, idx, r.probs, classes, ("file", "stem", "label", "speaker"),
                                      seed=r.seed, fold=r.fold))
    folds = pd.DataFrame(rows)
    predictions = pd.concat(preds, ignore_index=True)
    per_fold = pd.concat([table_confusion(group, classes)
                          .stack().rename("count").reset_index().assign(seed=seed, fold=fold)
                          for (seed, fold), group in predictions.groupby(["seed", "fold"], sort=True)], ignore_index=True)
    stats = pd.DataFrame([{"seed": "", "fold": name, **{m: getattr(folds[m], name)() for m in ("war", "uar", "f1")}}
                          for name in ("mean", "std")])
    label = "OPTIMISTIC: epoch picked on the test fold (paper protocol)" if cfg.train.checkpoint == "best-test" else cfg.train.checkpoint
    meta = pd.DataFrame({"setting": ["run", "checkpoint policy", "utterances predicted"], "value": [paths.run_id, label, len(predictions)]})
    complete = len({(r.seed, r.fold) for r in results}) == cfg.train.folds * len(cfg.train.run_seeds)
    workbook = write_workbook(paths.workbook, {
        "folds": pd.concat([folds, stats], ignore_index=True),
        "predictions": predictions,
        "confusion": table_confusion(predictions, classes),
        "confusion_per_fold": per_fold[["seed", "fold", "true", "predicted", "count"]],
        "config": pd.concat([meta, config_sheet(cfg)], ignore_index=True),
    }, overwrite=True)
    summary = summary_row(paths.run_id, cfg, folds, cfg.train.run_seeds)
    summary["complete"] = complete
    append_summary(paths.results, summary)
    return RunResult(paths.run_id, folds, predictions, workbook, summary)
