"""The Ray backend: every unit (one fold of one seed of one run) is a Ray task on a cluster.

The units are the same `train_unit(job)` the local executor runs, so the run folder, its files and its
numbers are those of a local run. What a cluster adds:
- storage: units read the MFCC file and write the run folder by absolute path, so both must be on storage
  every node sees (NFS, a shared disk); a node that cannot gets one error naming it and the path;
- faults: a unit whose worker dies (kill -9, out of memory, a node lost) is retried by Ray, on any node, and
  restores its per-epoch state, so it goes on from its last finished epoch, not from epoch 0; one whose retries
  are spent fails the run with one line;
- progress: a queue actor pinned to the driver's node (a lost worker node cannot take it along); a failure to
  send or read an event only costs a bar update, never a unit or the run;
- Ctrl-C cancels the tasks; every unit keeps its last epoch's state, so `--resume` continues.
Ray is imported only here, only for `--backend ray`.
"""

from __future__ import annotations

import dataclasses
import os
import socket
import tempfile
import warnings
from pathlib import Path

import torch

from ..core.errors import TimnetError, one_line_warnings, require
from ..core.progress import ProgressView, drain
from ..data.shared_features import unit_features
from .run_store import UnitResult
from .same_code import caller_digests, check_same_code
from .unit import UnitJob, train_unit

RETRIES = 3  # how often Ray restarts a unit whose worker process died


def _ray():
    return require("ray", "ray", "--backend ray")


def start_local_ray(ray, attempts: int = 2, **init) -> None:
    """`ray.init` of a new local node, started once more if it fails: Ray waits a fixed 30 s for its raylet to
    register ("The current node timed out during startup"), which a loaded 2-core machine can miss once. A retry
    starts clean (`ray.shutdown` first) and says so."""
    for attempt in range(1, attempts + 1):
        try:
            ray.init(**init)
            return
        except ConnectionError:
            raise
        except Exception as err:  # Ray raises a bare Exception for a node that did not start in time
            ray.shutdown()
            if attempt == attempts:
                raise TimnetError(
                    f"the local Ray node did not start ({attempts} tries): {str(err).splitlines()[0]} — "
                    "is the machine overloaded? Try again, or train with --backend local"
                ) from None
            warnings.warn(f"the local Ray node did not start ({err}); starting it once more", stacklevel=2)


def connect(address: str | None = None):
    """Join the cluster at `address` (`auto`: the one started with `ray start` on this machine;
    `ray://host:10001`: a remote head), or start a local one (retried once on a busy machine); a driver already
    connected stays connected."""
    ray = _ray()
    if not ray.is_initialized():
        try:
            if address in (None, "local"):
                start_local_ray(ray, address=address, include_dashboard=False, log_to_driver=False)
            else:
                ray.init(address=address, log_to_driver=False)
        except ConnectionError as err:
            raise TimnetError(f"cannot reach the Ray cluster at {address}: {err}") from None
    return ray


def cluster_has_gpus(address: str | None = None) -> bool:
    return connect(address).cluster_resources().get("GPU", 0) > 0


def check_storage(job: UnitJob) -> None:
    """In the task, before any work: can this node read the features and write the run folder?"""
    node = socket.gethostname()
    if not os.access(job.mfcc_file, os.R_OK):
        raise TimnetError(
            f"node {node} cannot read {job.mfcc_file} — the MFCC file and the run folder must be on storage every "
            "node sees (a shared or network file system, the same path on every node)"
        )
    try:
        Path(job.models_dir).mkdir(parents=True, exist_ok=True)
        tempfile.TemporaryFile(dir=job.models_dir).close()
    except OSError as err:
        raise TimnetError(
            f"node {node} cannot write the run folder {job.models_dir} ({err.strerror}) — it must be on storage "
            "every node sees and can write"
        ) from None


