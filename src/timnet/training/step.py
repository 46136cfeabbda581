"""One training step, defined once from [train]: the batch's augmentation (`augment`: SpecAugment-style time and
coefficient masks, mixup; off by default, drawn from the unit's own generator), the loss (cross-entropy with the
authors' label smoothing, weighted by `train.class_weights`; mixup's pair of losses), the optimiser
(`train.optimizer`, `train.weight_decay`, the authors' lr, betas and eps) and the learning-rate schedule
(`train.lr_schedule`, moved once per epoch). Every path derives from these: a unit alone (`unit_step`, in
`unit.UnitTrainer`), packed units (`augment_pack`: each unit's batch augmented as alone; `packed_step`: the same loss
under vmap, the same torch optimiser over the units' stacked parameters) and the timing of `timnet devices`.

Packing relies on the optimiser being elementwise (Adam's and AdamW's updates, weight decay included, are: each
element moves by its own gradient and state), so one instance of it over [U, ...] tensors computes each unit's own
update; what is per unit and not per element, the step count, is kept per unit (`PackedOptimizer`). `step_declines`
checks that for the settings and code at hand, so a change packing cannot compute (a researcher's own optimiser
that is not elementwise) trains unit by unit with one line saying why.
"""

from __future__ import annotations

import copy
import warnings
from typing import Callable, Iterable

import torch
import torch.nn.functional as F
from torch import nn

from ..accel.capture import CapturedSteps, Step
from ..accel.check import TOLERANCE, float_type, largest_difference, seeded, signature
from ..accel.packed_model import PackedTIMNet, pack_declines
from ..core.config import TrainSettings
from ..core.errors import TimnetError
from .augmentation import augment, augment_pack, augments, spans

OPTIMIZERS = {"adam": torch.optim.Adam, "adamw": torch.optim.AdamW}
# Optimiser group keys that say how it computes, not what: the packed instance keeps its own.
HOW = ("params", "fused", "foreach", "capturable", "differentiable")
_verdicts: dict = {}  # per process: (model, settings, the step's code) -> `step_declines`

# the definition


def class_weights(t: TrainSettings, labels: torch.Tensor, n_classes: int, dtype: torch.dtype) -> torch.Tensor | None:
    """`train.class_weights` of a unit, from its training labels: none, or balanced (scikit-learn's: n / (K x the
    class's count), so each class weighs the same in the loss)."""
    if t.class_weights == "none":
        return None
    counts = torch.bincount(labels, minlength=n_classes).clamp(min=1).double()
    return (len(labels) / (n_classes * counts)).to(dtype)


def loss(logits: torch.Tensor, y: torch.Tensor, weight: torch.Tensor | None, t: TrainSettings) -> torch.Tensor:
    """The unit's loss on a batch: logits [B, K], labels [B], class weights [K] or None."""
    return F.cross_entropy(logits, y, weight=weight, label_smoothing=t.label_smoothing)


def mixed_loss(logits: torch.Tensor, y: torch.Tensor, weight, t: TrainSettings, mix: tuple | None) -> torch.Tensor:
    """`loss`, or under mixup (mix = (the partners' labels [B], lambda)) lambda x the loss on the batch's labels +
    (1 - lambda) x the loss on the partners' (Zhang et al. 2018), each with the step's smoothing and class weights."""
    if mix is None:
        return loss(logits, y, weight, t)
    partners, lam = mix
    return lam * loss(logits, y, weight, t) + (1 - lam) * loss(logits, partners, weight, t)


def make_optimizer(params: Iterable, t: TrainSettings, device: torch.device, **how) -> torch.optim.Optimizer:
    """The unit's optimiser. On the CPU torch's fused kernel: one kernel over TIM-Net's 135 tensors instead of a loop
    of small ones (a resumed unit keeps the kind it started with: `load_state_dict` restores `fused`)."""
    how = {"fused": True if device.type == "cpu" else None, **how}
    kind = OPTIMIZERS[t.optimizer]
    return kind(params, lr=t.lr, betas=(t.beta1, t.beta2), eps=t.eps, weight_decay=t.weight_decay, **how)


