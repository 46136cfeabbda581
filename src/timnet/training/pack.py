"""Packed units: several units of a run trained together in one process as ONE batched model (`train.pack`).

Every parameter, BatchNorm statistic and Adam moment carries a leading unit dimension U, so one step of U units
is one step's worth of operations on U-times larger tensors: on a GPU, where a TIM-Net step is bound by kernel
launches (~800 tiny kernels), U units cost about what one does. Each unit keeps what it has alone: its data order
(its shuffle generator), its dropout stream (a generator holding the RNG state it would have alone), its Adam
step count, its evaluation, checkpoint choice and early stopping (a stopped unit leaves the pack). Its numbers
equal its training alone to float tolerance, and its per-epoch state file is exactly today's (`FoldTrainer.save`),
so a packed unit resumes packed or alone (tests/test_packed.py). Shapes: U units, B batch, T frames, C channels.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from ..accel.capture import CapturedSteps, Step, resolve_capture
from ..core.config import Config
from ..core.devices import device_rng_state, on_device, set_device_rng_state
from ..data.features import FeatureSet, load_features
from ..model.network import TIMNet
from .runs import FoldResult, load_result
from .unit import FoldJob, FoldTrainer, Report

# helpers


def resolve_pack(setting: str, device: str, units: int) -> int:
    """`train.pack`: `auto` = every unit of the run on CUDA/MPS, 1 on CPU (measured there: a pack of 2 trains
    ~1.7x fewer unit-steps per second than one unit at a time, see README); an integer = at most that many units
    per pack."""
    if setting == "auto":
        return units if device.split(":")[0] in ("cuda", "mps") else 1
    return max(1, min(int(setting), units))


def causal_conv(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, dilation: int) -> torch.Tensor:
    """`model.CausalConv1d` per unit: [U, B, T, C_in] x weights [U, C_out, C_in, k] -> [U, B, T, C_out]."""
    U, B, T, c_in = x.shape
    k = weight.shape[-1]
    current = weight[..., k - 1].transpose(1, 2)  # [U, C_in, C_out]
    y = torch.baddbmm(bias[:, None, :], x.reshape(U, B * T, c_in), current).view(U, B, T, -1)
    for j in range(k - 1):
        shift = (k - 1 - j) * dilation
        if shift < T:  # taps further back than the sequence see only causal zero padding
            y[:, :, shift:] += x[:, :, :-shift] @ weight[..., j].transpose(1, 2)[:, None]
    return y


def _stacked(tensors: list[torch.Tensor]) -> torch.Tensor:
    return torch.stack([t.detach() for t in tensors]).clone()


# classes


class PackedTIMNet:
    """The U models of a pack as stacked tensors named like `TIMNet.state_dict()`, and their training forward."""

    def __init__(self, models: list[TIMNet]):
        self.config = models[0].config
        self.eps, self.momentum = models[0].forward_blocks[0].bn1.eps, models[0].forward_blocks[0].bn1.momentum
        self.dropout = models[0].forward_blocks[0].drop.p
        params, buffers = [dict(m.named_parameters()) for m in models], [dict(m.named_buffers()) for m in models]
        self.params = {n: _stacked([p[n] for p in params]).requires_grad_() for n in params[0]}
        self.buffers = {n: _stacked([b[n] for b in buffers]) for n in buffers[0]}

    @property
    def state(self) -> list[torch.Tensor]:
        """Every tensor a training step changes in place (`capture`)."""
        return [*self.params.values(), *self.buffers.values()]

    def unit_state(self, u: int) -> dict[str, torch.Tensor]:
        """Unit u's `TIMNet.state_dict()`."""
        return {n: t[u].detach().clone() for n, t in {**self.params, **self.buffers}.items()}

    def forward(self, x: torch.Tensor, units: torch.Tensor, dropout: list[torch.Generator]) -> torch.Tensor:
        """Training forward of the units `units` ([G] indices): MFCCs [G, B, T, F] -> logits [G, B, K]."""
        whole = len(units) == len(self.params["level_weights"])  # every unit steps: no gather (the usual case)
        p = self.params if whole else {n: t[units] for n, t in self.params.items()}
        drawn = _Masks(dropout, self.dropout)
        fwd = causal_conv(x, p["forward_in.weight"], p["forward_in.bias"], 1)  # [G, B, T, C]
        bwd = causal_conv(x.flip(2), p["backward_in.weight"], p["backward_in.bias"], 1)  # time reversed
        pooled = []
        for level in range(self.config.levels):
            d = 2**level
            fwd = self._block(p, f"forward_blocks.{level}.", fwd, d, units, drawn)
            bwd = self._block(p, f"backward_blocks.{level}.", bwd, d, units, drawn)
            pooled.append((fwd + bwd).mean(dim=2))  # [G, B, C]
        embedding = torch.stack(pooled, dim=-1) @ p["level_weights"][:, None, :, None]  # [G, B, C, 1]
        return torch.baddbmm(
            p["classifier.bias"][:, None, :], embedding[..., 0], p["classifier.weight"].transpose(1, 2)
        )

    def _block(self, p: dict, prefix: str, x: torch.Tensor, d: int, units: torch.Tensor, drawn: "_Masks"):
        """`model.TemporalAwareBlock`: 2 x (conv -> BatchNorm -> ReLU -> SpatialDropout), then x * sigmoid(h)."""
        h = x
        for conv, bn in (("conv1", "bn1"), ("conv2", "bn2")):
            h = causal_conv(h, p[f"{prefix}{conv}.weight"], p[f"{prefix}{conv}.bias"], d)
            h = F.relu(self._batch_norm(h, p, f"{prefix}{bn}.", units)) * drawn.next(h)
        return x * torch.sigmoid(h)

    def _batch_norm(self, h: torch.Tensor, p: dict, prefix: str, units: torch.Tensor) -> torch.Tensor:
        """Training BatchNorm per unit over batch and time of [G, B, T, C]; updates those units' running stats."""
        mean = h.mean(dim=(1, 2), keepdim=True)  # [G, 1, 1, C]
        centred = h - mean
        var = (centred * centred).mean(dim=(1, 2), keepdim=True)
        scale = torch.rsqrt(var + self.eps) * p[f"{prefix}weight"][:, None, None]
        with torch.no_grad():
            n = h.shape[1] * h.shape[2]
            m, stats = self.momentum, self.buffers
            running_mean, running_var = stats[f"{prefix}running_mean"], stats[f"{prefix}running_var"]
            running_mean[units] = (1 - m) * running_mean[units] + m * mean[:, 0, 0]
            running_var[units] = (1 - m) * running_var[units] + m * var[:, 0, 0] * (n / (n - 1))
            stats[f"{prefix}num_batches_tracked"][units] += 1
        return centred * scale + p[f"{prefix}bias"][:, None, None]


