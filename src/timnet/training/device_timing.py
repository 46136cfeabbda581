"""What this machine offers for a dataset's shape (`timnet devices`): each way to train — CPU worker processes,
Apple MPS, each CUDA GPU, one unit at a time or the run's units packed (`train.pack`) — timed for a few seconds of
real Adam steps with dropout on random features of the shape (speed does not depend on the values), reported as
unit-steps per second, seconds per unit-epoch and the projected paper protocol (10 folds x 500 epochs; per-epoch
evaluation and state saving not included). `--device auto` for training takes the fastest way a run would use
(CPU workers, or an accelerator's packed units) as measured, never an accelerator slower than the CPU; the
measurement is cached per machine, torch and shape (`cache_file`). A machine with no accelerator trains on the
CPU without measuring.
"""

from __future__ import annotations

import math
import platform
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import asdict, dataclass
from datetime import datetime
from multiprocessing import get_context
from pathlib import Path
from typing import Callable

import torch

from ..accel.blas import limit_threads, resolve_blas
from ..accel.capture import CapturedSteps, resolve_capture
from ..accel.packed_model import PackedTIMNet
from ..core.atomic import write_json
from ..core.config import Config
from ..core.devices import available_cores, cache_root, read_cache
from ..model.network import TIMNet, TIMNetConfig
from .pool import plan_workers
from .step import class_weights, make_optimizer, packed_optimizer, packed_step, unit_step
from .unit import accelerate_unit

PAPER = {"folds": 10, "epochs": 500}
WARMUP_STEPS = 2
DEVICE_SECONDS = 3.0  # timed per way to train
# The CPU's packed option packs 2 units: packing is slower there (README), and 10 packed IEMOCAP units would
# hold ~11 GB of activations in RAM.
CPU_PACK = 2

# helpers


def cache_file() -> Path:
    return cache_root() / "devices.json"


def accelerators() -> list[str]:
    """The accelerators torch sees: each CUDA GPU, then MPS."""
    found = [f"cuda:{i}" for i in range(torch.cuda.device_count())] if torch.cuda.is_available() else []
    return found + (["mps"] if torch.backends.mps.is_available() else [])


def run_units(cfg: Config) -> int:
    return cfg.train.folds * len(cfg.train.run_seeds)


def shape_key(cfg: Config) -> str:
    """What the speed of a run's steps depends on: the machine (its cores, its devices), torch and the CPU's BLAS
    (numpy's trains through the fused blocks), the model and batch shapes, and the run's units (the pack timed, the
    CPU workers planned)."""
    m, f, t = cfg.model, cfg.features, cfg.train
    shape = f"{f.frames}x{f.n_mfcc} L{m.levels} F{m.filters} k{m.kernel_size} C{m.n_classes} B{t.batch_size}"
    blas = resolve_blas(t.blas, "cpu")
    where = f"{platform.node()} ({available_cores()} cores) | torch {torch.__version__}, {blas} BLAS"
    return f"{where} | {' '.join(['cpu', *accelerators()])} | {shape} | {run_units(cfg)} units, capture {t.capture}"


def steps_per_epoch(cfg: Config, samples: int) -> int:
    """Optimiser steps of one unit-epoch: the training part of a k-fold split, in batches."""
    train = samples - math.ceil(samples / cfg.train.folds)
    return math.ceil(train / cfg.train.batch_size)