def make_schedule(opt: torch.optim.Optimizer, t: TrainSettings) -> torch.optim.lr_scheduler.LRScheduler | None:
    """`train.lr_schedule`, stepped once after each epoch; None: the learning rate stays (the authors')."""
    if t.lr_schedule == "step":
        return torch.optim.lr_scheduler.StepLR(opt, t.lr_step_size, t.lr_gamma)
    if t.lr_schedule == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(opt, t.epochs, t.lr_min)
    return None


def next_epoch(schedule: torch.optim.lr_scheduler.LRScheduler | None) -> None:
    """The schedule moves on after an epoch. A packed unit's own optimiser did not step (the pack's did, for it),
    which torch's schedulers would warn about."""
    if schedule:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", r"Detected call of `lr_scheduler\.step\(\)` before", UserWarning)
            schedule.step()


def hyperparameters(opt: torch.optim.Optimizer) -> list[dict]:
    """What an optimiser's groups say it computes with now (its schedule moves the learning rate)."""
    return [{k: v for k, v in group.items() if k not in HOW} for group in opt.param_groups]


def unit_step(forward: Callable, opt: torch.optim.Optimizer, x, y, weight, t: TrainSettings, augmenting=None) -> tuple:
    """One step of a unit alone, its batch augmented from the generator `augmenting` (`augment`): (logits, loss),
    detached."""
    x, mix = augment(x, y, t, augmenting)  # off (the defaults): x itself, no draw
    logits = forward(x)
    value = mixed_loss(logits, y, weight, t, mix)
    opt.zero_grad(set_to_none=True)
    value.backward()
    opt.step()
    return logits.detach(), value.detach()


# packed units


def _stacked_state(states: list[dict], param: torch.Tensor) -> dict:
    """One parameter's optimiser state over the units (fresh units: zeros); only elementwise state stacks."""
    template = next(s for s in states if s)
    stacked = {}
    for key, value in template.items():
        if key == "step":
            stacked[key] = value.clone()
        elif isinstance(value, torch.Tensor) and value.shape == param.shape[1:]:
            stacked[key] = torch.stack([s[key] if s else torch.zeros_like(value) for s in states])
        else:
            raise TimnetError(f"its optimiser state {key!r} is not one value per parameter element")
    return stacked


