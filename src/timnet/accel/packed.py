"""Packed units: several units of a run trained together in one process as ONE batched model (`train.pack`).

Every parameter, BatchNorm statistic and Adam moment carries a leading unit dimension U, so one step of U units
is one step's worth of operations on U-times larger tensors: on a GPU, where a TIM-Net step is bound by kernel
launches (~800 tiny kernels), U units cost about what one does. Each unit keeps what it has alone: its data order,
its dropout stream (a generator holding the RNG state it would have alone), its Adam step count.

There is no packed copy of the network: `PackedTIMNet` runs the model's own forward (`model/network.py`, or
whatever the model at hand defines) on each unit's stacked weights with `torch.func.functional_call` under
`torch.vmap`. Dropout is the one thing vmap cannot draw per unit from the unit's own stream, so each
`SpatialDropout1d`'s masks are drawn before the forward by its own `keep`, from each unit's generator in the order
the unit draws alone, and fed in. A model with other random draws, or anything vmap cannot batch, is caught by
`pack_declines` (which also checks the packed pass against the reference on the device that will train) and trains
unit by unit, with one line saying so.
Shapes: U units (G of them stepping), B batch, T frames, C channels.
"""

from __future__ import annotations

import contextlib
import copy
import functools

import torch
import torch.nn.functional as F
from torch.func import functional_call

from ..model.network import SpatialDropout1d, TIMNet
from .accelerate import reference
from .capture import CapturedSteps, Step
from .check import TOLERANCE, cached, difference, equal, largest_difference, loss_weights, seeded, signature

# helpers


def resolve_pack(setting: str, device: str, units: int) -> int:
    """`train.pack`: `auto` = every unit of the run on CUDA/MPS, 1 on CPU (a pack trains fewer unit-steps per
    second there than units alone: `timnet devices` measures it); an integer = at most that many units
    per pack."""
    if setting == "auto":
        return units if device.split(":")[0] in ("cuda", "mps") else 1
    return max(1, min(int(setting), units))


def pack_declines(model: TIMNet, device: torch.device) -> str | None:
    """Why units of `model` cannot be packed on `device`, or None: the packed training pass must be the reference's
    on that device (float64 where it has it), checked once per machine; a pass that cannot run is a reason."""
    try:
        diff = difference(model, _packed_passes, device, ("packed",))
    except Exception as err:  # noqa: BLE001 — what vmap cannot batch (another random draw, data-dependent code)
        return f"the packed pass cannot run ({type(err).__name__}: {str(err).splitlines()[0][:160]})"
    return None if equal(diff, device) else f"it computes {diff:.1e} away from the reference on {device} (relative)"


def _packed_passes(model: TIMNet, x: torch.Tensor) -> list:
    """`check.passes` of `model` trained as a pack of one: the same dropout stream, then evaluated alone after it
    (as a packed unit is)."""
    packed = PackedTIMNet([model])
    stream = torch.Generator(device=x.device).manual_seed(0)  # as `check.seeded` seeds torch's own
    logits = packed.forward(x[None], torch.zeros(1, dtype=torch.long, device=x.device), [stream])[0]
    (logits * loss_weights(model, x)).sum().backward()
    grads = [packed.params[n].grad[0] for n, _ in model.named_parameters()]
    model.load_state_dict(packed.unit_state(0))
    model.eval()
    with torch.no_grad(), seeded(x.device):
        evaluated = model(x)
    return [logits.detach(), *grads, *(b.detach().clone() for b in model.buffers()), evaluated]


def _stacked(tensors: list[torch.Tensor]) -> torch.Tensor:
    return torch.stack([t.detach() for t in tensors]).clone()


@contextlib.contextmanager
def _keeps(dropouts: list[SpatialDropout1d], keep):
    """Every dropout layer's `keep(x)` answered by `keep(layer, x)` for the duration."""
    for layer in dropouts:
        layer.keep = functools.partial(keep, layer)
    try:
        yield
    finally:
        for layer in dropouts:
            del layer.keep


# classes


