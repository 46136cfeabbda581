"""How and where the units of runs train: the options of every command that trains (`timnet train`, `run`, `sweep`,
`study`), built once by the CLI or a notebook and passed whole (`run.run_training`, `run.execute`,
`pipeline.run_pipeline`)."""

from __future__ import annotations

from dataclasses import dataclass, field

from ..core.config import Config
from ..core.devices import pick_device
from .cluster import cluster_has_gpus
from .device_timing import auto_device
from .run_store import Roots


def resolve_device(device: str, backend: str = "local", address: str | None = None, cfg: Config | None = None) -> str:
    """The device units train on: checked here for `local`, where `auto` is the fastest way `timnet devices`
    measures for cfg's shape (`device_timing.auto_device`; the CPU where there is no accelerator); for `ray`,
    `auto` means CUDA when the cluster has GPUs."""
    if backend != "ray":
        return auto_device(cfg) if device == "auto" and cfg is not None else pick_device(device)
    if device != "auto":
        return device
    return "cuda" if cluster_has_gpus(address) else "cpu"


@dataclass(frozen=True)
class Execution:
    """Where runs live (`roots`: Models, logs, Results) and how their units train."""

    roots: Roots = field(default_factory=Roots)
    backend: str = "local"  # local | ray
    address: str | None = None  # a Ray cluster's, for backend ray
    device: str = "auto"
    workers: int | None = None
    threads: int | None = None
    progress: bool = True

    def resolved_device(self, cfg: Config | None = None) -> str:
        """`device` as the units will train (`resolve_device`; `auto` measured for cfg's shape where given)."""
        return resolve_device(self.device, self.backend, self.address, cfg)