class PackedOptimizer:
    """ONE instance of the units' optimiser (`build`, from the one definition) over their stacked parameters. Each
    unit keeps its step count: units whose counts differ step apart, and the units that do not step have their
    slices of the parameters and state put back. The learning rate follows the units' own optimisers (`follow`),
    which their own schedules move."""

    def __init__(self, params: dict[str, torch.Tensor], opts: list[torch.optim.Optimizer], build: Callable):
        self.params = list(params.values())
        self.opt = build(self.params)
        self.units = len(opts)
        states = [[opt.state.get(q, {}) for g in opt.param_groups for q in g["params"]] for opt in opts]
        self.counts = [max((int(s["step"]) for s in unit if "step" in s), default=0) for unit in states]
        units = [[u[i] for u in states] for i in range(len(self.params))]
        stacked = {i: _stacked_state(unit, p) for i, (unit, p) in enumerate(zip(units, self.params)) if any(unit)}
        groups = self.opt.state_dict()["param_groups"]
        self.opt.load_state_dict({"state": stacked, "param_groups": groups})  # placed as torch places its own
        kept_on_device = self.opt.defaults.get("capturable") or self.opt.defaults.get("fused")
        on = self.params[0].device if kept_on_device else torch.device("cpu")
        self.steps = torch.tensor(self.counts, dtype=torch.float32, device=on)  # as the captured graphs count
        self.planned: list[list[int]] = []
        self.follow(opts[0])

    @property
    def fresh(self) -> bool:
        """No state yet (it is made at the first step, which cannot be captured)."""
        return not self.opt.state

    @property
    def state(self) -> list[torch.Tensor]:
        """Every tensor a step changes in place (`capture`)."""
        kept = [v for s in self.opt.state.values() for v in s.values() if isinstance(v, torch.Tensor)]
        return [self.steps, *kept]

    def follow(self, opt: torch.optim.Optimizer) -> bool:
        """The hyperparameters a unit's optimiser holds now (its schedule moves them); True where one changed."""
        changed = False
        for mine, theirs in zip(self.opt.param_groups, hyperparameters(opt), strict=True):
            for key, value in theirs.items():
                if mine.get(key) != value:
                    mine[key], changed = value, True
        return changed

    def plan(self, group: tuple[int, ...]) -> tuple:
        """The next step's units (positions), by step count: what `step` does, and the key of its CUDA graph."""
        classes: dict[int, list[int]] = {}
        for u in group:
            classes.setdefault(self.counts[u], []).append(u)
        for u in group:
            self.counts[u] += 1
        self.planned = list(classes.values())
        return tuple(map(tuple, self.planned))

    @torch.no_grad()
    def step(self) -> None:
        """The planned step (`plan`), from the gradients in the stacked parameters' `.grad`."""
        for members in self.planned:
            others = [u for u in range(self.units) if u not in members]
            kept = [[t[others].clone() for t in (p, *self._moments(p))] for p in self.params] if others else []
            for state in self.opt.state.values():
                if "step" in state:
                    state["step"].copy_(self.steps[members[0]])
            self.opt.step()
            for p, saved in zip(self.params, kept):
                for t, value in zip((p, *self._moments(p)), saved):
                    t[others] = value
            for u in members:
                self.steps[u] += 1
        self.opt.zero_grad(set_to_none=True)

    def _moments(self, p: torch.Tensor) -> list[torch.Tensor]:
        return [v for k, v in self.opt.state.get(p, {}).items() if k != "step"]

    def unit_state(self, u: int, opt: torch.optim.Optimizer) -> dict:
        """Unit u's state as `opt.state_dict()` holds it (parameters in `TIMNet.parameters()` order)."""
        state = {}
        for i, p in enumerate(self.params):
            if saved := self.opt.state.get(p):
                step = torch.tensor(float(self.counts[u]))
                state[i] = {k: step if k == "step" else v[u].clone() for k, v in saved.items()}
        return {"state": state, "param_groups": opt.state_dict()["param_groups"]}


def packed_step(model: PackedTIMNet, optimizer: PackedOptimizer, t: TrainSettings, weights=None) -> Step:
    """One optimiser step of the units `units` (positions, planned: `PackedOptimizer.plan`) on their own batches,
    augmented (`augment_pack`; mix: mixup's partners and lambdas, or None): the loss per unit [G] (`mixed_loss` under
    vmap; `weights` [U, K]: each unit's class weights) and correct predictions [G], on the device, without a host
    sync (so it can be captured)."""
    w = None if weights is None else 0
    unit_loss = lambda logits, y, weight, mix: mixed_loss(logits, y, weight, t, mix)  # noqa: E731
    per_unit = torch.vmap(unit_loss, in_dims=(0, 0, w, None))
    per_unit_mixed = torch.vmap(unit_loss, in_dims=(0, 0, w, (0, 0)))

    def step(units: torch.Tensor, x: torch.Tensor, y: torch.Tensor, generators: list, mix=None) -> tuple:
        logits = model.forward(x, units, generators)  # [G, B, K]
        losses = (per_unit if mix is None else per_unit_mixed)(logits, y, None if w is None else weights[units], mix)
        losses.sum().backward()  # units share no parameter: each gets its own loss's gradient
        optimizer.step()
        return losses.detach(), (logits.detach().argmax(-1) == y).sum(dim=1)

    return step


def packed_optimizer(packed: PackedTIMNet, opts: list, t: TrainSettings, device, **how) -> PackedOptimizer:
    return PackedOptimizer(packed.params, opts, lambda params: make_optimizer(params, t, device, **how))


# checks


