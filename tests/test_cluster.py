"""The Ray backend and sweeps, on the test session's Ray cluster of 2 CPUs (conftest.ray_cluster)."""

from __future__ import annotations

import _thread
import contextlib
import os
import signal
import threading
import time
import warnings
from pathlib import Path

import pandas as pd
import pytest
import torch
from conftest import SHORT, UNINTERRUPTED, assert_same_units, train

from timnet import load_config
from timnet.core.errors import TimnetError
from timnet.training.cluster import start_local_ray
from timnet.training.execution import Execution
from timnet.training.run import run_training
from timnet.training.run_store import Roots

ray = pytest.importorskip("ray", reason="Ray is installed by the README's setup command")


@pytest.fixture
def cluster(ray_cluster):
    """The session's Ray cluster (conftest.ray_cluster: 2 CPUs, on two nodes), shared with the fault tests."""
    return ray_cluster


def short_run(**train) -> object:
    return load_config("EMODB", {**SHORT, **{f"train.{k}": v for k, v in train.items()}})


@pytest.mark.slow
def test_ray_backend_equals_local_bit_for_bit(cluster, mfcc, tmp_path):
    local = train(tmp_path / "local", mfcc, folds=2, epochs=2)
    on_ray = train(tmp_path / "ray", mfcc, folds=2, epochs=2, backend="ray")
    assert_same_units(tmp_path / "local" / "Models" / local.run_id, tmp_path / "ray" / "Models" / on_ray.run_id)
    pd.testing.assert_frame_equal(local.predictions, on_ray.predictions)
    assert on_ray.workbook.is_file() and (tmp_path / "ray" / "Results" / "Accuracy Analysis Summary.xlsx").is_file()


@pytest.mark.slow
def test_a_node_that_cannot_read_the_features_fails_with_one_line(cluster, mfcc, tmp_path):
    copy = tmp_path / "MFCC" / "EMODB.npy"
    copy.parent.mkdir()
    for src in mfcc.parent.glob("EMODB.*"):
        (copy.parent / src.name).write_bytes(src.read_bytes())
    from timnet.training.run import execute, prepare_run

    run = prepare_run(
        short_run(folds=2, epochs=1), copy, Roots(tmp_path / "M", tmp_path / "L", tmp_path / "R"), device="cpu"
    )
    copy.unlink()  # as if the file were on a disk this node does not mount
    with pytest.raises(TimnetError, match=r"fold_\d: node \S+ cannot read .*EMODB.npy — .*storage every node sees"):
        execute([run], "cpu", Execution(backend="ray", progress=False))


@pytest.mark.slow
def test_a_ray_worker_refuses_model_code_the_driver_changed_in_memory(cluster, mfcc, tmp_path):
    from timnet.model import network

    original = network.batch_norm
    network.batch_norm = lambda bn, h: original(bn, h) * 1.5  # a notebook's in-memory change, in the driver only
    try:
        with pytest.raises(TimnetError) as caught:
            train(tmp_path, mfcc, folds=2, epochs=1, backend="ray")
    finally:
        network.batch_norm = original
    message = str(caught.value)
    assert len(message.splitlines()) == 1 and "other model code than its caller has in memory" in message, message
    assert "save the changed file" in message and "--workers 1" in message


def ray_worker_of(unit_key: str) -> int | None:
    """The pid of the Ray worker process running a unit (Ray titles it `ray::<task name>`)."""
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            title = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        if title.startswith("ray::") and unit_key in title:
            return int(pid)
    return None


def fold_1_in_progress(root: Path) -> tuple[str, int] | None:
    """(run id, last saved epoch) of fold 1 while it trains under `root`, from its per-epoch state file."""
    states = list((root / "Models").glob("*/in_progress/fold_1.pt"))
    if not states:
        return None
    try:
        epoch = torch.load(states[0], weights_only=False)["progress"]["epoch"]
    except Exception:  # noqa: BLE001 — being replaced right now
        epoch = 0
    return states[0].parent.parent.name, epoch


def ray_run_while(root: Path, mfcc: Path, act, window=(3, 30), job=None, watch=None) -> tuple[dict, object]:
    """Train the UNINTERRUPTED run on Ray (in a thread) under `root`, or call `job()` (e.g. a sweep there); while the
    saved epoch of fold 1 (or of the unit `watch(root)` finds: its (name, epoch)) is within `window`, call
    `act(run_id or name, epoch)` until it returns something.
    -> ({"result" or "error", "warnings"}, what act returned)."""
    outcome: dict = {}

    def reference():
        how = Execution(Roots(root / "Models", root / "logs", root / "Results"), "ray", threads=1, progress=False)
        return run_training(short_run(**UNINTERRUPTED), mfcc, how)

    def ray_run():
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            try:
                outcome["result"] = (job or reference)()
            except BaseException as err:  # noqa: BLE001 — reported by the caller's assertions
                outcome["error"] = err
        outcome["warnings"] = [str(w.message) for w in caught]

    thread = threading.Thread(target=ray_run)
    thread.start()
    acted, deadline = None, time.monotonic() + 180
    while acted is None and time.monotonic() < deadline and thread.is_alive():
        found = (watch or fold_1_in_progress)(root)
        if found and window[0] <= found[1] < window[1]:
            acted = act(*found)
        time.sleep(0.05)
    thread.join(timeout=300)
    return outcome, acted


