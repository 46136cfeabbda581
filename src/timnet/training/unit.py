"""One unit of work: one fold of one seed of one run, `train_unit(UnitJob)`. Pure: it reads the MFCC file named
in its job, trains, and writes only its own files (layout: `run_store`):

    Models/<run>/in_progress/<unit>.pt   everything needed to continue (model, optimiser, RNGs, progress),
                                         replaced atomically after every epoch (written by a background
                                         thread: `state_writer`), deleted when the unit ends
    Models/<run>/<unit>.pt               the chosen weights + config + metrics + test predictions
    logs/<run>/<unit>.csv, .png          per-epoch loss/accuracy and the curves

So a killed unit (even kill -9) resumes exactly where it stopped, and a finished unit is never redone; any
executor (this process, a worker pool, Ray) can run it.

Checkpoint policies: `last` (authors' 2023 numbers), `best-val` (validation carved from the training part),
`best-test` (the paper: epoch picked on the test fold; optimistic, labelled as such). The test fold is used for
nothing else; its accuracy is only logged, every `train.test_every` epochs. A unit chosen by one policy also keeps
the others it can give from the same training (`UnitResult.also`): the last epoch, and under best-val tested every
epoch (`test_every = 1`) the best-test epoch's predictions.
"""

from __future__ import annotations

import copy
import os
import time
import warnings
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd
import torch

from ..accel.accelerate import Acceleration, accelerate
from ..accel.allocator import keep_freed_memory
from ..accel.blas import limit_threads, unit_blas
from ..accel.recompute import should_recompute
from ..core.atomic import atomic_path
from ..core.calibration import fit_temperature
from ..core.config import Config
from ..core.devices import device_rng_state, on_device, set_device_rng_state
from ..core.errors import TimnetError
from ..core.metrics import confusion, scores
from ..core.report import plot_history
from ..data.feature_files import FeatureSet, load_features
from ..data.speaker_normalization import model_inputs
from ..model.inference import accuracy, infer
from ..model.network import TIMNet, TIMNetConfig
from .augmentation import augmentation_seed
from .compiling import compiled
from .flat_state import flatten, unflatten
from .run_store import RunPaths, UnitResult, load_result, save_pt, save_unit
from .state_writer import StateWriter
from .step import class_weights, make_optimizer, make_schedule, next_epoch, unit_step
from .trackers import Trackers

# A progress event: {"key", "event": "start" | "epoch" | "done", "epoch", "epochs", "pid", and for "epoch" the
# history row}. Executors turn them into one progress bar (`progress.ProgressView`); `None` reports nothing.
ProgressReport = Callable[[dict], None]


# helpers


def accelerate_unit(model: TIMNet, blas: str, cfg: Config) -> tuple[str, Acceleration]:
    """The unit's fast paths (`accel.accelerate`): its products through `blas` where this process allows it
    (`blas.unit_blas`: numpy's on one thread), the CPU kernel where `train.kernel` says (auto: with numpy's BLAS),
    recomputation where `train.recompute` says for the path that runs. Returns (the BLAS, what runs)."""
    blas = unit_blas(blas)
    t = cfg.train
    kernel = t.kernel == "on" or (t.kernel == "auto" and blas == "numpy")
    recompute = lambda kernel: should_recompute(t.recompute, cfg, t.batch_size, kernel=kernel)  # noqa: E731
    return blas, accelerate(model, blas=blas, kernel=kernel, recompute=recompute)


# classes


@dataclass
class UnitJob:
    """Everything one unit needs; picklable, so it can run in any process (or on any node)."""

    config: dict
    mfcc_file: str
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
    blas: str = "torch"  # of eager products, decided by the executor (`train.decide_execution`); a resumed unit
    # keeps the one its state names
    cell: int = 0  # the fold's cell under speaker-sentence (`data.splits.Split`), 0 elsewhere

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

    @property
    def classes(self) -> tuple[str, ...]:
        return tuple(self.config["dataset"]["classes"])


@dataclass
class Progress:
    """Where a unit stands; saved with its per-epoch state, so a resumed unit continues exactly."""

    epoch: int = 0
    history: list[dict] = field(default_factory=list)
    best: dict | None = None  # weights of the best epoch so far (best-val / best-test)
    best_epoch: int = 0
    best_score: float = -1.0
    best_val: float = -1.0  # early stopping watches validation accuracy
    best_test: dict | None = None  # best-val units tested every epoch: {epoch, score, test_probs} of the best test
    stale: int = 0
    seconds: float = 0.0
    stopped: bool = False  # early stop: nothing left to run on resume


