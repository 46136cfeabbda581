"""Training over folds. One fold of one seed is one pure unit of work, `train_fold(FoldJob)`; an executor
(`run_units`) runs the units of a run one after another, or in parallel worker processes.

A unit reads the MFCC file named in its job, trains, and writes only its own files (layout: `runs`):
    Models/<run>/in_progress/<unit>.pt   everything needed to continue (model, optimiser, RNG, progress),
                                         replaced atomically after every epoch, deleted when the unit ends
    Models/<run>/<unit>.pt               the chosen weights + config + metrics + test predictions
    logs/<run>/<unit>.csv, .png          per-epoch loss/accuracy and the curves
So a killed run (even kill -9, of the parent or of a worker) resumes exactly where it stopped, and
finished units are never redone.

Checkpoint policies: `last` (authors' 2023 numbers), `best-val` (validation carved from the training
part), `best-test` (the paper: epoch picked on the test fold; optimistic, labelled as such). The test
fold is used for nothing else; its accuracy is only logged, every `train.test_every` epochs.
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import multiprocessing
import os
import pickle
import shutil
import signal
import tempfile
import time
import warnings
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import asdict, dataclass, field
from pathlib import Path
from queue import Empty
from typing import Callable

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from .atomic import atomic_path
from .config import Config
from .corpora import canonical_stems
from .errors import TimnetError
from .features import FeatureSet, load_features
from .metrics import METRICS, confusion, fold_statistics, infer, pick_device, prediction_table, scores, table_confusion
from .model import TIMNet, TIMNetConfig
from .runs import (
    FoldResult,
    Roots,
    RunPaths,
    create_run,
    load_result,
    new_run_id,
    open_run,
    save_pt,
    save_unit,
    unit_name,
)
from .splits import make_folds, validation_split

# `train.compile = "auto"` compiles when each unit trains at least this many epochs on that device. Measured
# on 2-core CPUs: the first compile takes 110-140 s (~30 s once inductor's on-disk cache holds the graphs)
# and an epoch gets 1.05x (AVX-512 EPYC) to 1.23x (AVX2) faster, ~0.1-0.35 s: it repays itself only after
# several hundred epochs. On CUDA the many small elementwise kernels are what compiling fuses.
COMPILE_MIN_EPOCHS = {"cpu": 1000, "cuda": 200}
# `train.recompute = "auto"` keeps only each block's input for backward (recomputing the rest) when a batch's
# activations would exceed this: IEMOCAP (606 frames, 10 levels: ~1.1 GB) yes; EMO-DB (188 frames, 8 levels:
# ~0.27 GB) and SAVEE (254: ~0.37 GB) no. Costs ~1/3 more compute per step, so only where memory is the limit.
RECOMPUTE_ABOVE_BYTES = 600e6


@dataclass
class FoldJob:
    """Everything one unit needs; picklable, so it can run in any process (or on any node)."""

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
    compile: bool = False

    @property
    def paths(self) -> RunPaths:
        return RunPaths(Path(self.models_dir).name, Path(self.models_dir), Path(self.logs_dir), Path())

    @property
    def key(self) -> str:
        """`<run>/<unit>`: unique over the runs of a sweep."""
        return f"{Path(self.models_dir).name}/{self.unit}"

    @property
    def final_path(self) -> Path:
        return self.paths.unit_file(self.unit)

    @property
    def state_path(self) -> Path:
        return self.paths.state_file(self.unit)


@dataclass
class Progress:
    """Where a unit stands; saved with its per-epoch state, so a resumed unit continues exactly."""

    epoch: int = 0
    history: list[dict] = field(default_factory=list)
    best: dict | None = None  # weights of the best epoch so far (best-val / best-test)
    best_epoch: int = 0
    best_score: float = -1.0
    best_val: float = -1.0  # early stopping watches validation accuracy
    stale: int = 0
    seconds: float = 0.0
    stopped: bool = False  # early stop: nothing left to run on resume


# A progress event: {"unit", "event": "start" | "epoch" | "done", "epoch", "epochs", "pid", and for
# "epoch" the history row}. The executor turns them into one progress bar; `None` reports nothing.
Report = Callable[[dict], None]


def _accuracy(model: TIMNet, x: torch.Tensor, y: torch.Tensor, batch: int = 256) -> float:
    if not len(x):
        return float("nan")
    model.eval()
    with torch.no_grad():
        correct = sum(
            int((model(x[i : i + batch]).argmax(1) == y[i : i + batch]).sum()) for i in range(0, len(x), batch)
        )
    return 100.0 * correct / len(x)


class _FoldTraining:
    """The live objects of one unit: data on the device, model, optimiser, shuffling RNG."""

    def __init__(self, job: FoldJob, cfg: Config, features: FeatureSet):
        self.job, self.cfg, self.t = job, cfg, cfg.train
        self.device = torch.device(job.device)
        self.x = torch.as_tensor(features.x, device=self.device)
        self.y = torch.as_tensor(features.y, device=self.device)
        self.tr, self.te, self.va = (
            torch.as_tensor(np.asarray(i, dtype=np.int64), device=self.device) for i in (job.train, job.test, job.val)
        )
        torch.manual_seed(job.seed * 1000 + job.fold)
        self.model = TIMNet(TIMNetConfig.from_config(cfg)).to(self.device)
        self.model.recompute = should_recompute(self.t.recompute, cfg, self.t.batch_size)
        self.forward = _compiled(self.model) if job.compile else self.model
        self.compile_pending = job.compile
        t = self.t
        self.opt = torch.optim.Adam(self.model.parameters(), lr=t.lr, betas=(t.beta1, t.beta2), eps=t.eps)
        self.shuffle = torch.Generator().manual_seed(job.seed * 1000 + job.fold)
        self.watch = {"best-val": "val_acc", "best-test": "test_acc"}.get(t.checkpoint)

    def restore(self) -> Progress:
        if not self.job.state_path.exists():
            return Progress()
        try:
            saved = torch.load(self.job.state_path, map_location=self.device, weights_only=True)
        except Exception as err:
            raise TimnetError(
                f"{self.job.state_path}: unreadable per-epoch state ({type(err).__name__}) — delete it to "
                "train this fold again from epoch 1"
            ) from None
        self.model.load_state_dict(saved["model"])
        self.opt.load_state_dict(saved["optimizer"])
        torch.set_rng_state(saved["torch_rng"])
        if self.device.type == "cuda" and "cuda_rng" in saved:
            torch.cuda.set_rng_state(saved["cuda_rng"], self.device)
        self.shuffle.set_state(saved["shuffle_rng"])
        return Progress(**saved["progress"])

    def save(self, progress: Progress) -> None:
        state = {
            "model": self.model.state_dict(),
            "optimizer": self.opt.state_dict(),
            "torch_rng": torch.get_rng_state(),
            "shuffle_rng": self.shuffle.get_state(),
            "progress": asdict(progress),
        }
        if self.device.type == "cuda":
            state["cuda_rng"] = torch.cuda.get_rng_state(self.device)
        save_pt(self.job.state_path, state)
        with atomic_path(Path(self.job.logs_dir) / f"{self.job.unit}.csv") as tmp:
            pd.DataFrame(progress.history).to_csv(tmp, index=False)

    def train_epoch(self) -> tuple[float, float]:
        """One pass over the shuffled training part: (mean loss, accuracy %). One device sync per epoch."""
        self.model.train()
        order = self.tr[torch.randperm(len(self.tr), generator=self.shuffle).to(self.device)]
        loss_sum = torch.zeros((), device=self.device)
        correct = torch.zeros((), dtype=torch.int64, device=self.device)
        for i in range(0, len(order), self.t.batch_size):
            idx = order[i : i + self.t.batch_size]
            step = self._first_compiled_step if self.compile_pending else self._step
            logits, loss = step(self.x[idx], self.y[idx])
            loss_sum += loss * len(idx)
            correct += (logits.argmax(1) == self.y[idx]).sum()
        return float(loss_sum) / len(order), 100.0 * int(correct) / len(order)

    def _step(self, xb: torch.Tensor, yb: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        logits = self.forward(xb)
        loss = F.cross_entropy(logits, yb, label_smoothing=self.t.label_smoothing)
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.opt.step()
        return logits.detach(), loss.detach()

    def _first_compiled_step(self, xb: torch.Tensor, yb: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Compilation happens on the first step; where it fails (no compiler, MPS, Windows), continue eagerly."""
        before = (copy.deepcopy(self.model.state_dict()), copy.deepcopy(self.opt.state_dict()), torch.get_rng_state())
        self.compile_pending = False
        try:
            return self._step(xb, yb)
        except Exception as err:  # noqa: BLE001 — any compiler failure means: train eagerly
            warnings.warn(
                f"{self.job.unit}: torch.compile failed ({type(err).__name__}: {str(err).splitlines()[0][:200]}); "
                "training without compiling (--compile off avoids the attempt)",
                stacklevel=2,
            )
            self.model.load_state_dict(before[0])
            self.opt.load_state_dict(before[1])
            torch.set_rng_state(before[2])
            self.forward = self.model
            return self._step(xb, yb)

    def run_epoch(self, progress: Progress) -> dict:
        t = self.t
        started = time.perf_counter()
        loss, train_acc = self.train_epoch()
        progress.epoch += 1
        test_due = (
            t.checkpoint == "best-test"
            or progress.epoch == t.epochs
            or (t.test_every > 0 and progress.epoch % t.test_every == 0)
        )
        row = {
            "epoch": progress.epoch,
            "loss": loss,
            "train_acc": train_acc,
            "val_acc": _accuracy(self.model, self.x[self.va], self.y[self.va]),
            "test_acc": _accuracy(self.model, self.x[self.te], self.y[self.te]) if test_due else float("nan"),
        }
        progress.history.append(row)
        if self.watch and row[self.watch] > progress.best_score:
            progress.best, progress.best_epoch, progress.best_score = (
                copy.deepcopy(self.model.state_dict()),
                progress.epoch,
                row[self.watch],
            )
        if len(self.va) and row["val_acc"] > progress.best_val:
            progress.best_val, progress.stale = row["val_acc"], 0
        else:
            progress.stale += 1
        progress.seconds += time.perf_counter() - started
        progress.stopped = bool(t.patience > 0 and len(self.va) and progress.stale >= t.patience)
        return row

    def finish(self, progress: Progress, features: FeatureSet) -> FoldResult:
        job, cfg = self.job, self.cfg
        chosen_epoch = progress.best_epoch if self.watch else len(progress.history)
        if self.watch:
            self.model.load_state_dict(progress.best)
        probs, _ = infer(self.model, features.x[job.test], device=str(self.device))
        metrics = scores(features.y[job.test], probs.argmax(1))
        save_unit(
            job.final_path,
            {
                "state_dict": {k: v.cpu() for k, v in self.model.state_dict().items()},
                "config": job.config,
                "model_config": self.model.config.to_dict(),
                "fold": job.fold,
                "seed": job.seed,
                "metrics": metrics,
                "epoch": chosen_epoch,
                "seconds": progress.seconds,
                "checkpoint": self.t.checkpoint,
                "optimistic": self.t.optimistic,
                "test_index": list(job.test),
                "confusion": confusion(features.y[job.test], probs.argmax(1), cfg.dataset.classes).to_numpy().tolist(),
                "test_stems": [str(s) for s in features.manifest.stem.iloc[job.test]],
                "test_probs": torch.from_numpy(probs),
                "history": progress.history,
            },
        )
        job.state_path.unlink(missing_ok=True)
        history = pd.DataFrame(progress.history)
        plot_history(
            history,
            Path(job.logs_dir) / f"{job.unit}.png",
            f"{cfg.dataset.name} {job.unit} ({self.t.checkpoint})",
            chosen_epoch,
        )
        return FoldResult(job.fold, job.seed, metrics, chosen_epoch, progress.seconds, list(job.test), probs, history)


