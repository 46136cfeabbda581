"""Keep freed memory in the process while a unit trains on the CPU, instead of handing it back to the OS.

A training step allocates and frees the same few-megabyte buffers hundreds of times (a block's [B, T, 2C] products
and gradients: 3.75 MB at EMO-DB's shape). glibc's malloc serves blocks over its mmap threshold with fresh pages and
trims the heap top on free, so every such buffer is faulted in again: tens of thousands of page faults per epoch
(benchmarks/results/design_measurements.md). Raising both thresholds makes the buffers come back from the heap. The
peak memory stays what the step needs: freed blocks are reused, not added to. glibc only (Linux); elsewhere nothing
changes.
"""

from __future__ import annotations

import ctypes
import functools
import platform

# mallopt's parameters (malloc.h)
M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3
# blocks up to this size come from the heap (a larger one, e.g. a whole-dataset evaluation batch, is mapped
# and unmapped as before); free memory at the heap top up to TRIM stays in the process
MMAP_THRESHOLD = 256 << 20
TRIM_THRESHOLD = 1 << 30


@functools.cache
def keep_freed_memory() -> bool:
    """Set glibc's mmap and trim thresholds for this process (once); False where the C library is not glibc."""
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return False
    libc = ctypes.CDLL(None)
    return bool(libc.mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(libc.mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD))
