"""Faults of a real multi-node Ray cluster (Ray's own test cluster: a head and a worker node on this machine,
one CPU each): a lost node, a cluster that died with its driver."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import warnings
from pathlib import Path

import pytest
from conftest import REFERENCE, assert_same_units, run_dirs, train_cli
from test_cluster import ray_run_while, ray_worker_of

ray = pytest.importorskip("ray", reason="Ray is installed by the README's setup command")
if not sys.platform.startswith("linux"):
    pytest.skip("finds Ray's worker processes through /proc", allow_module_level=True)

from ray.cluster_utils import Cluster  # noqa: E402

from timnet.train import run_training  # noqa: E402

# Node failure found within a few seconds, not Ray's default of half a minute.
FAST_HEALTH = {"health_check_initial_delay_ms": 0, "health_check_period_ms": 1000, "health_check_failure_threshold": 5}


def start_two_nodes(attempts: int = 3):
    """(cluster, its worker node); a node whose agents miss Ray's fixed 15 s start-up wait on a busy machine
    is started again."""
    for attempt in range(attempts):
        cluster = Cluster()
        try:
            cluster.add_node(num_cpus=1, include_dashboard=False, _system_config=FAST_HEALTH)  # the head
            return cluster, cluster.add_node(num_cpus=1)
        except Exception:
            cluster.shutdown()
            if attempt == attempts - 1:
                raise
            time.sleep(2)


@pytest.fixture(scope="module")
def two_nodes():
    """A head (where the driver connects) and a worker node, one CPU each: of two units, one runs on each."""
    patience = pytest.MonkeyPatch()  # a busy 2-core machine starts a node's agents slowly: give them time
    patience.setenv("RAY_agent_register_timeout_ms", "120000")
    cluster, worker = start_two_nodes()
    ray.init(address=cluster.address, log_to_driver=False)
    cluster.wait_for_nodes()
    yield cluster, worker
    ray.shutdown()
    cluster.shutdown()
    patience.undo()


def parent_of(pid: int) -> int:
    return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])


def unit_on(node, run_id: str) -> str | None:
    """Which of a run's two units runs in a worker process of `node` (its raylet is the worker's parent)."""
    raylet = node.all_processes["raylet"][0].process.pid
    for unit in ("fold_1", "fold_2"):
        pid = ray_worker_of(f"{run_id}/{unit}")
        if pid and parent_of(pid) == raylet:
            return unit
    return None


def test_the_progress_queue_lives_on_the_drivers_node(two_nodes):
    from timnet.cluster import progress_queue

    driver = ray.get_runtime_context().get_node_id()
    for _ in range(3):  # unpinned, a CPU-less actor lands on either node
        queue = progress_queue(ray)
        where = ray.get(queue.actor.__ray_call__.remote(lambda actor: ray.get_runtime_context().get_node_id()))
        assert where == driver
        queue.shutdown()


def test_a_lost_node_costs_only_its_units_epochs_since_their_state(two_nodes, mfcc, tmp_path, reference_run):
    """The worker node is removed while one unit trains on it: the run completes (no traceback from the progress
    channel), that unit starts again on the head from its saved epoch, and the numbers equal a local run's."""
    cluster, worker = two_nodes
    root = tmp_path / "ray"

    def remove_its_node(run_id: str, epoch: int) -> str | None:
        if unit := unit_on(worker, run_id):
            cluster.remove_node(worker)
            return unit
        return None

    outcome, lost = ray_run_while(root, mfcc, remove_its_node)
    assert lost, "no unit was caught training on the worker node"
    assert "error" not in outcome, outcome.get("error")
    restarts = [w for w in outcome["warnings"] if f"{lost}: started again, from its saved epoch" in w]
    assert restarts and int(restarts[0].rsplit(" ", 1)[1]) >= 3, outcome["warnings"]
    assert_same_units(reference_run, root / "Models" / outcome["result"].run_id)


def test_a_run_whose_cluster_died_resumes_on_a_new_one(two_nodes, mfcc, tmp_path, reference_run):
    """A power cut: the driver and the local cluster it started are killed at once (kill -9 of the driver's
    process group); `--resume` on another cluster (here the two-node one) finishes the run exactly."""
    common = ["--mfcc", str(mfcc), "--folds", str(REFERENCE["folds"]), "--epochs", str(REFERENCE["epochs"])]
    argv = train_cli(*common, "--backend", "ray", *run_dirs(tmp_path, "cut"))
    env = {**os.environ, "RAY_ADDRESS": "local"}  # its own local cluster, not the fixture's
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env, start_new_session=True)
    root, deadline, found = tmp_path / "cut", time.monotonic() + 180, None
    try:
        while time.monotonic() < deadline and proc.poll() is None:
            states = list((root / "M").glob("*/in_progress/fold_*.pt"))
            if len(states) == 2:
                found = states[0].parent.parent.name
                break
            time.sleep(0.05)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    assert found, "the run never saved a per-epoch state"
    models = root / "M" / found
    assert not list(models.glob("fold_*.pt"))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        run_training(
            None, None, root / "M", root / "L", root / "R", resume=found, device="cpu", progress=False, backend="ray"
        )
    assert_same_units(reference_run, models)