def _compiled(model: TIMNet):
    import torch._inductor.config as inductor

    inductor.fallback_random = True  # dropout masks from the eager RNG: the same draws, resumable RNG state
    return torch.compile(model)


def train_fold(job: FoldJob, features: FeatureSet | None = None, report: Report | None = None) -> FoldResult:
    """Train one unit: restore its state (if any) -> epochs, each saved -> evaluate the chosen weights and write "
    "them."""
    cfg = Config.from_dict(job.config)
    report = report or (lambda event: None)
    event = {"key": job.key, "epochs": cfg.train.epochs, "pid": os.getpid()}
    if job.final_path.exists():  # finished units are never redone
        report({**event, "event": "done", "epoch": cfg.train.epochs})
        return load_result(job.final_path)
    features = features if features is not None else load_features(Path(job.mfcc), cfg.dataset.classes)
    fold = _FoldTraining(job, cfg, features)
    progress = fold.restore()
    report({**event, "event": "start", "epoch": progress.epoch})
    while progress.epoch < cfg.train.epochs and not progress.stopped:
        row = fold.run_epoch(progress)
        fold.save(progress)
        report({**event, "event": "epoch", "epoch": progress.epoch, "row": row})
    result = fold.finish(progress, features)
    report({**event, "event": "done", "epoch": cfg.train.epochs})
    return result


