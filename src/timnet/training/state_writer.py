"""Per-epoch state written off the critical path: the state is snapshotted on the host (from a GPU: into pinned
memory, without waiting for the copy), then serialised, fsynced and renamed by one background thread while the
next epoch trains. At most one write is in flight: the next epoch's save first waits for it, so the state file
always holds a whole saved epoch (the write is atomic), and a kill -9 costs at most the epoch being written.
"""

from __future__ import annotations

from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, Callable

import torch

from .flat_state import map_tensors

# helpers


def snapshot(obj: Any, copies: list) -> Any:
    """`obj` (nested dicts, lists, tuples of tensors and plain values) with every tensor copied to the host, so
    the live tensors can change while the copy is written. From CUDA the copy lands in pinned memory, asynchronously;
    `copies` collects the CUDA tensors copied, whose stream must be synchronised before the copy is read."""

    def to_host(t: torch.Tensor) -> torch.Tensor:
        if t.device.type == "cuda":
            host = torch.empty(t.shape, dtype=t.dtype, pin_memory=True)
            host.copy_(t.detach(), non_blocking=True)
            copies.append(t)
            return host
        return t.detach().to("cpu", copy=True)

    return map_tensors(obj, to_host)


# classes


class StateWriter:
    """One background thread writing snapshots; `submit` waits for the previous write, `wait` for the last one.
    A failed write (a full disk) raises in the training thread at the next `submit` or `wait`."""

    def __init__(self) -> None:
        self._pool: ThreadPoolExecutor | None = None
        self._pending: Future | None = None

    def submit(self, state: dict, write: Callable[[dict], None]) -> None:
        """Snapshot `state` now; `write(snapshot)` runs in the background."""
        self.wait()
        copies: list = []
        host = snapshot(state, copies)
        ready = []  # one event per GPU copied from, on the stream the copies were queued on
        for device in {t.device for t in copies}:
            ready.append(torch.cuda.Event())
            ready[-1].record(torch.cuda.current_stream(device))
        if self._pool is None:
            self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="timnet-state")
        self._pending = self._pool.submit(self._write, host, write, ready)

    @staticmethod
    def _write(host: dict, write: Callable[[dict], None], ready: list) -> None:
        for event in ready:
            event.synchronize()  # the pinned copies have landed
        write(host)

    def wait(self) -> None:
        """Block until the write in flight (if any) is on disk; re-raise its error."""
        pending, self._pending = self._pending, None
        if pending is not None:
            pending.result()

    def close(self) -> None:
        self.wait()
        if self._pool is not None:
            self._pool.shutdown()
            self._pool = None