class _Masks:
    """SpatialDropout1d masks [G, B, 1, C], each unit's drawn from its own generator in the order it draws alone."""

    def __init__(self, generators: list[torch.Generator], p: float):
        self.generators, self.p = generators, p

    def next(self, h: torch.Tensor) -> torch.Tensor | float:
        if self.p == 0:
            return 1.0
        _, B, _, C = h.shape
        keep = [h.new_empty(B, 1, C).bernoulli_(1 - self.p, generator=g) for g in self.generators]
        return torch.stack(keep).div_(1 - self.p)


class PackedAdam:
    """`torch.optim.Adam` (its single-tensor arithmetic, op for op) over stacked parameters, a step count per unit."""

    def __init__(self, params: dict[str, torch.Tensor], opts: list[torch.optim.Adam]):
        group = opts[0].param_groups[0]
        self.lr, (self.beta1, self.beta2), self.eps = group["lr"], group["betas"], group["eps"]
        self.params = params
        states = [[opt.state.get(q, {}) for q in opt.param_groups[0]["params"]] for opt in opts]
        device = next(iter(params.values())).device
        self.steps = torch.tensor(  # float64 as torch's Python floats; on the device where it has float64 (not MPS)
            [float(s[0]["step"]) if s[0] else 0.0 for s in states],
            dtype=torch.float64,
            device=device if device.type == "cuda" else "cpu",
        )
        self.exp_avg, self.exp_avg_sq = {}, {}
        for i, (name, p) in enumerate(params.items()):
            unit = [s[i] for s in states]
            self.exp_avg[name] = torch.stack([u["exp_avg"] if u else torch.zeros_like(p[0]) for u in unit])
            self.exp_avg_sq[name] = torch.stack([u["exp_avg_sq"] if u else torch.zeros_like(p[0]) for u in unit])

    @property
    def state(self) -> list[torch.Tensor]:
        """Every tensor a step changes in place (`capture`)."""
        return [self.steps, *self.exp_avg.values(), *self.exp_avg_sq.values()]

    @torch.no_grad()
    def step(self, units: torch.Tensor) -> None:
        counted = units.to(self.steps.device)
        self.steps[counted] += 1
        steps = self.steps[counted]
        first = next(iter(self.params.values()))  # float64 as torch computes these in Python floats, then cast once
        step_size = (self.lr / (1 - self.beta1**steps)).to(first.dtype).to(first.device)  # [G]
        bias_sqrt = torch.sqrt(1 - self.beta2**steps).to(first.dtype).to(first.device)
        for name, p in self.params.items():
            shape = (-1,) + (1,) * (p.dim() - 1)
            grad, m, v = p.grad[units], self.exp_avg[name][units], self.exp_avg_sq[name][units]
            m.lerp_(grad, 1 - self.beta1)
            v.mul_(self.beta2).addcmul_(grad, grad, value=1 - self.beta2)
            denom = (v.sqrt() / bias_sqrt.view(shape)).add_(self.eps)
            p[units] += (-step_size.view(shape) * m) / denom
            self.exp_avg[name][units], self.exp_avg_sq[name][units] = m, v
            p.grad = None

    def unit_state(self, u: int, opt: torch.optim.Adam) -> dict:
        """Unit u's moments as `opt.state_dict()` holds them (parameters in `TIMNet.parameters()` order)."""
        state = {
            i: {"step": torch.tensor(float(self.steps[u])), "exp_avg": m[u].clone(), "exp_avg_sq": v[u].clone()}
            for i, (m, v) in enumerate(zip(self.exp_avg.values(), self.exp_avg_sq.values()))
        }
        return {"state": state, "param_groups": opt.state_dict()["param_groups"]}