def plot_history(history: pd.DataFrame, path: Path, title: str, chosen_epoch: int) -> None:
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(10, 3.6))
    ax_loss.plot(history.epoch, history.loss, label="train loss")
    ax_loss.set_xlabel("epoch")
    ax_loss.set_ylabel("loss")
    for col, label in (("train_acc", "train"), ("val_acc", "validation"), ("test_acc", "test (logged only)")):
        known = history[history[col].notna()]
        if len(known):
            ax_acc.plot(known.epoch, known[col], label=label, marker="." if len(known) < len(history) else None)
    ax_acc.axvline(chosen_epoch, color="grey", linestyle=":", label=f"chosen epoch {chosen_epoch}")
    ax_acc.set_xlabel("epoch")
    ax_acc.set_ylabel("accuracy %")
    ax_acc.legend(fontsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=100, format="png")
    plt.close(fig)


# --- the executor: many units, serially or in worker processes ---------------------------------
def available_cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def plan_workers(
    n_units: int, device: str, workers: int | None = None, threads: int | None = None
) -> tuple[int, int | None]:
    """(worker processes, threads per worker). Default: one worker per GPU; on CPU one per core (up to the
    number of units) with the cores split between them — TIM-Net's small tensors keep one core busy
    but scale poorly over threads, so separate processes run ~2x faster than one process with 2 threads."""
    if workers is not None and workers < 1:
        raise TimnetError(f"--workers must be at least 1 (got {workers})")
    if threads is not None and threads < 1:
        raise TimnetError(f"--threads must be at least 1 (got {threads})")
    cores = available_cores()
    if workers is None:
        if device.startswith("cuda"):
            workers = 1 if ":" in device else max(1, torch.cuda.device_count())
        elif device == "mps":
            workers = 1
        else:
            workers = max(1, cores // (threads or 1))
    workers = max(1, min(workers, n_units))
    if threads is None and workers > 1:
        threads = max(1, cores // workers)
    return workers, threads


def run_units(
    jobs: list[FoldJob],
    workers: int = 1,
    threads: int | None = None,
    features: FeatureSet | None = None,
    progress: bool = True,
    desc: str = "",
    shared: dict[str, str] | None = None,
) -> list[FoldResult]:
    """Run units, in parallel worker processes when workers > 1; one progress bar over all their epochs.

    A unit that fails (an exception, or its worker killed) fails the run with one line naming it; the
    units finished so far keep their files, so `run_training(resume=...)` continues.
    """
    view = _ProgressView(jobs, desc, progress)
    try:
        if workers <= 1:
            if threads:
                torch.set_num_threads(threads)
            results = []
            for job in jobs:
                try:
                    results.append(train_fold(job, features, view.update))
                except TimnetError as err:
                    raise TimnetError(f"{view.label(job.key)}: {err}") from None
            return results
        return _run_in_pool(jobs, workers, threads, view, shared or {})
    finally:
        view.close()


class _ProgressView:
    """One bar over all fold-epochs of a run, with each running unit's latest epoch, loss and accuracy."""

    def __init__(self, jobs: list[FoldJob], desc: str, enabled: bool):
        self.epochs = {j.key: j.config["train"]["epochs"] for j in jobs}
        self.one_run = len({Path(j.models_dir) for j in jobs}) <= 1
        self.done = dict.fromkeys(self.epochs, 0)
        self.latest: dict[str, str] = {}
        self.pids: dict[str, int] = {}
        self.started: set[str] = set()
        self.bar = tqdm(
            total=sum(self.epochs.values()), desc=desc, unit="fold-epoch", disable=not enabled, smoothing=0.05
        )

    def label(self, key: str) -> str:
        """How a unit is named to the user: `fold_2`, or `<run>/fold_2` when several runs train at once."""
        return key.split("/", 1)[1] if self.one_run else key

    def update(self, event: dict) -> None:
        unit = event["key"]
        self.pids[unit] = event["pid"]
        finished = event["event"] == "done"
        epoch = self.epochs[unit] if finished else event["epoch"]
        self.bar.update(epoch - self.done[unit])
        self.done[unit] = epoch
        if finished:
            self.latest.pop(unit, None)
        elif "row" in event:
            row = event["row"]
            self.latest[unit] = f"{epoch} {row['loss']:.3f}/{row['train_acc']:.0f}%"
        if event["event"] == "start" and event["epoch"] > 0 and unit in self.started:
            warnings.warn(f"{self.label(unit)}: started again, from its saved epoch {event['epoch']}", stacklevel=2)
        self.started.add(unit)
        self.bar.set_postfix_str(
            " | ".join(f"{self.label(u).replace('fold_', 'f')} {s}" for u, s in sorted(self.latest.items())),
            refresh=False,
        )

    def running(self) -> list[str]:
        """Units that started and have not finished."""
        return [u for u in self.pids if self.done[u] < self.epochs[u]]

    def close(self) -> None:
        self.bar.close()


# Per-process state of a pool worker, set once by `_worker_init` (a queue cannot travel with each task).
_WORKER: dict = {}


def _worker_init(messages, parent: int, threads: int | None, shared: dict[str, str]) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle: it stops the workers
    if threads:
        torch.set_num_threads(threads)
    _WORKER.update(messages=messages, parent=parent, shared=shared)


@functools.lru_cache(maxsize=2)
def _worker_features(mfcc: str, classes: tuple[str, ...]) -> FeatureSet:
    """The features, once per worker process, not once per unit: memory-mapped from the copy the parent
    shared (one copy in memory for all workers), else read from the MFCC file."""
    shared = _WORKER.get("shared", {}).get(mfcc)
    if shared is None:
        return load_features(Path(mfcc), list(classes))
    with open(Path(shared) / "features.pkl", "rb") as f:
        features = pickle.load(f)
    # copy-on-write mapping: pages are shared between the workers (never written), and writable for torch
    return dataclasses.replace(features, x=np.load(Path(shared) / "x.npy", mmap_mode="c"))


def _without_samples(features: FeatureSet) -> FeatureSet:
    """The features' labels and manifest without the MFCC array (x keeps its frame and coefficient shape)."""
    return dataclasses.replace(features, x=np.empty((0, *features.x.shape[1:]), np.float32))


def share_features(runs: list, folder: Path) -> dict[str, str]:
    """Write each run's features where pool workers can memory-map them: {MFCC path: folder}. The MFCC file
    itself is a pickled dict (the authors' format), which cannot be mapped."""
    shared = {}
    for run in runs:
        for mfcc in {j.mfcc for j in run.jobs} - set(shared):
            where = folder / str(len(shared))
            where.mkdir(parents=True)
            np.save(where / "x.npy", run.features.x)
            with open(where / "features.pkl", "wb") as f:
                pickle.dump(_without_samples(run.features), f)
            shared[mfcc] = str(where)
    return shared


def _worker_report(event: dict) -> None:
    if os.getppid() != _WORKER["parent"]:  # the parent was killed: stop; this epoch's state is saved
        os._exit(1)
    _WORKER["messages"].put(event)


def _worker_train(job: FoldJob) -> FoldResult:
    classes = tuple(Config.from_dict(job.config).dataset.classes)
    return train_fold(job, _worker_features(job.mfcc, classes), _worker_report)


def _run_in_pool(
    jobs: list[FoldJob], workers: int, threads: int | None, view: _ProgressView, shared: dict[str, str]
) -> list[FoldResult]:
    context = multiprocessing.get_context("spawn")  # fork after torch has started threads is not safe
    messages = context.Queue()
    pool = ProcessPoolExecutor(
        workers, mp_context=context, initializer=_worker_init, initargs=(messages, os.getpid(), threads, shared)
    )
    futures = {pool.submit(_worker_train, job): job for job in jobs}
    processes: dict = {}
    results: dict[str, FoldResult] = {}
    try:
        while len(results) < len(jobs):
            processes.update(getattr(pool, "_processes", None) or {})  # pid -> Process, to tell which one died
            try:
                view.update(messages.get(timeout=0.2))
                continue
            except Empty:
                pass
            for future, job in futures.items():
                if job.key in results or not future.done():
                    continue
                try:
                    results[job.key] = future.result()
                except BrokenProcessPool:
                    raise TimnetError(_died(view, processes)) from None
                except TimnetError as err:
                    raise TimnetError(f"{view.label(job.key)}: {err}") from None
                except Exception as err:
                    raise TimnetError(
                        f"{view.label(job.key)} failed in its worker: {type(err).__name__}: {err}"
                    ) from err
        _drain(messages, view)
    except BaseException:  # a failure, or Ctrl-C: stop the other units now (each keeps its last epoch's state)
        pool.shutdown(wait=False, cancel_futures=True)
        for process in processes.values():
            if process.is_alive():
                process.terminate()
        raise
    pool.shutdown(wait=True)
    return [results[j.key] for j in jobs]


def _drain(messages, view: _ProgressView) -> None:
    while True:
        try:
            view.update(messages.get_nowait())
        except Empty:
            return


def _died(view: _ProgressView, processes: dict) -> str:
    """One line naming the unit whose worker died, and how (signal 9: kill -9 or the out-of-memory killer)."""
    codes = {pid: p.exitcode for pid, p in processes.items()}
    for unit in view.running():
        code = codes.get(view.pids.get(unit))
        if code is not None and code != -signal.SIGTERM:
            how = (
                f"killed by signal {-code}" + (" (kill -9, or out of memory)" if code == -signal.SIGKILL else "")
                if code < 0
                else f"exit code {code}"
            )
            return (
                f"{view.label(unit)}: its worker process {view.pids[unit]} died ({how}); "
                "finished units are kept — resume the run with --resume"
            )
    running = ", ".join(map(view.label, view.running())) or "a unit"
    return f"a worker process died while training {running}; finished units are kept — resume the run with --resume"


def plan_jobs(cfg: Config, features: FeatureSet, mfcc: Path, paths: RunPaths, device: str) -> list[FoldJob]:
    """All (seed, fold) units of a run, with their index sets fixed up front (and saved with the run)."""
    t = cfg.train
    seeds = t.run_seeds
    # Folds always come from the dataset's seed (for `random`: the authors' exact test sets);
    # several seeds repeat the training (init, shuffling, dropout, validation carve) on the same folds.
    folds = make_folds(t.protocol, features.manifest, canonical_stems(cfg.dataset), t.folds, t.seed)
    need_val = t.checkpoint == "best-val" or t.patience > 0
    speakers = features.manifest.speaker if t.protocol == "speaker" else None
    compile_model = should_compile(t.compile, t.epochs, device)
    gpus = torch.cuda.device_count() if device == "cuda" else 0
    jobs = []
    for seed in seeds:
        for k, (train, test) in enumerate(folds, start=1):
            val = np.array([], dtype=np.int64)
            if need_val:
                train, val = validation_split(train, features.y, speakers, t.val_fraction, seed)
            unit_device = f"cuda:{len(jobs) % gpus}" if gpus > 1 else device  # units spread over the GPUs
            jobs.append(
                FoldJob(
                    cfg.to_dict(),
                    str(mfcc),
                    k,
                    seed,
                    train.tolist(),
                    test.tolist(),
                    val.tolist(),
                    str(paths.models),
                    str(paths.logs),
                    unit_name(k, seed, len(seeds) > 1),
                    unit_device,
                    compile_model,
                )
            )
    return jobs


def should_recompute(setting: str, cfg: Config, batch_size: int) -> bool:
    """`on`, `off`, or `auto`: recompute block activations in backward where a batch's saved activations would
    pass RECOMPUTE_ABOVE_BYTES (about 9 tensors of [B, T, C] floats per block, 2 x levels blocks)."""
    if setting == "auto":
        per_block = 9 * batch_size * cfg.features.frames * cfg.model.filters * 4
        return per_block * 2 * cfg.model.levels > RECOMPUTE_ABOVE_BYTES
    return setting == "on"


def should_compile(setting: str, epochs: int, device: str) -> bool:
    """`on`, `off`, or `auto`: compile where it repays its cost (COMPILE_MIN_EPOCHS per unit; never on MPS)."""
    if setting == "auto":
        return epochs >= COMPILE_MIN_EPOCHS.get(device.split(":")[0], float("inf"))
    return setting == "on"


@dataclass
class PreparedRun:
    """A run on disk (record written) with the units still to train; `finish_run` turns results into outputs."""

    cfg: Config
    paths: RunPaths
    features: FeatureSet
    jobs: list[FoldJob]


def prepare_run(
    cfg: Config | None,
    mfcc: Path | None,
    roots: Roots,
    resume: str | None = None,
    device: str = "auto",
    only_folds: list[int] | None = None,
) -> PreparedRun:
    """Create a run (or open one to resume): its record, and one job per (seed, fold) unit selected."""
    if resume:
        record = open_run(roots.models, resume)
        cfg, mfcc, run_id = Config.from_dict(record["config"]), Path(record["mfcc"]), resume
    else:
        cfg.train.validate()
        mfcc = Path(mfcc)
        run_id = new_run_id(cfg, roots.models)
    paths = roots.run(run_id)
    features = load_features(mfcc, cfg.dataset.classes)
    if features.x.shape[1:] != (cfg.features.frames, cfg.features.n_mfcc):
        raise TimnetError(
            f"{mfcc}: features are {features.x.shape[1:]} per utterance, the config expects "
            f"({cfg.features.frames}, {cfg.features.n_mfcc}) — wrong --dataset or features made with other settings"
        )
    jobs = plan_jobs(cfg, features, mfcc, paths, device)
    if not resume:
        tests = [{"unit": j.unit, "fold": j.fold, "seed": j.seed} for j in jobs]
        for unit, job in zip(tests, jobs):
            unit["test_stems"] = features.manifest.stem.iloc[job.test].tolist()
        create_run(paths, cfg, mfcc, device, tests)
    selected = [j for j in jobs if only_folds is None or j.fold in only_folds]
    return PreparedRun(cfg, paths, features, selected)


def execute(
    runs: list[PreparedRun],
    device: str,
    backend: str = "local",
    workers: int | None = None,
    threads: int | None = None,
    progress: bool = True,
    desc: str = "",
    address: str | None = None,
) -> list[list[FoldResult]]:
    """Train the units of one or more runs at once with a backend: `local` (this process, or a process pool)
    or `ray` (a Ray cluster). Returns each run's results."""
    jobs = [j for run in runs for j in run.jobs]
    if backend not in ("local", "ray"):
        raise TimnetError(f"--backend {backend!r}: choose local or ray")
    if backend == "local":
        workers, threads = plan_workers(len([j for j in jobs if not j.final_path.exists()]), device, workers, threads)
    serial = backend == "local" and workers == 1 and len(runs) == 1
    features = runs[0].features if serial else None
    pool = backend == "local" and workers > 1
    folder = Path(tempfile.mkdtemp(prefix="timnet_features_")) if pool else None
    try:
        shared = share_features(runs, folder) if pool else {}
        for run in runs:  # workers read the features themselves; the outputs need only labels and manifest
            run.features = _without_samples(run.features)
        if backend == "ray":
            from .cluster import run_units_on_ray

            results = run_units_on_ray(jobs, threads, address, progress, desc)
        else:
            results = run_units(jobs, workers, threads, features, progress, desc, shared)
        del features
    finally:
        if folder is not None:
            shutil.rmtree(folder, ignore_errors=True)
    by_key = {j.key: r for j, r in zip(jobs, results)}
    return [[by_key[j.key] for j in run.jobs] for run in runs]


def run_training(
    cfg: Config | None,
    mfcc: Path | None,
    models_root: Path = Path("Models"),
    logs_root: Path = Path("logs"),
    results_root: Path = Path("Results"),
    resume: str | None = None,
    device: str = "auto",
    progress: bool = True,
    only_folds: list[int] | None = None,
    workers: int | None = None,
    threads: int | None = None,
    backend: str = "local",
    address: str | None = None,
) -> "RunResult":
    """Train every fold (x seed) of a run — in parallel worker processes by default, or on Ray — then write
    the run workbook and the summary row. `workers=1` trains in this process, one unit after another."""
    device = resolve_device(device, backend, address)
    run = prepare_run(cfg, mfcc, Roots(models_root, logs_root, results_root), resume, device, only_folds)
    [results] = execute([run], device, backend, workers, threads, progress, run.paths.run_id, address)
    return finish_run(run.cfg, run.features, run.paths, results)


def resolve_device(device: str, backend: str = "local", address: str | None = None) -> str:
    """The device units train on: checked here for `local`; for `ray`, `auto` means CUDA when the cluster has GPUs."""
    if backend != "ray":
        return pick_device(device)
    if device != "auto":
        return device
    from .cluster import cluster_has_gpus

    return "cuda" if cluster_has_gpus(address) else "cpu"


@dataclass
class RunResult:
    run_id: str
    folds: pd.DataFrame
    predictions: pd.DataFrame
    workbook: Path
    summary: dict
    confusion_png: Path


def finish_run(cfg: Config, features: FeatureSet, paths: RunPaths, results: list[FoldResult]) -> RunResult:
    from .report import append_summary, config_sheet, plot_confusion, plot_curves_grid, summary_row, write_workbook

    classes = cfg.dataset.classes
    rows, preds = [], []
    for r in results:
        idx = np.asarray(r.test_index, dtype=np.int64)
        rows.append(
            {
                "seed": r.seed,
                "fold": r.fold,
                "n_test": len(idx),
                "epoch": r.epoch,
                "train_seconds": round(r.seconds, 1),
                **r.metrics,
            }
        )
        preds.append(
            prediction_table(
                features.manifest, idx, r.probs, classes, ("file", "stem", "label", "speaker"), seed=r.seed, fold=r.fold
            )
        )
    folds = pd.DataFrame(rows)
    predictions = pd.concat(preds, ignore_index=True)
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
                paths.run_id,
                cfg.train.checkpoint_label,
                len(predictions),
                "sample standard deviation over the folds (x seeds), ddof=1",
            ],
        }
    )
    complete = len({(r.seed, r.fold) for r in results}) == cfg.train.folds * len(cfg.train.run_seeds)
    workbook = write_workbook(
        paths.workbook,
        {
            "folds": pd.concat([folds, stats], ignore_index=True),
            "predictions": predictions,
            "confusion": table_confusion(predictions, classes),
            "confusion_per_fold": per_fold[["seed", "fold", "true", "predicted", "count"]],
            "config": pd.concat([meta, config_sheet(cfg)], ignore_index=True),
        },
        overwrite=True,
    )
    summary = summary_row(paths.run_id, cfg, folds, cfg.train.run_seeds)
    summary["complete"] = complete
    append_summary(paths.results, summary)
    what = f"{cfg.dataset.name} run {paths.run_id}"
    confusion_png = plot_confusion(
        table_confusion(predictions, classes),
        paths.results / paths.run_id / "confusion.png",
        f"{what}\n{len(predictions)} test utterances, checkpoint {cfg.train.checkpoint_label}",
    )
    several = len(cfg.train.run_seeds) > 1
    plot_curves_grid(
        {f"fold {r.fold}" + (f" seed {r.seed}" if several else ""): r.history for r in results},
        paths.logs / "curves.png",
        f"{what}: accuracy per epoch",
    )
    return RunResult(paths.run_id, folds, predictions, workbook, summary, confusion_png)