def check_epochs(t: TrainSettings) -> list[int]:
    """The epochs at which `step_declines` steps: the first, and either side of each change of the schedule (the
    schedule moves through the epochs between without steps)."""
    points = {0, 1, 2}
    if t.lr_schedule == "step":
        points |= {k * t.lr_step_size + d for k in (1, 2) for d in (-1, 0, 1)}
    if t.lr_schedule == "cosine":
        points |= {k * t.epochs // 2 + d for k in (1, 2) for d in (-1, 0)}
    return sorted(p for p in points if 0 <= p < t.epochs)


def step_declines(model: nn.Module, t: TrainSettings, device: torch.device) -> str | None:
    """Why units of `model` trained with `t` cannot be packed on `device`, or None: the packed pass must be the
    reference's (`packed_model.pack_declines`), and packed steps must end where each unit's own steps end — two units,
    float64 (where the device has it), their own data, class weights, dropout and augmentation streams, stepping at
    `check_epochs` (one of them twice at the first: their step counts then differ), the schedule moved every
    epoch between. A step that cannot run is a reason."""
    if reason := pack_declines(model, device):
        return reason
    code = (OPTIMIZERS.get(t.optimizer), make_optimizer.__code__, make_schedule.__code__, loss.__code__)
    code += (mixed_loss.__code__, augments.__code__, augment.__code__, spans.__code__, augment_pack.__code__)
    code += (unit_step.__code__, packed_step.__code__, next_epoch.__code__)  # the steps the check runs, both ways
    key = (signature(model, device.type), repr(t), code)
    if key not in _verdicts:
        _verdicts[key] = _step_verdict(model, t, device)
    return _verdicts[key]


def _step_verdict(model: nn.Module, t: TrainSettings, device: torch.device) -> str | None:
    try:
        alone, packed = trained_both_ways(model, t, device)
    except Exception as err:  # noqa: BLE001 — an optimiser packing cannot hold (state that is not elementwise)
        return f"the packed step cannot run ({type(err).__name__}: {str(err).splitlines()[0][:160]})"
    diff = largest_difference(alone, packed)
    if diff <= TOLERANCE[float_type(device)]:
        return None
    return f"packed steps of {t.optimizer} end {diff:.1e} away from each unit's own (relative)"


def trained_both_ways(model: nn.Module, t: TrainSettings, device: torch.device) -> tuple[list, list]:
    """(each unit trained alone, the same units packed): the loss of every step, then the function each unit
    computes (its logits in training mode on a probe batch, from a seeded dropout stream). Not the weights
    themselves: a bias just before a BatchNorm has a gradient of rounding noise, which Adam turns into steps of
    either sign, the same function either way (`step_declines`)."""
    dtype, K = float_type(device), model.config.n_classes
    draw = torch.Generator().manual_seed(4)
    x = torch.randn(2, 2, 4, 24, model.config.n_mfcc, generator=draw, dtype=torch.float64).to(device, dtype)
    y = torch.randint(0, K, (2, 2, 4), generator=draw).to(device)  # [unit, batch, B]
    weights = [class_weights(t, y[u].flatten(), K, dtype) for u in range(2)]
    models = [copy.deepcopy(model).to(device, dtype).train() for _ in range(2)]
    epochs = check_epochs(t)
    alone = []
    for u in range(2):
        m = copy.deepcopy(models[u])
        opt = make_optimizer(m.parameters(), t, device)
        schedule = make_schedule(opt, t)
        augmenting = torch.Generator().manual_seed(20 + u)
        with seeded(device, 10 + u):  # alone, dropout draws from torch's generator
            for epoch in range(epochs[-1] + 1):
                if epoch in epochs:
                    for b in range(2 if epoch == 0 and u == 0 else 1):
                        alone.append(unit_step(m, opt, x[u, b], y[u, b], weights[u], t, augmenting)[1])
                next_epoch(schedule)
        with torch.no_grad(), seeded(device, 99):
            alone.append(m(x[1, 1]))
    return alone, _packed(models, t, device, epochs, x, y, weights)


def _packed(models: list, t: TrainSettings, device, epochs: list[int], x, y, weights: list) -> list:
    opts = [make_optimizer(m.parameters(), t, device) for m in models]
    schedules = [make_schedule(opt, t) for opt in opts]
    packed = PackedTIMNet(models)
    optimizer = packed_optimizer(packed, opts, t, device)
    stacked = None if weights[0] is None else torch.stack(weights)
    step = packed_step(packed, optimizer, t, stacked)
    streams = [torch.Generator(device=device).manual_seed(10 + u) for u in range(2)]
    augmenting = [torch.Generator().manual_seed(20 + u) for u in range(2)]
    units, losses = torch.arange(2, device=device), [[], []]
    for epoch in range(epochs[-1] + 1):
        if epoch in epochs:
            groups = [(0, 1), (0,)] if epoch == 0 else [(0, 1)]
            for b, group in enumerate(groups):
                optimizer.plan(group)
                g, n = units[: len(group)], len(group)
                xb, mix = augment_pack(x[:n, b], y[:n, b], t, augmenting[:n])
                got = step(g, xb, y[:n, b], streams[:n], mix)[0]
                for u in group:
                    losses[u].append(got[u])
        for schedule in schedules:
            next_epoch(schedule)
        optimizer.follow(opts[0])
    probe = [torch.Generator(device=device).manual_seed(99) for _ in range(2)]
    with torch.no_grad():
        logits = packed.forward(x[1, 1].expand(2, *x.shape[2:]), units, probe)
    return [*losses[0], logits[0], *losses[1], logits[1]]


def capture_declines(model: nn.Module, t: TrainSettings, device: torch.device, steps: int = 3) -> str | None:
    """Why a pack of `model`'s units cannot be captured as CUDA graphs on `device`, or None: a pack of two trained
    `steps` steps captured must end where the same pack trained eagerly ends (float32, as training runs). Any
    failure of the check itself is a reason."""
    if device.type != "cuda":
        return f"CUDA graphs need a CUDA device, not {device.type}"
    if reason := step_declines(model, t, device):
        return reason
    try:
        diff = largest_difference(*(_trained_pack(model, t, device, steps, captured) for captured in (False, True)))
    except Exception as err:  # noqa: BLE001 — a check that cannot run is a reason not to capture
        return f"the capture check failed ({type(err).__name__}: {str(err).splitlines()[0][:120]})"
    return None if diff <= TOLERANCE[torch.float32] else f"captured steps end {diff:.1e} away from eager ones"


def _trained_pack(model: nn.Module, t: TrainSettings, device, steps: int, captured: bool) -> list[torch.Tensor]:
    """The stacked weights of a pack of two copies of `model` after `steps` steps on fixed random batches."""
    models = [copy.deepcopy(model).to(device).float() for _ in range(2)]
    opts = [make_optimizer(m.parameters(), t, device) for m in models]
    packed = PackedTIMNet(models)
    optimizer = packed_optimizer(packed, opts, t, device, capturable=True)
    step = packed_step(packed, optimizer, t)
    graphs = CapturedSteps(step, [], "capture check") if captured else None
    draw = torch.Generator().manual_seed(3)
    x = torch.randn(2, 4, 24, model.config.n_mfcc, generator=draw).to(device)
    y = torch.randint(0, model.config.n_classes, (2, 4), generator=draw).to(device)
    streams = [torch.Generator(device=device).manual_seed(s) for s in (1, 2)]
    augmenting = [torch.Generator().manual_seed(s) for s in (3, 4)]
    units = torch.arange(2, device=device)
    for group in [(0, 1)] * steps + [(0,)]:  # the whole pack, then one unit alone (an uneven last batch)
        key = optimizer.plan(group)
        n = len(group)
        xb, mix = augment_pack(x[:n], y[:n], t, augmenting[:n])
        args = (units[:n], xb, y[:n], streams[:n], mix)
        if graphs and not optimizer.fresh:
            graphs.state = packed.state + optimizer.state
            graphs(key, *args)
        else:
            step(*args)
    return [p.detach().cpu() for p in packed.params.values()]