def packed_step(model: PackedTIMNet, adam: PackedAdam, label_smoothing: float) -> Step:
    """One optimiser step of the units `units` (positions in the pack's model) on their own batches: per-unit mean
    losses [G] and correct predictions [G], on the device, without a host sync (so it can be captured)."""

    def step(units: torch.Tensor, x: torch.Tensor, y: torch.Tensor, generators: list) -> tuple:
        logits = model.forward(x, units, generators)  # [G, B, K]
        G, B, K = logits.shape
        per_unit = F.cross_entropy(
            logits.reshape(G * B, K), y.reshape(G * B), label_smoothing=label_smoothing, reduction="none"
        ).view(G, B)
        per_unit.mean(dim=1).sum().backward()  # units share no parameter: each gets its own mean's gradient
        adam.step(units)
        return per_unit.detach().mean(dim=1), (logits.detach().argmax(-1) == y).sum(dim=1)

    return step


class Pack:
    """The live units of one pack: their trainers (data, evaluation, files), generators, and the stacked model,
    which lives as long as the same units train (a stopped unit leaves: the rest are stacked again)."""

    def __init__(self, jobs: list[FoldJob], cfg: Config, features: FeatureSet):
        self.cfg, self.t = cfg, cfg.train
        self.trainers, self.progress, self.dropout = [], [], []
        for job in jobs:  # one after another: each unit's init and restore see the RNG as they do alone
            trainer = FoldTrainer(job, cfg, features)
            self.progress.append(trainer.restore())
            generator = torch.Generator(device=trainer.device)
            generator.set_state(device_rng_state(trainer.device))
            self.trainers.append(trainer)
            self.dropout.append(generator)
        self.device = self.trainers[0].device
        self.capture = resolve_capture(self.t.capture, str(self.device))
        self.members: tuple = ()

    def active(self) -> list[int]:
        return [u for u, p in enumerate(self.progress) if p.epoch < self.t.epochs and not p.stopped]

    def _stack(self, active: list[int]) -> None:
        """The stacked model and optimiser of the units `active`, from their trainers (which hold each epoch's end)."""
        self.members = tuple(active)
        trainers = [self.trainers[u] for u in active]
        self.model = PackedTIMNet([t.model for t in trainers])
        self.adam = PackedAdam(self.model.params, [t.opt for t in trainers])
        step = packed_step(self.model, self.adam, self.t.label_smoothing)
        label = " + ".join(t.job.unit for t in trainers)
        state = self.model.state + self.adam.state
        self.step = CapturedSteps(step, state, label) if self.capture else (lambda group, *args: step(*args))
        self.index: dict[tuple, torch.Tensor] = {}

    def train_epoch(self, active: list[int]) -> list[tuple[float, float]]:
        """One epoch of the active units, packed: [(mean loss, accuracy %)] per active unit. One host sync."""
        if tuple(active) != self.members:
            self._stack(active)
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
                losses, hits = self.step(tuple(group), units, x, y, generators)
                loss_sum.index_add_(0, units, losses * size)
                correct.index_add_(0, units, hits)
        for i, trainer in enumerate(trainers):
            trainer.model.load_state_dict(self.model.unit_state(i))
            trainer.opt.load_state_dict(self.adam.unit_state(i, trainer.opt))
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
    jobs: list[FoldJob], features: FeatureSet | None = None, report: Report | None = None
) -> list[FoldResult]:
    """Train the units of one run together (see module doc); finished units are loaded, as `train_fold` does."""
    cfg = Config.from_dict(jobs[0].config)
    report = report or (lambda event: None)
    events = {j.key: {"key": j.key, "epochs": cfg.train.epochs, "pid": os.getpid()} for j in jobs}
    todo = [j for j in jobs if not j.final_path.exists()]
    results = {}
    for job in jobs:
        if job not in todo:
            report({**events[job.key], "event": "done", "epoch": cfg.train.epochs})
            results[job.key] = load_result(job.final_path)
    if todo:
        features = features if features is not None else load_features(Path(todo[0].mfcc_file), cfg.dataset.classes)
        with on_device(todo[0].device):
            results |= _train(todo, cfg, features, report, events)
    return [results[j.key] for j in jobs]


def _train(todo: list[FoldJob], cfg: Config, features: FeatureSet, report: Report, events: dict) -> dict:
    """The epochs of the unfinished units `todo`, packed; {key: result}."""
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
            trainer.writer.close()
    return results