class PackedTIMNet:
    """The U models of a pack as stacked tensors named like `TIMNet.state_dict()`, trained by one of them (its
    structure and code, not its weights) under vmap."""

    def __init__(self, models: list[TIMNet]):
        self.template = reference(copy.deepcopy(models[0])).train()  # the model as defined, no fast path
        self.dropouts = [m for m in self.template.modules() if isinstance(m, SpatialDropout1d)]
        params, buffers = [dict(m.named_parameters()) for m in models], [dict(m.named_buffers()) for m in models]
        self.params = {n: _stacked([p[n] for p in params]).requires_grad_() for n in params[0]}
        self.buffers = {n: _stacked([b[n] for b in buffers]) for n in buffers[0]}
        self.draws: dict[tuple, list] = {}  # per input shape: [(dropout layer, the x its keep sees)] in call order

    @property
    def state(self) -> list[torch.Tensor]:
        """Every tensor a training step changes in place (`capture`)."""
        return [*self.params.values(), *self.buffers.values()]

    def unit_state(self, u: int) -> dict[str, torch.Tensor]:
        """Unit u's `TIMNet.state_dict()`."""
        return {n: t[u].detach().clone() for n, t in {**self.params, **self.buffers}.items()}

    def forward(self, x: torch.Tensor, units: torch.Tensor, dropout: list[torch.Generator]) -> torch.Tensor:
        """Training forward of the units `units` ([G] indices): MFCCs [G, B, T, F] -> logits [G, B, K]; the units'
        BatchNorm statistics move as they do alone."""
        whole = len(units) == len(self.params[next(iter(self.params))])  # every unit steps: no gather (usual)
        params = self.params if whole else {n: t[units] for n, t in self.params.items()}
        buffers = self.buffers if whole else {n: t[units] for n, t in self.buffers.items()}  # copies
        masks = self._masks(x, dropout)
        logits = torch.vmap(self._unit, randomness="error")(params, buffers, x, masks)  # updates `buffers`
        if not whole:
            for name, stat in buffers.items():
                self.buffers[name][units] = stat
        return logits

    def _unit(self, params: dict, buffers: dict, x: torch.Tensor, masks: list) -> torch.Tensor:
        """One unit's training forward (vmap gives each unit's slice): the model's own, its dropout masks fed in."""
        fed = iter(masks)
        with _keeps(self.dropouts, lambda layer, h: next(fed)):
            return functional_call(self.template, (params, buffers), (x,))

    def _masks(self, x: torch.Tensor, dropout: list[torch.Generator]) -> list[torch.Tensor]:
        """Each dropout call's masks [G, ...], drawn by the layer's own `keep` from each unit's generator, in the
        order a unit alone draws them (found once per input shape by a forward that draws nothing)."""
        key = (tuple(x.shape[1:]), x.dtype, x.device)
        if key not in self.draws:
            self.draws[key] = self._calls(x[0])
        return [torch.stack([layer.keep(h, generator=g) for g in dropout]) for layer, h in self.draws[key]]

    def _calls(self, x: torch.Tensor) -> list:
        """[(layer, a stand-in for the x its keep sees)] of one training forward of unit 0, in call order."""
        calls = []

        def record(layer, h):
            calls.append((layer, h.new_empty(()).expand(h.shape)))  # shape, dtype and device: no memory
            return torch.ones((), dtype=h.dtype, device=h.device)

        buffers = {n: t[0].clone() for n, t in self.buffers.items()}  # the real statistics stay as they are
        with torch.no_grad(), _keeps(self.dropouts, record):
            functional_call(self.template, ({n: t[0] for n, t in self.params.items()}, buffers), (x,))
        return calls


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
            if p.grad is None:  # a parameter the model did not use: torch's Adam leaves it (and its moments) alone
                continue
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


def capture_declines(model: TIMNet, device: torch.device, steps: int = 3) -> str | None:
    """Why a pack of `model`'s units cannot be captured as CUDA graphs on `device`, or None: a pack of two trained
    `steps` Adam steps captured must end where the same pack trained eagerly ends (float32, as training runs;
    checked once per machine, `check.cached`). Any failure of the check itself is a reason."""
    if device.type != "cuda":
        return f"CUDA graphs need a CUDA device, not {device.type}"
    if reason := pack_declines(model, device):
        return reason

    def worst() -> float:
        ends = [_trained_pack(model, device, steps, captured) for captured in (False, True)]
        return largest_difference(*ends)

    try:
        diff = cached(signature(model, device.type, "captured", steps), worst)
    except Exception as err:  # noqa: BLE001 — a check that cannot run is a reason not to capture
        return f"the capture check failed ({type(err).__name__}: {str(err).splitlines()[0][:120]})"
    return None if diff <= TOLERANCE[torch.float32] else f"captured steps end {diff:.1e} away from eager ones"


def _trained_pack(model: TIMNet, device: torch.device, steps: int, captured: bool) -> list[torch.Tensor]:
    """The stacked weights of a pack of two copies of `model` after `steps` steps on fixed random batches."""
    models = [copy.deepcopy(model).to(device).float() for _ in range(2)]
    opts = [torch.optim.Adam(m.parameters(), lr=1e-3) for m in models]
    packed = PackedTIMNet(models)
    adam = PackedAdam(packed.params, opts)
    step = packed_step(packed, adam, 0.1)
    graphs = CapturedSteps(step, packed.state + adam.state, "capture check") if captured else None
    draw = torch.Generator().manual_seed(3)
    x = torch.randn(2, 4, 24, model.config.n_mfcc, generator=draw).to(device)
    y = torch.randint(0, model.config.n_classes, (2, 4), generator=draw).to(device)
    streams = [torch.Generator(device=device).manual_seed(s) for s in (1, 2)]
    units = torch.arange(2, device=device)
    for group in [(0, 1)] * steps + [(0,)]:  # the whole pack, then one unit alone (an uneven last batch)
        g = units[: len(group)]
        args = (g, x[: len(group)], y[: len(group)], streams[: len(group)])
        if graphs:
            graphs(group, *args)
        else:
            step(*args)
    return [t.detach().cpu() for t in packed.params.values()]
