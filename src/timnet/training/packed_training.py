"""Training packed units (`train.pack`): the units of a run stepped together as one batched model
(`accel.packed_model`, `step`), each keeping its data order, dropout and augmentation streams, optimiser step count,
evaluation, checkpoint choice, early stopping (a stopped unit leaves the pack) and schedule (a pack steps units of
one learning rate: units resumed at epochs their schedule sets apart catch up first, trained to float tolerance
rather than bit for bit, as a pack of another size). Its numbers equal its training alone to float tolerance, and
its per-epoch state file is a unit's own (`UnitTrainer.save`), so a packed unit resumes packed or alone
(tests/test_packed.py)."""

from __future__ import annotations

import os
import time
import warnings
from pathlib import Path

import torch

from ..accel.accelerate import FastPathDeclined
from ..accel.capture import CapturedSteps, resolve_capture
from ..accel.packed_model import PackedTIMNet
from ..core.config import Config, TIMNetConfig
from ..core.devices import device_rng_state, on_device, set_device_rng_state
from ..data.feature_files import FeatureSet, load_features
from ..data.speaker_normalization import model_inputs
from ..model.network import TIMNet
from .augmentation import augment_pack
from .run_store import UnitResult, load_result
from .step import capture_declines, hyperparameters, packed_optimizer, packed_step
from .unit import ProgressReport, UnitJob, UnitTrainer


def reference_model(cfg: Config, device: torch.device | str) -> TIMNet:
    """A fresh reference model of cfg's architecture on `device`, for a fast path's check (torch's RNG untouched)."""
    with torch.random.fork_rng(devices=[]):  # building a model draws its initial weights
        return TIMNet(TIMNetConfig.from_config(cfg)).to(device)


# classes


class Pack:
    """The live units of one pack: their trainers (data, evaluation, files), generators, and the stacked model,
    which lives as long as the same units train (a stopped unit leaves: the rest are stacked again)."""

    def __init__(self, jobs: list[UnitJob], cfg: Config, features: FeatureSet):
        self.cfg, self.t = cfg, cfg.train
        self.trainers, self.progress, self.dropout = [], [], []
        for job in jobs:  # one after another: each unit's init and restore see the RNG as they do alone
            trainer = UnitTrainer(job, cfg, features)
            self.progress.append(trainer.restore())
            generator = torch.Generator(device=trainer.device)
            generator.set_state(device_rng_state(trainer.device))
            self.trainers.append(trainer)
            self.dropout.append(generator)
        self.device = self.trainers[0].device
        self.capture = resolve_capture(self.t.capture, str(self.device))
        if self.capture and (reason := capture_declines(reference_model(cfg, self.device), self.t, self.device)):
            line = f"timnet: captured steps step aside: {reason}; the pack steps eagerly"
            warnings.warn(line, FastPathDeclined, stacklevel=2)
            self.capture = False
        self.members: tuple = ()

    def active(self) -> list[int]:
        """The units left to train that step with the hyperparameters of the earliest among them (one optimiser,
        one learning rate: units resumed at epochs their schedule sets apart catch up first)."""
        left = [u for u, p in enumerate(self.progress) if p.epoch < self.t.epochs and not p.stopped]
        if not left:
            return []
        now = hyperparameters(self.trainers[min(left, key=lambda u: self.progress[u].epoch)].opt)
        return [u for u in left if hyperparameters(self.trainers[u].opt) == now]

    def _stack(self, active: list[int]) -> None:
        """The stacked model and optimiser of the units `active`, from their trainers (which hold each epoch's end)."""
        self.members = tuple(active)
        trainers = [self.trainers[u] for u in active]
        self.model = PackedTIMNet([t.model for t in trainers])
        how = {"capturable": True} if self.capture else {}
        self.optimizer = packed_optimizer(self.model, [t.opt for t in trainers], self.t, self.device, **how)
        weights = None if trainers[0].weight is None else torch.stack([t.weight for t in trainers])
        self.packed_step = packed_step(self.model, self.optimizer, self.t, weights)
        self._capture_anew()
        self.index: dict[tuple, torch.Tensor] = {}

    def _capture_anew(self) -> None:
        """CUDA graphs hold the learning rate they were recorded with: recorded again when the schedule moves it."""
        label = " + ".join(self.trainers[u].job.unit for u in self.members)
        self.graphs = CapturedSteps(self.packed_step, [], label) if self.capture else None

    def _step(self, group: tuple, *args) -> tuple:
        key = self.optimizer.plan(group)
        if self.graphs is None or self.optimizer.fresh:  # the optimiser's state is made at its first step
            return self.packed_step(*args)
        self.graphs.state = self.model.state + self.optimizer.state
        return self.graphs(key, *args)

    def train_epoch(self, active: list[int]) -> list[tuple[float, float]]:
        """One epoch of the active units, packed: [(mean loss, accuracy %)] per active unit. One host sync."""
        if tuple(active) != self.members:
            self._stack(active)
        elif self.optimizer.follow(self.trainers[active[0]].opt) and self.capture:
            self._capture_anew()
        trainers = [self.trainers[u] for u in active]
        orders = [t.tr[torch.randperm(len(t.tr), generator=t.shuffle).to(t.device)] for t in trainers]
        loss_sum = torch.zeros(len(active), device=self.device)
        correct = torch.zeros(len(active), dtype=torch.int64, device=self.device)
        bs = self.t.batch_size
        for start in range(0, max(map(len, orders)), bs):
            by_size: dict[int, list[int]] = {}  # units whose batch here has the same size step together
            for i, order in enumerate(orders):
                if start < len(order):
                    by_size.setdefault(len(order[start : start + bs]), []).append(i)
            for size, group in by_size.items():
                if tuple(group) not in self.index:  # positions on the device, copied there once
                    self.index[tuple(group)] = torch.tensor(group, device=self.device)
                units = self.index[tuple(group)]
                batches = [orders[i][start : start + bs] for i in group]
                x = torch.stack([trainers[i].x[b] for i, b in zip(group, batches)])  # [G, B, T, F]
                y = torch.stack([trainers[i].y[b] for i, b in zip(group, batches)])  # [G, B]
                generators = [self.dropout[active[i]] for i in group]
                x, mix = augment_pack(x, y, self.t, [trainers[i].augmenting for i in group])  # each as alone
                losses, hits = self._step(tuple(group), units, x, y, generators, mix)
                loss_sum.index_add_(0, units, losses * size)
                correct.index_add_(0, units, hits)
        for i, trainer in enumerate(trainers):
            trainer.model.load_state_dict(self.model.unit_state(i))
            trainer.opt.load_state_dict(self.optimizer.unit_state(i, trainer.opt))
        sizes = [len(o) for o in orders]
        return [(s / n, 100.0 * c / n) for s, c, n in zip(loss_sum.tolist(), correct.tolist(), sizes)]

    def record(self, u: int, loss: float, train_acc: float, seconds: float) -> dict:
        """Unit u's epoch as it records it alone (evaluation, checkpoint choice, early stopping), then its state
        file, with its own dropout stream in the RNG slot it saves."""
        trainer, generator = self.trainers[u], self.dropout[u]
        row = trainer.record_epoch(self.progress[u], loss, train_acc, time.perf_counter() - seconds)
        set_device_rng_state(trainer.device, generator.get_state())
        trainer.save(self.progress[u])
        return row