class UnitTrainer:
    """The live objects of one unit: data on the device, model, optimiser, shuffling and augmentation RNGs."""

    def __init__(self, job: UnitJob, cfg: Config, features: FeatureSet):
        self.job, self.cfg, self.t = job, cfg, cfg.train
        self.device = torch.device(job.device)
        if self.device.type == "cpu":
            keep_freed_memory()  # a step's buffers reused, not faulted in again (`allocator`)
        self.x = torch.as_tensor(features.x, device=self.device)
        self.y = torch.as_tensor(features.y, device=self.device)
        self.tr, self.te, self.va = (
            torch.as_tensor(np.asarray(i, dtype=np.int64), device=self.device) for i in (job.train, job.test, job.val)
        )
        seed = job.seed * 1000 + job.fold  # of the initial weights and the shuffling: per (seed, fold[, cell])
        seed = seed * 1000 + job.cell if job.cell else seed
        torch.manual_seed(seed)
        self.model = TIMNet(TIMNetConfig.from_config(cfg)).to(self.device)
        limit_threads(torch.get_num_threads())  # numpy's BLAS threads as torch's (pool workers: one each)
        self.use_blas("torch" if job.compile else job.blas)
        self.forward = compiled(self.model) if job.compile else self.model
        self.compile_pending = job.compile
        t = self.t
        self.opt = make_optimizer(self.model.parameters(), t, self.device)
        self.schedule = make_schedule(self.opt, t)
        self.weight = class_weights(t, self.y[self.tr], cfg.n_classes, next(self.model.parameters()).dtype)
        self.shuffle = torch.Generator().manual_seed(seed)
        self.augmenting = torch.Generator().manual_seed(augmentation_seed(seed))  # draws only where augmentation is on
        self.watch = {"best-val": "val_acc", "best-test": "test_acc"}.get(t.checkpoint)
        self.keeps_best_test = t.checkpoint == "best-val" and t.test_every == 1  # the optimistic extra, labelled
        self.writer = StateWriter()
        self.trackers = Trackers(cfg, Path(job.logs_dir), job.unit, Path(job.logs_dir).name)

    def use_blas(self, blas: str) -> None:
        self.blas, self.acceleration = accelerate_unit(self.model, blas, self.cfg)

    def restore(self) -> Progress:
        if not self.job.state_path.exists():
            return Progress()
        try:
            saved = torch.load(self.job.state_path, map_location="cpu", weights_only=True)  # RNG states stay CPU
        except Exception as err:
            raise TimnetError(
                f"{self.job.state_path}: unreadable per-epoch state ({type(err).__name__}) — delete it to "
                "train this fold again from epoch 1"
            ) from None
        self.model.load_state_dict(unflatten(saved["model"]))
        self.opt.load_state_dict(unflatten(saved["optimizer"]))
        if self.schedule and saved.get("schedule"):
            self.schedule.load_state_dict(saved["schedule"])
        torch.set_rng_state(saved["torch_rng"])
        if f"{self.device.type}_rng" in saved:  # cuda_rng, mps_rng: where dropout draws on an accelerator
            set_device_rng_state(self.device, saved[f"{self.device.type}_rng"])
        self.shuffle.set_state(saved["shuffle_rng"])
        if "augment_rng" in saved:  # states written before augmentation have none: nothing was drawn from it
            self.augmenting.set_state(saved["augment_rng"])
        if not self.job.compile:  # the BLAS it started with (before there was a choice: torch's): an exact resume
            self.use_blas(saved.get("blas", "torch"))
        return Progress(**{**saved["progress"], "best": unflatten(saved["progress"]["best"])})

    def save(self, progress: Progress) -> None:
        """The state after an epoch, snapshotted now and written while the next epoch trains (`state_writer`)."""
        saved = {f.name: getattr(progress, f.name) for f in fields(progress)}  # not asdict: no deep copy of `best`
        saved.update(history=list(progress.history), best=progress.best and flatten(progress.best))
        state = {
            "model": flatten(self.model.state_dict()),  # the copies of the live tensors (`flat_state`)
            "optimizer": flatten(self.opt.state_dict()),
            "schedule": self.schedule.state_dict() if self.schedule else None,
            "torch_rng": torch.get_rng_state(),
            "shuffle_rng": self.shuffle.get_state(),
            "augment_rng": self.augmenting.get_state(),
            "progress": saved,
            "blas": self.blas,
        }
        if self.device.type != "cpu":
            state[f"{self.device.type}_rng"] = device_rng_state(self.device)
        self.writer.submit(state, self._write_state)

    def _write_state(self, state: dict) -> None:
        save_pt(self.job.state_path, state)
        with atomic_path(Path(self.job.logs_dir) / f"{self.job.unit}.csv") as tmp:
            pd.DataFrame(state["progress"]["history"]).to_csv(tmp, index=False)
        self.trackers.epoch(state["progress"]["history"][-1])

    def close(self) -> None:
        """The last epoch's state on disk, the trackers' files closed (also when interrupted)."""
        self.writer.close()
        self.trackers.close()

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
        return unit_step(self.forward, self.opt, xb, yb, self.weight, self.t, self.augmenting)

    def _first_compiled_step(self, xb: torch.Tensor, yb: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Compilation happens on the first step; where it fails (no compiler, MPS, Windows), continue eagerly."""
        before = (copy.deepcopy(self.model.state_dict()), copy.deepcopy(self.opt.state_dict()), torch.get_rng_state())
        augmenting = self.augmenting.get_state()
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
            self.augmenting.set_state(augmenting)
            self.forward = self.model
            self.use_blas(self.job.blas)
            return self._step(xb, yb)

    def _accuracy(self, idx: torch.Tensor) -> float:
        return accuracy(self.model, self.x[idx], self.y[idx], device=str(self.device))

    def run_epoch(self, progress: Progress) -> dict:
        started = time.perf_counter()
        loss, train_acc = self.train_epoch()
        return self.record_epoch(progress, loss, train_acc, started)

    def record_epoch(self, progress: Progress, loss: float, train_acc: float, started: float) -> dict:
        """After an epoch's training (here or in a pack: `packed_training.train_pack`): the schedule moves on;
        evaluate, log, pick, stop."""
        t = self.t
        lr = self.opt.param_groups[0]["lr"]  # what this epoch trained with, before the schedule moves on
        next_epoch(self.schedule)
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
            "lr": lr,
            "val_acc": self._accuracy(self.va),
            "test_acc": self._accuracy(self.te) if test_due else float("nan"),
        }
        progress.history.append(row)
        if self.keeps_best_test and row["test_acc"] > (progress.best_test or {}).get("score", -1.0):
            probs, _ = infer(self.model, self.x[self.te], device=str(self.device))
            probs = torch.from_numpy(probs)
            progress.best_test = {"epoch": progress.epoch, "score": row["test_acc"], "test_probs": probs}
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

    def finish(self, progress: Progress, features: FeatureSet) -> UnitResult:
        job, cfg = self.job, self.cfg
        self.close()  # the last epoch's state is on disk before the unit's file replaces it
        chosen_epoch = progress.best_epoch if self.watch else len(progress.history)
        also = {}  # the last epoch too, where another was chosen: a study reports both policies from one training
        if self.watch:
            last, _ = infer(self.model, features.x[job.test], device=str(self.device))
            last_metrics = scores(features.y[job.test], last.argmax(1))
            also["last"] = {
                "metrics": last_metrics,
                "epoch": len(progress.history),
                "test_probs": torch.from_numpy(last),
            }
            self.model.load_state_dict(progress.best)
        if progress.best_test:
            probs = progress.best_test["test_probs"]
            also["best-test"] = {
                "metrics": scores(features.y[job.test], probs.numpy().argmax(1)),
                "epoch": progress.best_test["epoch"],
                "test_probs": probs,
            }
        probs, _ = infer(self.model, features.x[job.test], device=str(self.device))
        temperature = None
        if self.t.calibrate and len(job.val):  # fitted on the validation part: the test part stays unseen
            val_probs, _ = infer(self.model, features.x[job.val], device=str(self.device))
            temperature = fit_temperature(val_probs, features.y[job.val])
        predicted = probs.argmax(1)
        metrics = scores(features.y[job.test], predicted)
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
                "confusion": confusion(features.y[job.test], predicted, cfg.dataset.classes).to_numpy().tolist(),
                "test_stems": [str(s) for s in features.manifest.stem.iloc[job.test]],
                "test_probs": torch.from_numpy(probs),
                "history": progress.history,
                "temperature": temperature,
                "also": also,
            },
        )
        job.state_path.unlink(missing_ok=True)
        history = pd.DataFrame(progress.history)
        title = f"{cfg.dataset.name} {job.unit} ({self.t.checkpoint})"
        plot_history(history, Path(job.logs_dir) / f"{job.unit}.png", title, chosen_epoch)
        result = UnitResult(
            job.fold, job.seed, metrics, chosen_epoch, progress.seconds, list(job.test), probs, history, temperature
        )
        return replace(result, cell=job.cell)


def train_unit(job: UnitJob, features: FeatureSet | None = None, report: ProgressReport | None = None) -> UnitResult:
    """Train one unit: restore its state (if any) -> epochs, each saved -> evaluate the chosen weights, write them."""
    cfg = Config.from_dict(job.config)
    report = report or (lambda event: None)
    event = {"key": job.key, "epochs": cfg.train.epochs, "pid": os.getpid()}
    if job.final_path.exists():  # finished units are never redone
        report({**event, "event": "done", "epoch": cfg.train.epochs})
        return load_result(job.final_path, job.cell)
    features = features if features is not None else load_features(Path(job.mfcc_file), cfg.dataset.classes)
    with on_device(job.device):
        return _train(job, cfg, features, report, event)


def _train(job: UnitJob, cfg: Config, features: FeatureSet, report: ProgressReport, event: dict) -> UnitResult:
    features = model_inputs(features, cfg.train.normalize)  # what the model reads: as computed, or per speaker
    trainer = UnitTrainer(job, cfg, features)
    progress = trainer.restore()
    report({**event, "event": "start", "epoch": progress.epoch})
    try:
        while progress.epoch < cfg.train.epochs and not progress.stopped:
            row = trainer.run_epoch(progress)
            trainer.save(progress)
            report({**event, "event": "epoch", "epoch": progress.epoch, "row": row})
        result = trainer.finish(progress, features)
    finally:  # interrupted (Ctrl-C, an error): the last epoch's state still lands on disk
        trainer.close()
    report({**event, "event": "done", "epoch": cfg.train.epochs})
    return result
