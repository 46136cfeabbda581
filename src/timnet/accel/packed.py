"""Packed units: several units of a run trained together in one process as ONE batched model (`train.pack`).

Every parameter, BatchNorm statistic and Adam moment carries a leading unit dimension U, so one step of U units
is one step's worth of operations on U-times larger tensors: on a GPU, where a TIM-Net step is bound by kernel
launches (~800 tiny kernels), U units cost about what one does. Each unit keeps what it has alone: its data order,
its dropout stream (a generator holding the RNG state it would have alone), its Adam step count.

`PackedTIMNet` is written for the reference TIM-Net as `model/network.py` defines it. `pack_declines` checks, on the
device that will train, that it computes what the reference computes for the model at hand (`check`): a changed
model trains unit by unit through the reference instead, with one line saying so.
Shapes: U units, B batch, T frames, C channels.
"""

from __future__ import annotations

import copy
import functools

import torch
import torch.nn.functional as F

from ..model.network import TemporalAwareBlock, TIMNet
from .capture import CapturedSteps, Step
from .check import TOLERANCE, cached, difference, equal, largest_difference, loss_weights, seeded, signature
from .cpu_kernel import PARAMETERS

# helpers


def resolve_pack(setting: str, device: str, units: int) -> int:
    """`train.pack`: `auto` = every unit of the run on CUDA/MPS, 1 on CPU (a pack trains fewer unit-steps per
    second there than units alone: `timnet devices` measures it); an integer = at most that many units
    per pack."""
    if setting == "auto":
        return units if device.split(":")[0] in ("cuda", "mps") else 1
    return max(1, min(int(setting), units))


def pack_declines(model: TIMNet, device: torch.device) -> str | None:
    """Why units of `model` cannot be packed on `device`, or None: the reference TIM-Net's structure, and the same
    training pass as the reference's on that device (float64 where it has it), checked once per machine."""
    blocks = [*getattr(model, "forward_blocks", []), *getattr(model, "backward_blocks", [])]
    if type(model) is not TIMNet or not blocks or any(type(b) is not TemporalAwareBlock for b in blocks):
        return "the model is not the reference TIMNet with its temporal-aware blocks"
    if any({n for n, _ in b.named_parameters()} != PARAMETERS for b in blocks):
        return "a block's parameters differ from the reference's"
    diff = difference(model, _packed_passes, device, ("packed",))
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
    if captured:
        step = functools.partial(CapturedSteps(step, packed.state + adam.state, "capture check"), (0, 1))
    draw = torch.Generator().manual_seed(3)
    x = torch.randn(2, 4, 24, model.config.n_mfcc, generator=draw).to(device)
    y = torch.randint(0, model.config.n_classes, (2, 4), generator=draw).to(device)
    streams = [torch.Generator(device=device).manual_seed(s) for s in (1, 2)]
    units = torch.arange(2, device=device)
    for _ in range(steps):
        step(units, x, y, streams)
    return [t.detach().cpu() for t in packed.params.values()]