@pytest.mark.slow
def test_a_killed_ray_worker_resumes_its_unit_from_its_state(cluster, mfcc, tmp_path, uninterrupted_run):
    """kill -9 of the worker in the middle of a unit: Ray retries it, it goes on from its last saved epoch,
    and the numbers equal an uninterrupted run."""
    root = tmp_path / "ray"

    def kill_fold_1(run_id: str, epoch: int) -> int | None:
        if pid := ray_worker_of(f"{run_id}/fold_1"):
            os.kill(pid, signal.SIGKILL)
            return epoch
        return None

    outcome, killed = ray_run_while(root, mfcc, kill_fold_1, (3, 35))
    assert killed, "the unit was not caught in the middle of its training"
    assert "error" not in outcome, outcome.get("error")
    run_id = outcome["result"].run_id
    restarts = [w for w in outcome["warnings"] if "fold_1: started again, from its saved epoch" in w]
    assert restarts and int(restarts[0].rsplit(" ", 1)[1]) >= killed, outcome["warnings"]
    assert_same_units(uninterrupted_run, root / "Models" / run_id)


@pytest.mark.slow
def test_ctrl_c_cancels_the_ray_tasks_and_the_run_resumes_exactly(cluster, mfcc, tmp_path, uninterrupted_run):
    """Ctrl-C in the driver mid-run: every task is cancelled (its worker goes, its state stops changing), and
    `resume` finishes the run with the numbers of an uninterrupted one."""
    root = tmp_path / "ray"
    seen: dict = {"epochs": []}
    ended = threading.Event()

    def interrupt_mid_unit():
        while not ended.is_set():
            found = fold_1_in_progress(root)
            seen["epochs"].append(found and found[1])
            if found and 3 <= found[1] < 35 and (pid := ray_worker_of(f"{found[0]}/fold_1")):
                os.kill(pid, signal.SIGSTOP)  # fold 1 cannot finish before the driver has handled Ctrl-C
                seen.update(run_id=found[0], pid=pid, handler=signal.getsignal(signal.SIGINT))
                _thread.interrupt_main()  # what Ctrl-C does to the driver
                return
            time.sleep(0.05)

    watcher = threading.Thread(target=interrupt_mid_unit)
    handler = signal.signal(signal.SIGINT, signal.default_int_handler)  # Ctrl-C as at a terminal, whatever ran before
    watcher.start()
    try:
        train(root, mfcc, backend="ray", **UNINTERRUPTED)
        interrupted = False
    except KeyboardInterrupt:
        interrupted = True
    finally:
        ended.set()
        watcher.join()
        signal.signal(signal.SIGINT, handler)
    if "pid" in seen:
        with contextlib.suppress(ProcessLookupError):
            os.kill(seen["pid"], signal.SIGCONT)  # its cancellation can now take effect
    assert interrupted and "run_id" in seen, f"fold 1 not interrupted mid-unit: {seen}"
    run_id = seen["run_id"]
    deadline = time.monotonic() + 90  # Ray cancels and reaps its workers slowly on a loaded machine
    while any(ray_worker_of(f"{run_id}/fold_{k}") for k in (1, 2)) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not any(ray_worker_of(f"{run_id}/fold_{k}") for k in (1, 2)), "a cancelled task still runs"
    state = root / "Models" / run_id / "in_progress" / "fold_1.pt"
    before = state.stat().st_mtime_ns
    time.sleep(1.5)
    assert state.stat().st_mtime_ns == before, "a cancelled unit still writes its state"
    assert not (root / "Models" / run_id / "fold_1.pt").exists()
    resumed = train(root, None, resume=run_id, backend="ray")
    assert resumed.run_id == run_id
    assert_same_units(uninterrupted_run, root / "Models" / run_id)


class FlakyStart:
    """Ray's `init`/`shutdown` as `start_local_ray` calls them, where the first `fails` starts miss Ray's fixed
    start-up wait (the exception Ray raises then)."""

    def __init__(self, fails: int):
        self.fails, self.calls = fails, []

    def init(self, **kw):
        self.calls.append(("init", kw))
        if sum(c[0] == "init" for c in self.calls) <= self.fails:
            raise Exception("The current node timed out during startup. This could happen because ...")

    def shutdown(self):
        self.calls.append(("shutdown", {}))


def test_a_local_node_that_misses_rays_start_up_wait_is_started_once_more_saying_so():
    once = FlakyStart(fails=1)
    with pytest.warns(UserWarning, match="did not start .*starting it once more"):
        start_local_ray(once, num_cpus=2)
    assert [c[0] for c in once.calls] == ["init", "shutdown", "init"], "a clean retry: shut down, then start"
    assert once.calls[-1][1] == {"num_cpus": 2}
    twice = FlakyStart(fails=2)
    with pytest.warns(UserWarning), pytest.raises(TimnetError) as err:
        start_local_ray(twice)
    assert [c[0] for c in twice.calls] == ["init", "shutdown", "init", "shutdown"]
    (line,) = str(err.value).splitlines()
    assert "did not start (2 tries)" in line and "--backend local" in line