def sync(device: torch.device) -> None:
    """Wait for the device's queued work (timings must not end while queued operations still run)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "mps":
        torch.mps.synchronize()


def train_step(cfg: Config, device: torch.device, pack: int, capture: bool) -> Callable[[], None]:
    """One training step of `pack` units on random batches of cfg's shape, as `timnet train` steps them: 1 = one
    unit as `unit.UnitTrainer` steps it (recomputing where `train.recompute` says); more = packed
    (`step.packed_step`), with `capture` recorded as a CUDA graph (`capture.CapturedSteps`)."""
    t, arch = cfg.train, TIMNetConfig.from_config(cfg)
    models = [TIMNet(arch).to(device).train() for _ in range(pack)]
    accelerate_unit(models[0], resolve_blas(t.blas, str(device)), cfg)  # as an uncompiled unit alone trains there
    opts = [make_optimizer(m.parameters(), t, device) for m in models]
    shape = (t.batch_size, cfg.features.frames, cfg.features.n_mfcc)
    x = torch.randn(pack, *shape, device=device)
    y = torch.randint(0, arch.n_classes, (pack, t.batch_size), device=device)
    weights = [class_weights(t, y[u], arch.n_classes, x.dtype) for u in range(pack)]
    if pack == 1:
        return lambda: unit_step(models[0], opts[0], x[0], y[0], weights[0], t)
    packed = PackedTIMNet(models)
    optimizer = packed_optimizer(packed, opts, t, device, **({"capturable": True} if capture else {}))
    one = packed_step(packed, optimizer, t, None if weights[0] is None else torch.stack(weights))
    units, streams = torch.arange(pack, device=device), [torch.Generator(device=device) for _ in range(pack)]
    group = tuple(range(pack))
    optimizer.plan(group)
    one(units, x, y, streams)  # the optimiser's state is made at its first step, which is not captured
    if capture:
        graphs = CapturedSteps(one, packed.state + optimizer.state, f"timing {device}")
        return lambda: graphs(optimizer.plan(group), units, x, y, streams)
    return lambda: (optimizer.plan(group), one(units, x, y, streams))


def time_steps(config: dict, device: str, pack: int, threads: int | None, seconds: float, start=None) -> float:
    """Unit-steps per second of `train_step` (captured where `train.capture` captures) on `device`, timed for
    `seconds` after a warm-up. Runs in a worker process for the CPU's worker option, whose workers all start timing
    at once (`start`: a barrier)."""
    if threads:
        torch.set_num_threads(threads)
    limit_threads(torch.get_num_threads())  # numpy's BLAS too, as in a training worker
    cfg, where = Config.from_dict(config), torch.device(device)
    step = train_step(cfg, where, pack, pack > 1 and resolve_capture(cfg.train.capture, device))
    for _ in range(WARMUP_STEPS):
        step()
    sync(where)
    if start is not None:
        start.wait()
    done, started = 0, time.perf_counter()
    while done < 3 or time.perf_counter() - started < seconds:
        step()
        done += 1
        if done % 4 == 0:
            sync(where)
    sync(where)
    return done * pack / (time.perf_counter() - started)


# classes


@dataclass
class Option:
    """One way to train, measured: `parallel` units at once (worker processes, or a pack)."""

    device: str
    pack: int
    workers: int
    threads: int | None
    unit_steps_per_second: float = 0.0
    error: str = ""  # why it could not be timed (e.g. out of device memory)

    @property
    def name(self) -> str:
        if self.device == "cuda":
            return f"cuda, {self.workers} GPUs, the units spread over them, packed"
        if self.device == "cpu" and self.pack == 1:
            return f"cpu, {self.workers} worker process(es) x {self.threads or available_cores()} thread(s)"
        return f"{self.device}, " + (f"{self.pack} units packed" if self.pack > 1 else "one unit at a time")

    @property
    def auto(self) -> bool:
        """What `train.pack = auto` trains with on this device (the options `--device auto` chooses among)."""
        return (self.pack == 1) == (self.device == "cpu")

    def unit_epoch_seconds(self, cfg: Config, samples: int) -> float:
        """Seconds per unit-epoch, the parallel units' time shared out."""
        return steps_per_epoch(cfg, samples) / self.unit_steps_per_second

    def paper_hours(self, cfg: Config, samples: int) -> float:
        return PAPER["folds"] * PAPER["epochs"] * self.unit_epoch_seconds(cfg, samples) / 3600


def options(units: int) -> list[Option]:
    """The ways to train `units` units here: CPU workers as `timnet train` plans them, the CPU packed, and each
    accelerator one unit at a time and packed."""
    workers, threads = plan_workers(units, "cpu")
    found = [Option("cpu", 1, workers, threads), Option("cpu", min(CPU_PACK, units), 1, None)]
    for device in accelerators():
        found += [Option(device, 1, 1, None), Option(device, units, 1, None)]
    return found