def train_pack(
    jobs: list[UnitJob], features: FeatureSet | None = None, report: ProgressReport | None = None
) -> list[UnitResult]:
    """Train the units of one run together (see module doc); finished units are loaded, as `train_unit` does."""
    cfg = Config.from_dict(jobs[0].config)
    report = report or (lambda event: None)
    events = {j.key: {"key": j.key, "epochs": cfg.train.epochs, "pid": os.getpid()} for j in jobs}
    todo = [j for j in jobs if not j.final_path.exists()]
    results = {}
    for job in jobs:
        if job not in todo:
            report({**events[job.key], "event": "done", "epoch": cfg.train.epochs})
            results[job.key] = load_result(job.final_path, job.cell)
    if todo:
        features = features if features is not None else load_features(Path(todo[0].mfcc_file), cfg.dataset.classes)
        with on_device(todo[0].device):
            results |= _train(todo, cfg, features, report, events)
    return [results[j.key] for j in jobs]


def _train(todo: list[UnitJob], cfg: Config, features: FeatureSet, report: ProgressReport, events: dict) -> dict:
    """The epochs of the unfinished units `todo`, packed; {key: result}."""
    features = model_inputs(features, cfg.train.normalize)  # what the model reads: as computed, or per speaker
    results, pack = {}, Pack(todo, cfg, features)
    for job, progress in zip(todo, pack.progress):
        report({**events[job.key], "event": "start", "epoch": progress.epoch})
    try:
        while active := pack.active():
            started = time.perf_counter()
            trained = pack.train_epoch(active)
            share = (time.perf_counter() - started) / len(active)  # each unit's part of the pack's epoch
            for u, (loss, acc) in zip(active, trained):
                row = pack.record(u, loss, acc, share)
                report({**events[todo[u].key], "event": "epoch", "epoch": pack.progress[u].epoch, "row": row})
        for job, trainer, progress in zip(todo, pack.trainers, pack.progress):
            results[job.key] = trainer.finish(progress, features)
            report({**events[job.key], "event": "done", "epoch": cfg.train.epochs})
    finally:  # interrupted: every unit's last epoch still lands on disk
        for trainer in pack.trainers:
            trainer.close()
    return results
