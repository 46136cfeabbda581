"""The packed training step as CUDA graphs (`train.capture`): forward, backward and optimiser step of a pack's units
recorded once, replayed as one launch, instead of ~800 small GPU operations a step that leave the GPU waiting on Python.

A graph is recorded per (units, batch size): the full batches of an epoch replay one graph; the last, shorter
batches (units whose training parts differ in size step in groups) get their own. Capture needs warm-up steps;
every tensor the step changes (parameters, BatchNorm statistics, the optimiser's moments and counts) and every dropout
generator is saved before them and put back, so the first replay is the first real step: a captured pack trains
what the eager pack trains (the device self-test compares them on CUDA). Where capture fails, the pack continues
eagerly, with a warning.
"""

from __future__ import annotations

import warnings
from typing import Callable

import torch

from ..core.errors import TimnetError

# Warm-up steps before a capture (cuBLAS workspaces, autograd's buffers), as torch's whole-network example does.
WARMUP_STEPS = 3

# A packed step: (units [G] on the device, x [G, B, T, F], y [G, B], their dropout generators, mixup's partners
# [G, B] and lambdas [G] or None) -> (losses [G], correct [G]) on the device, without a host sync.
Step = Callable[..., tuple[torch.Tensor, torch.Tensor]]

# helpers


def resolve_capture(setting: str, device: str) -> bool:
    """`train.capture`: auto = on CUDA; on = CUDA or an error naming the setting; off = never."""
    on_cuda = device.split(":")[0] == "cuda"
    if setting == "on" and not on_cuda:
        raise TimnetError(
            f"train.capture: CUDA graphs need a CUDA device (got --device {device}); use train.capture=auto or off"
        )
    return on_cuda and setting != "off"


# classes


class CapturedSteps:
    """`step` as one CUDA graph per (units, batch size), recorded on first use and replayed after; `state` is every
    tensor the step changes in place. The graphs share one memory pool."""

    def __init__(self, step: Step, state: list[torch.Tensor], label: str):
        self.step, self.state, self.label = step, state, label
        self.graphs: dict[tuple, tuple] = {}
        self.pool = None
        self.failed = False

    def __call__(self, group: tuple, units: torch.Tensor, x: torch.Tensor, y: torch.Tensor, generators: list, mix=None):
        """One step of the units `group` (their positions in the pack; `units` the same on the device)."""
        if self.failed:
            return self.step(units, x, y, generators, mix)
        key = (group, x.shape[1])
        if key not in self.graphs:
            try:
                self.graphs[key] = self._capture(units, x, y, generators, mix)
            except Exception as err:  # noqa: BLE001 — any capture failure means: train eagerly
                self.failed = True
                warnings.warn(
                    f"{self.label}: CUDA graph capture failed ({type(err).__name__}: {str(err).splitlines()[0][:200]}"
                    "); training the pack without capturing (train.capture=off avoids the attempt)",
                    stacklevel=2,
                )
                return self.step(units, x, y, generators, mix)
        graph, static = self.graphs[key]
        static["x"].copy_(x)
        static["y"].copy_(y)
        for held, value in zip(static["mix"] or (), mix or ()):
            held.copy_(value)
        graph.replay()
        return static["out"]  # overwritten by the next replay: read (queued on the stream) before it

    def _capture(self, units, x, y, generators, mix) -> tuple:
        graph = torch.cuda.CUDAGraph()  # checked first: no warm-up steps where capture cannot work
        if not hasattr(graph, "register_generator_state"):
            raise TimnetError(f"torch {torch.__version__} cannot capture per-unit dropout generators (needs ≥ 2.5)")
        static = {"units": units.clone(), "x": x.clone(), "y": y.clone(), "mix": mix and tuple(m.clone() for m in mix)}
        args = (static["units"], static["x"], static["y"], generators, static["mix"])
        saved = [t.detach().clone() for t in self.state]
        streams = [g.get_state() for g in generators]
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        try:
            with torch.cuda.stream(side):
                for _ in range(WARMUP_STEPS):
                    self.step(*args)
        finally:
            torch.cuda.current_stream().wait_stream(side)
            self._put_back(saved, generators, streams)
        for generator in generators:
            graph.register_generator_state(generator)
        try:
            # thread_local: the state writer's thread may wait on its copies while this thread captures
            with torch.cuda.graph(graph, pool=self.pool, capture_error_mode="thread_local"):
                static["out"] = self.step(*args)
        except Exception:  # recording runs nothing, but a failed capture may have advanced the generators
            self._put_back(saved, generators, streams)
            raise
        self.pool = graph.pool()
        return graph, static

    @torch.no_grad()
    def _put_back(self, saved: list, generators: list, streams: list) -> None:
        for tensor, value in zip(self.state, saved):
            tensor.copy_(value)
        for generator, stream in zip(generators, streams):
            generator.set_state(stream)
