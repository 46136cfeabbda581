"""The local executor: the units of one or more runs, one after another in this process, or in parallel worker
processes (`spawn`), with one progress bar. A unit that fails — an exception, or its worker killed — fails the
run with one line naming it; finished units keep their files, so `--resume` continues."""

from __future__ import annotations

import multiprocessing
import os
import signal
import threading
import time
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from queue import Empty

import torch

from ..core.devices import available_cores
from ..core.errors import TimnetError, one_line_warnings
from ..core.progress import ProgressView, drain
from ..core.validation import check_range
from ..data.feature_files import FeatureSet
from ..data.shared_features import unit_features
from .packed_training import train_pack
from .run_store import UnitResult
from .same_code import caller_digests, check_same_code
from .unit import UnitJob, train_unit

# Per-process state of a pool worker, set once by `_worker_init` (a queue cannot travel with each task).
_WORKER: dict = {}


# helpers


def plan_workers(
    n_units: int, device: str, workers: int | None = None, threads: int | None = None
) -> tuple[int, int | None]:
    """(worker processes, threads per worker). Default: one worker per GPU; on CPU one per core (up to the number
    of units) with the cores split between them — TIM-Net's small tensors keep one core busy but scale poorly over
    threads, so separate processes run faster than one process with several threads."""
    if workers is not None:
        check_range("workers", workers, 1, integer=True)
    if threads is not None:
        check_range("threads", threads, 1, integer=True)
    cores = available_cores()
    if workers is None:
        if device.startswith("cuda"):
            workers = 1 if ":" in device else max(1, torch.cuda.device_count())
        elif device == "mps":
            workers = 1
        else:
            workers = max(1, cores // (threads or 1))
    workers = max(1, min(workers, n_units))
    if threads is None and workers > 1:
        threads = max(1, cores // workers)
    return workers, threads


def _worker_init(messages, parent: int, threads: int | None, shared: dict[str, str]) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle: it stops the workers
    one_line_warnings()
    if threads:
        torch.set_num_threads(threads)
    _WORKER.update(messages=messages, parent=parent, shared=shared)
    threading.Thread(target=_exit_with, args=(parent,), daemon=True).start()


def _exit_with(parent: int) -> None:
    """A worker whose parent died (kill -9, SIGTERM) stops within a second, not at the end of its epoch, which
    can take minutes (IEMOCAP; the first, compiled epoch): its last saved epoch is what `--resume` continues."""
    while os.getppid() == parent:
        time.sleep(1.0)
    os._exit(1)


def _worker_report(event: dict) -> None:
    if os.getppid() != _WORKER["parent"]:  # the parent was killed: stop; this epoch's state is saved
        os._exit(1)
    _WORKER["messages"].put(event)


def _train(pack: list[UnitJob], features: FeatureSet | None, report) -> list[UnitResult]:
    """One unit (`unit.train_unit`), or a pack of several trained at once (`packed_training.train_pack`)."""
    return train_pack(pack, features, report) if len(pack) > 1 else [train_unit(pack[0], features, report)]


def _worker_train(pack: list[UnitJob], code: dict[str, str]) -> list[UnitResult]:
    """The pack in this worker, if it has the caller's model code (`code`: `same_code.model_digests`)."""
    job = pack[0]
    check_same_code(job.config, code)
    return _train(pack, unit_features(job.mfcc_file, job.classes, _WORKER["shared"].get(job.mfcc_file)), _worker_report)


def _died(view: ProgressView, processes: dict) -> str:
    """One line naming the unit whose worker died, and how (signal 9: kill -9 or the out-of-memory killer)."""
    codes = {pid: p.exitcode for pid, p in processes.items()}
    for unit in view.running():
        code = codes.get(view.pids.get(unit))
        if code is not None and code != -signal.SIGTERM:
            how = (
                f"killed by signal {-code}" + (" (kill -9, or out of memory)" if code == -signal.SIGKILL else "")
                if code < 0
                else f"exit code {code}"
            )
            return (
                f"{view.label(unit)}: its worker process {view.pids[unit]} died ({how}); "
                "finished units are kept — resume the run with --resume"
            )
    running = ", ".join(map(view.label, view.running())) or "a unit"
    return f"a worker process died while training {running}; finished units are kept — resume the run with --resume"


def _collect(future, pack: list[UnitJob], view: ProgressView, processes: dict) -> list[UnitResult]:
    """A finished unit's (or pack's) results, or its failure as one line naming it."""
    label = " + ".join(view.label(j.key) for j in pack)
    try:
        return future.result()
    except BrokenProcessPool:
        raise TimnetError(_died(view, processes)) from None
    except TimnetError as err:
        raise TimnetError(f"{label}: {err}") from None
    except Exception as err:
        raise TimnetError(f"{label} failed in its worker: {type(err).__name__}: {err}") from err


def _run_serially(packs: list[list[UnitJob]], threads: int | None, features: FeatureSet | None, view: ProgressView):
    """Units one after another in this process; a pack of several (`packed_training.train_pack`) trains them at once."""
    if threads:
        torch.set_num_threads(threads)
    results = {}
    for pack in packs:
        try:
            results.update(zip((j.key for j in pack), _train(pack, features, view.update)))
        except TimnetError as err:
            raise TimnetError(f"{' + '.join(view.label(j.key) for j in pack)}: {err}") from None
    return results


def _run_in_pool(
    packs: list[list[UnitJob]], workers: int, threads: int | None, view: ProgressView, shared: dict[str, str]
) -> dict[str, UnitResult]:
    """Each unit, or pack of units, in the next free worker process."""
    context = multiprocessing.get_context("spawn")  # fork after torch has started threads is not safe
    messages = context.Queue()
    pool = ProcessPoolExecutor(
        workers, mp_context=context, initializer=_worker_init, initargs=(messages, os.getpid(), threads, shared)
    )
    codes = caller_digests([pack[0].config for pack in packs])  # the caller's code, as it has it now
    futures = {pool.submit(_worker_train, pack, code): pack for pack, code in zip(packs, codes)}
    processes: dict = {}
    results: dict[str, UnitResult] = {}
    try:
        while len(results) < sum(map(len, packs)):
            processes.update(getattr(pool, "_processes", None) or {})  # pid -> Process, to tell which one died
            try:
                view.update(messages.get(timeout=0.2))
                continue
            except Empty:
                pass
            for future, pack in futures.items():
                if pack[0].key not in results and future.done():
                    results.update(zip((j.key for j in pack), _collect(future, pack, view, processes)))
        drain(messages, view, Empty)
    except BaseException:  # a failure, or Ctrl-C: stop the other units now (each keeps its last epoch's state)
        pool.shutdown(wait=False, cancel_futures=True)
        for process in processes.values():
            if process.is_alive():
                process.terminate()
        raise
    pool.shutdown(wait=True)
    return results


# the executor


def run_units(
    jobs: list[UnitJob],
    workers: int = 1,
    threads: int | None = None,
    features: FeatureSet | None = None,
    progress: bool = True,
    desc: str = "",
    shared: dict[str, str] | None = None,
    packs: list[list[UnitJob]] | None = None,
) -> list[UnitResult]:
    """Run units, one unit or one pack of units (`packs`, whose units are `jobs`) at a time per process: in
    parallel worker processes when workers > 1 (each reads the features from `shared`, see
    `shared_features.share_features`; one per GPU on CUDA, each with its GPU's pack), else in this process on
    `features`; one progress bar over all their epochs."""
    view, packs = ProgressView(jobs, desc, progress), packs or [[j] for j in jobs]
    try:
        if workers <= 1:
            results = _run_serially(packs, threads, features, view)
        else:
            results = _run_in_pool(packs, workers, threads, view, shared or {})
        return [results[j.key] for j in jobs]
    finally:
        view.close()
