"""Workers train what the caller has. A worker process (the pool's, Ray's) imports the model from its files, so a
model changed in the caller's memory (a notebook's edit, a patched helper, a file saved but not reloaded) is not what
it would train. Each unit travels with the caller's `code_digests` of its model, and the worker compares its own:
code that differs is refused in one line, naming what differs and what to do."""

from __future__ import annotations

import json

import torch

from ..accel.code_key import code_digests
from ..core.config import Config, TIMNetConfig
from ..core.errors import TimnetError
from ..model.network import TIMNet


def model_digests(config: dict) -> dict[str, str]:
    """`code_digests` of a unit's model (its config's architecture), as this process has the code now; built on
    the meta device: no memory, no weights drawn."""
    with torch.device("meta"):
        return code_digests(TIMNet(TIMNetConfig.from_config(Config.from_dict(config))))


def caller_digests(configs: list[dict]) -> list[dict[str, str]]:
    """`model_digests` of each config, as the caller has the code now; built once per distinct config (the units
    of a run share one)."""
    built: dict[str, dict[str, str]] = {}
    for config in configs:
        key = json.dumps(config, sort_keys=True, default=str)
        if key not in built:
            built[key] = model_digests(config)
    return [built[json.dumps(config, sort_keys=True, default=str)] for config in configs]


def check_same_code(config: dict, caller: dict[str, str], instead: str = "--workers 1") -> None:
    """Raise one line where this process's model code is not the caller's (`caller`: its `model_digests`)."""
    mine = model_digests(config)
    if mine == caller:
        return
    differ = sorted({n for n in {*mine, *caller} if mine.get(n) != caller.get(n)})
    raise TimnetError(
        f"this worker process imported other model code than its caller has in memory (differs: {', '.join(differ)})"
        f": save the changed file and start again, or train with {instead} (in the caller's process)"
    )
