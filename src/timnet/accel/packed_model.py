"""Packed units: several units of a run trained together in one process as ONE batched model (`train.pack`).

Every parameter and BatchNorm statistic (and, in training, the optimiser's state: `training.step`) carries a
leading unit dimension U, so one step of U units is one step's worth of operations on U-times larger tensors: on
a GPU, where a TIM-Net step is bound by launching ~800 tiny GPU operations, U units cost about what one does.
Each unit keeps what it has alone: its data order, its dropout stream (a generator holding the RNG state it would
have alone), its optimiser's step count.

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
from torch.func import functional_call

from ..model.network import SpatialDropout1d, TIMNet
from .accelerate import reference
from .check import difference, equal, loss_weights, seeded

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