def measure(cfg: Config, seconds: float = DEVICE_SECONDS) -> list[Option]:
    """Every option of `options` for a run's units, timed for `seconds`; CPU workers in real worker processes at
    once. An option that fails (out of device memory) is kept with its error and never chosen."""
    measured = []
    settings = cfg.to_dict()  # the BLAS chosen once, here: the timing workers must not each measure it
    settings["train"]["blas"] = resolve_blas(cfg.train.blas, "cpu")
    cfg = Config.from_dict(settings)
    for option in options(run_units(cfg)):
        try:
            if option.device == "cpu" and option.workers > 1:
                option.unit_steps_per_second = _time_workers(cfg, option, seconds)
            else:
                option.unit_steps_per_second = time_steps(cfg.to_dict(), option.device, option.pack, None, seconds)
        except (RuntimeError, BrokenProcessPool) as err:  # torch's out-of-memory errors are RuntimeErrors
            option.error = f"{type(err).__name__}: {str(err).splitlines()[0][:120]}"
        measured.append(option)
    return measured


def _time_workers(cfg: Config, option: Option, seconds: float) -> float:
    """The CPU's worker processes timed at once (as a run keeps them all busy): the sum of their rates."""
    context = get_context("spawn")
    with context.Manager() as manager, ProcessPoolExecutor(option.workers, mp_context=context) as pool:
        start = manager.Barrier(option.workers)
        args = (cfg.to_dict(), "cpu", 1, option.threads, seconds, start)
        rates = [pool.submit(time_steps, *args) for _ in range(option.workers)]
        return sum(r.result() for r in rates)


def fastest(measured: list[Option]) -> Option:
    """The fastest of the options a run trains with (`Option.auto`): never an accelerator slower than the CPU.
    Several GPUs count together (a run spreads its units over all of them, one pack each) as device `cuda`."""
    usable = [o for o in measured if o.auto and not o.error]
    gpus = [o for o in usable if o.device.startswith("cuda")]
    if len(gpus) > 1:
        rate = sum(o.unit_steps_per_second for o in gpus)
        usable = [o for o in usable if o not in gpus] + [Option("cuda", gpus[0].pack, len(gpus), None, rate)]
    return max(usable, key=lambda o: o.unit_steps_per_second, default=Option("cpu", 1, 1, None))


def cached_or_measured(
    cfg: Config, seconds: float = DEVICE_SECONDS, refresh: bool = False
) -> tuple[list[Option], bool]:
    """The measured options for cfg's shape, from the cache unless `refresh`; (options, whether from cache)."""
    key, cache = shape_key(cfg), read_cache(cache_file())
    if key in cache and not refresh:
        return [Option(**o) for o in cache[key]["options"]], True
    measured = measure(cfg, seconds)
    entry = {"measured": datetime.now().isoformat(timespec="seconds"), "options": [asdict(o) for o in measured]}
    write_json(cache_file(), {**read_cache(cache_file()), key: entry})  # and what others wrote while this timed
    return measured, False


def auto_device(cfg: Config) -> str:
    """`--device auto` for training: the CPU where there is no accelerator; else the fastest measured way."""
    if not accelerators():
        return "cpu"
    measured, from_cache = cached_or_measured(cfg)
    choice = fastest(measured)
    if not from_cache:
        print(
            f"--device auto: timed the ways to train this shape, fastest {choice.name} (cached in {cache_file()})",
            file=sys.stderr,
        )
    return "cuda" if choice.device.startswith("cuda") else choice.device  # all GPUs: units spread over them


def table(cfg: Config, measured: list[Option], samples: int) -> list[str]:
    """The lines `timnet devices` prints."""
    choice = fastest(measured)
    head = f"{'way to train':58} {'unit-steps/s':>12} {'s/unit-epoch':>12} {'paper protocol':>15}"
    lines = [head]
    for o in measured + ([choice] if choice not in measured else []):
        if o.error:
            lines.append(f"{o.name:58} {'not timed: ' + o.error}")
            continue
        mark = "  <- --device auto" if o is choice else ""
        lines.append(
            f"{o.name:58} {o.unit_steps_per_second:12.1f} {o.unit_epoch_seconds(cfg, samples):12.3f} "
            f"{o.paper_hours(cfg, samples):13.2f} h{mark}"
        )
    lines.append(
        f"{cfg.dataset.name}: {samples} utterances of {cfg.features.frames} x {cfg.features.n_mfcc}, "
        f"{steps_per_epoch(cfg, samples)} steps per unit-epoch; paper protocol = {PAPER['folds']} folds x "
        f"{PAPER['epochs']} epochs (per-epoch evaluation and state saving not included)"
    )
    return lines
