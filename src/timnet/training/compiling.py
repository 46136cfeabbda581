"""torch.compile for a unit: where it repays its cost (`train.compile = auto`), and how, so that a compiled unit
draws the same dropout masks and resumes exactly."""

from __future__ import annotations

import torch

from ..model.network import TIMNet

# `train.compile = "auto"` compiles when one process trains at least this many epochs on that device (its
# units one after another: the next unit reuses the compiled code). The first compile costs minutes on a CPU and
# an epoch gains a little: it repays itself only after several hundred epochs. On CUDA the many small elementwise
# operations are what compiling fuses. `auto` never compiles where the CPU's products go through numpy's BLAS
# (`train.blas`): compiling puts them back on torch's, and eager training with numpy's BLAS and the CPU kernel
# measured faster (benchmarks/results/design_measurements.md).
COMPILE_MIN_EPOCHS = {"cpu": 1000, "cuda": 200}


def should_compile(setting: str, epochs: int, device: str, units: int = 1, blas: str = "torch") -> bool:
    """`on`, `off`, or `auto`: compile where it repays its cost (COMPILE_MIN_EPOCHS per process; never on MPS, nor
    where the eager products use numpy's BLAS). A process compiles once: the units it trains one after another
    (`units`) reuse the compiled code."""
    if setting == "auto":
        return blas == "torch" and epochs * units >= COMPILE_MIN_EPOCHS.get(device.split(":")[0], float("inf"))
    return setting == "on"


def compiled(model: TIMNet):
    """torch.compile with dropout masks drawn from the eager RNG: the same draws, a resumable RNG state."""
    import torch._inductor.config as inductor

    inductor.fallback_random = True
    return torch.compile(model)
