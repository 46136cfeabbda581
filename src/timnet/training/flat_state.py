"""A state of hundreds of small tensors (a model's and Adam's state dicts: ~640 for TIM-Net) as one flat buffer per
dtype and device, for the per-epoch state file.

torch.save pays tens of microseconds of Python per tensor, after every epoch: a large part of a small corpus'
training time, and the CPU time of a thread beside every unit (benchmarks/results/design_measurements.md).
Flattened, the same state serialises about ten times faster, and the copy that
`flatten` makes (one `torch.cat` per buffer) is the snapshot the background writer needs. Values are copied
bit for bit, so a resumed unit continues exactly; `unflatten` passes through what is not flat (files written
before this format).
"""

from __future__ import annotations

import math
from typing import Any, Callable

import torch

MARK = "flat_tensor"  # a leaf {MARK: i} stands for the i-th tensor


# helpers


def map_tensors(obj: Any, fn: Callable[[torch.Tensor], Any]) -> Any:
    """`obj` (nested dicts, lists, tuples of tensors and plain values) with every tensor replaced by fn(tensor)."""
    if isinstance(obj, torch.Tensor):
        return fn(obj)
    if isinstance(obj, dict):
        return {k: map_tensors(v, fn) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(map_tensors(v, fn) for v in obj)
    return obj


def _strip(obj: Any, found: list[torch.Tensor]) -> Any:
    """`obj` with each tensor replaced by {MARK: its index in `found`}."""

    def mark(t: torch.Tensor) -> dict:
        found.append(t)
        return {MARK: len(found) - 1}

    return map_tensors(obj, mark)


def _fill(obj: Any, tensors: list[torch.Tensor]) -> Any:
    if isinstance(obj, dict):
        if obj.keys() == {MARK}:
            return tensors[obj[MARK]]
        return {k: _fill(v, tensors) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_fill(v, tensors) for v in obj)
    return obj


# the format


def flatten(obj: Any) -> dict:
    """Nested dicts/lists/tuples holding tensors -> {"tree", "buffers", "index"}: the tensors' values copied into
    one buffer per (device, dtype), each tensor an (buffer, offset, shape) entry of `index`."""
    tensors: list[torch.Tensor] = []
    tree = _strip(obj, tensors)
    groups: dict[tuple, list[int]] = {}
    for i, t in enumerate(tensors):
        groups.setdefault((t.device, t.dtype), []).append(i)
    buffers, index = [], [None] * len(tensors)
    for b, members in enumerate(groups.values()):
        offset = 0
        for i in members:
            index[i] = (b, offset, list(tensors[i].shape))
            offset += tensors[i].numel()
        buffers.append(torch.cat([tensors[i].detach().reshape(-1) for i in members]))
    return {"tree": tree, "buffers": buffers, "index": index}


def unflatten(obj: Any) -> Any:
    """The nested object `flatten` was given, every tensor its own copy on the buffer's device; anything that is
    not a flattened state comes back as it is."""
    if not (isinstance(obj, dict) and obj.keys() == {"tree", "buffers", "index"}):
        return obj
    buffers = obj["buffers"]
    tensors = [buffers[b][offset : offset + math.prod(shape)].view(shape).clone() for b, offset, shape in obj["index"]]
    return _fill(obj["tree"], tensors)