def ray_unit(job: UnitJob, threads: int, events, code: dict[str, str]) -> UnitResult:
    """The Ray task: one unit, if this node has the driver's model code (`same_code`), its progress events sent to
    the driver's queue."""
    check_storage(job)
    check_same_code(job.config, code, "the local backend and --workers 1")
    one_line_warnings()
    torch.set_num_threads(threads)
    features = unit_features(job.mfcc_file, job.classes)  # Ray reuses worker processes: read once per process
    node = socket.gethostname()

    def report(event: dict) -> None:
        try:
            events.put_nowait({**event, "node": node})
        except Exception:  # noqa: BLE001 — the queue unreachable: a missing bar update, the unit goes on
            pass

    return train_unit(job, features, report)


def progress_queue(ray):
    """The progress queue, an actor holding no CPU, on the driver's node: it lives and dies with the driver."""
    from ray.util.queue import Queue
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    here = NodeAffinitySchedulingStrategy(ray.get_runtime_context().get_node_id(), soft=False)
    return Queue(actor_options={"num_cpus": 0, "scheduling_strategy": here})


def show_progress(ray, events, view: ProgressView) -> bool:
    """Drain the queue into the view; False once it cannot be read (then the bar just stops moving)."""
    from ray.util.queue import Empty

    try:
        drain(events, view, Empty)
        return True
    except ray.exceptions.RayError:
        return False


def cancel_running(ray, refs: list) -> None:
    """Force-cancel the tasks still running. Cancelling a task whose reply is arriving at that moment aborts the
    driver in Ray 2.60 (CHECK "Tried to complete task that was not pending", seen when both units of a run failed
    at once): tasks that are ending get half a second to end, and only those still running then are cancelled."""
    _, running = ray.wait(refs, num_returns=len(refs), timeout=0.5)
    for ref in running:
        ray.cancel(ref, force=True)


def absolute(job: UnitJob) -> UnitJob:
    """The job with absolute paths: a path relative to the driver's folder means nothing on another node."""
    return dataclasses.replace(
        job,
        mfcc_file=str(Path(job.mfcc_file).resolve()),
        models_dir=str(Path(job.models_dir).resolve()),
        logs_dir=str(Path(job.logs_dir).resolve()),
    )


def run_units_on_ray(
    jobs: list[UnitJob], threads: int | None, address: str | None, progress: bool, desc: str
) -> list[UnitResult]:
    """Submit every unit at once as a Ray task (CPUs = threads per unit, one GPU on CUDA) and wait for all;
    one progress bar over their epochs, fed through a Ray queue."""
    ray = connect(address)
    threads = threads or 1
    events = progress_queue(ray)
    task = ray.remote(ray_unit)
    view = ProgressView(jobs, desc, progress)
    refs = {}
    codes = caller_digests([job.config for job in jobs])  # the driver's model code, as it has it now
    for job, code in zip(map(absolute, jobs), codes):
        gpus = 1 if job.device.startswith("cuda") else 0
        options = {"num_cpus": threads, "num_gpus": gpus, "max_retries": RETRIES, "retry_exceptions": False}
        refs[task.options(name=f"timnet {job.key}", **options).remote(job, threads, events, code)] = job
    results, live = {}, True
    try:
        pending = list(refs)
        while pending:
            done, pending = ray.wait(pending, num_returns=len(pending), timeout=0.2)
            for ref in done:
                job = refs[ref]
                try:
                    results[job.key] = ray.get(ref)
                except ray.exceptions.RayTaskError as err:
                    cause = err.cause if isinstance(err.cause, Exception) else err
                    raise TimnetError(f"{view.label(job.key)}: {cause}") from None
                except ray.exceptions.RayError as err:  # its worker (or node) was lost more often than Ray retries
                    raise TimnetError(
                        f"{view.label(job.key)}: its Ray worker or node was lost {RETRIES + 1} times "
                        f"({type(err).__name__}); finished units are kept — resume the run with --resume"
                    ) from None
            live = live and show_progress(ray, events, view)
        if live:
            show_progress(ray, events, view)
    except BaseException:  # a failure, or Ctrl-C: cancel the rest; each unit keeps its last epoch's state
        cancel_running(ray, list(refs))
        raise
    finally:
        view.close()
    return [results[j.key] for j in jobs]
