"""Which BLAS runs the causal convolution's products on the CPU: torch's own (MKL on x86) or numpy's (OpenBLAS).

TIM-Net's products are tall and thin ([B*T, 39] x [39, 39]: 12,032 rows at EMO-DB's shape). On some CPUs MKL runs
that shape faster, on others numpy's OpenBLAS does (benchmarks/bench_model.py measures both). So `train.blas = auto`
times both once per machine on that shape and caches the answer (`cache_file`); numpy's is used only by units that
run on one thread (`unit_blas`). A run's record holds the choice (`train.prepare_run`), and a unit records the BLAS
it started with in its per-epoch state, so a resumed unit continues with the same one (exact resume). A training
unit's own evaluations use its BLAS (`accel.accelerate`); loaded models (predict, evaluate, export) run the
reference model, packed units and compiled units torch's.
"""

from __future__ import annotations

import functools
import os
import platform
import statistics
import time
from pathlib import Path

import numpy as np
import torch
from threadpoolctl import threadpool_limits

from ..core.devices import cache_root, cached_on_disk

CHOICES = ("torch", "numpy")
# numpy's BLAS is chosen only when clearly faster (median of interleaved products), so that a machine under load
# does not flip the choice between runs.
MARGIN = 0.8
SHAPE = (12032, 39)  # EMO-DB: 64 x 188 frames, 39 filters

# helpers


def cache_file() -> Path:
    return cache_root() / "blas.json"


VECTOR_FLAGS = ("sse", "avx", "fma", "f16c", "amx", "asimd", "sve", "neon")


@functools.cache
def cpu() -> str:
    """The CPU's model name and its vector extensions (the flags /proc/cpuinfo lists, where there is one), and
    the widest one torch's products use: what moves the speed and the rounding of a machine's products."""
    info = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").is_file() else ""
    fields = dict(line.split(":", 1) for line in info.splitlines() if ":" in line)
    fields = {k.strip(): v.strip() for k, v in fields.items()}
    name = fields.get("model name") or platform.processor() or platform.machine()
    flags = sorted(
        f for f in (fields.get("flags") or fields.get("Features") or "").split() if f.startswith(VECTOR_FLAGS)
    )
    return f"{name} [{' '.join(flags)}] torch {torch.backends.cpu.get_cpu_capability()}"


def machine_key() -> str:
    """What the answer depends on: the host, the CPU, the cores, and both libraries' versions."""
    parts = (platform.node(), cpu(), os.cpu_count(), torch.__version__, np.__version__)
    return "|".join(map(str, parts))


def matmul(a: torch.Tensor, b: torch.Tensor, blas: str, out: torch.Tensor | None = None) -> torch.Tensor:
    """a @ b ([m, k] x [k, n]) through `blas`; numpy's works on CPU tensors in place of their memory (no copy)."""
    if blas == "torch":
        return a @ b if out is None else out.copy_(a @ b)
    out = torch.empty(a.shape[0], b.shape[1], dtype=a.dtype) if out is None else out
    np.matmul(a.detach().numpy(), b.detach().numpy(), out=out.detach().numpy())
    return out


def time_products(blas: str, x: torch.Tensor, w: torch.Tensor, out: torch.Tensor, repeats: int = 20) -> float:
    """Seconds for `repeats` products into `out`, each library writing there directly."""
    started = time.perf_counter()
    for _ in range(repeats):
        torch.mm(x, w, out=out) if blas == "torch" else matmul(x, w, blas, out)
    return time.perf_counter() - started


def measure(rounds: int = 5) -> str:
    """The faster BLAS for SHAPE's products on one thread, interleaved rounds, with MARGIN in torch's favour."""
    draw = torch.Generator().manual_seed(0)  # not torch's global generator: training draws from that one
    x, w = torch.randn(SHAPE, generator=draw), torch.randn(SHAPE[1], SHAPE[1], generator=draw)
    out = torch.empty(SHAPE)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with threadpool_limits(1, user_api="blas"):
            times = {blas: [] for blas in CHOICES}
            for blas in CHOICES:  # warm-up: libraries load their code
                time_products(blas, x, w, out, 2)
            for _ in range(rounds):
                for blas in CHOICES:
                    times[blas].append(time_products(blas, x, w, out))
    finally:
        torch.set_num_threads(threads)
    return "numpy" if statistics.median(times["numpy"]) < MARGIN * statistics.median(times["torch"]) else "torch"


def resolve_blas(setting: str, device: str) -> str:
    """`torch`, `numpy`, or `auto` (this machine's measured answer, cached); accelerators always use torch's."""
    if not device.startswith("cpu"):
        return "torch"
    if setting != "auto":
        return setting
    return cached_on_disk(cache_file(), machine_key(), measure)


def unit_blas(blas: str) -> str:
    """The BLAS a unit uses in this process: numpy's only on one thread. Beside torch's own OpenMP threads,
    OpenBLAS's threads wait for cores (benchmarks/results/design_measurements.md)."""
    return blas if torch.get_num_threads() == 1 else "torch"


def limit_threads(threads: int) -> None:
    """numpy's BLAS uses as many threads as torch in this process (pool workers run one thread each)."""
    threadpool_limits(threads, user_api="blas")
