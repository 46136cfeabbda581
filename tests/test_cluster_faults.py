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
import torch
from conftest import UNINTERRUPTED, assert_same_units, heavy_start, proc_stat, run_dirs, tiny_grid, train, train_cli
from test_cluster import ray_run_while, ray_worker_of

ray = pytest.importorskip("ray", reason="Ray is installed by the README's setup command")
if not sys.platform.startswith("linux"):
    pytest.skip("finds Ray's worker processes through /proc", allow_module_level=True)

from timnet.studies.sweep import run_sweep  # noqa: E402
from timnet.training.execution import Execution  # noqa: E402
from timnet.training.run import run_training  # noqa: E402
from timnet.training.run_store import Roots  # noqa: E402


@pytest.fixture
def two_nodes(ray_cluster):
    """The session's Ray cluster (conftest.ray_cluster): a head and a worker node, one CPU each."""
    return ray_cluster


def live_worker(cluster, attempts: int = 3):
    """The cluster's worker node, a new one if a node-loss test removed it (so those tests run in any order);
    a node that misses Ray's start-up wait is removed and started again."""
    for attempt in range(attempts):
        if cluster.worker_nodes:
            return next(iter(cluster.worker_nodes))
        try:
            with heavy_start():
                node = cluster.add_node(num_cpus=1)
                cluster.wait_for_nodes()
            return node
        except Exception:
            for node in list(cluster.worker_nodes):
                cluster.remove_node(node, allow_graceful=False)
            if attempt == attempts - 1:
                raise
            time.sleep(2)


def parent_of(pid: int) -> int:
    return int(proc_stat(pid)[1])


def runs_on(node, key: str) -> bool:
    """The unit `key` (`<run>/<unit>`) runs in a worker process of `node` (its raylet is the worker's parent)."""
    pid = ray_worker_of(key)
    return bool(pid) and parent_of(pid) == node.all_processes["raylet"][0].process.pid


def training_on(node):
    """A watch for ray_run_while: (`<run>/<unit>`, its saved epoch) of a unit training on `node`. It is that
    unit's own epoch that counts: a new node's first worker starts late, and the other units may be far ahead."""

    def watch(root: Path) -> tuple[str, int] | None:
        for state in (root / "Models").glob("*/in_progress/fold_*.pt"):
            key = f"{state.parent.parent.name}/{state.stem}"
            if runs_on(node, key):
                try:
                    return key, torch.load(state)["progress"]["epoch"]
                except Exception:  # noqa: BLE001 — being replaced right now
                    return None
        return None

    return watch


def test_the_progress_queue_lives_on_the_drivers_node(two_nodes):
    from timnet.training.cluster import progress_queue

    driver = ray.get_runtime_context().get_node_id()
    for _ in range(3):  # unpinned, a CPU-less actor lands on either node
        queue = progress_queue(ray)
        where = ray.get(queue.actor.__ray_call__.remote(lambda actor: ray.get_runtime_context().get_node_id()))
        assert where == driver
        queue.shutdown()


@pytest.mark.slow
def test_a_lost_node_costs_a_sweep_only_its_units_epochs_since_their_state(
    two_nodes, mfcc, tmp_path, uninterrupted_run
):
    """A sweep of two runs (UNINTERRUPTED's, then a 2-epoch one) on Ray: the worker node is removed while a unit of the
    first run trains on it; the sweep completes (no traceback from the progress channel), that unit starts again
    on the head from its saved epoch, and each run's units equal the same run trained locally. A single run is
    this case too: `run_training` is `execute` of one run, the executor a sweep's runs share."""
    cluster, worker = two_nodes, live_worker(two_nodes)
    root = tmp_path / "ray"
    grid = tiny_grid(tmp_path / "grid.toml", "lost", mfcc, grid=f'"train.epochs" = [{UNINTERRUPTED["epochs"]}, 2]')

    def sweep():
        roots = Roots(root / "Models", root / "logs", root / "Results")
        return run_sweep(grid, how=Execution(roots, backend="ray", device="cpu", threads=1, progress=False))

    def remove_its_node(key: str, epoch: int) -> str:
        cluster.remove_node(worker)
        return key  # `<run>/<unit>`: how a sweep of several runs names a unit

    outcome, lost = ray_run_while(root, mfcc, remove_its_node, job=sweep, watch=training_on(worker))
    assert lost, "no unit was caught training on the worker node"
    assert "error" not in outcome, outcome.get("error")
    record, table, workbook = outcome["result"]
    restarts = [w for w in outcome["warnings"] if f"{lost}: started again, from its saved epoch" in w]
    assert restarts and int(restarts[0].rsplit(" ", 1)[1]) >= 3, outcome["warnings"]
    first, second = (root / "Models" / entry["run_id"] for entry in record["runs"])
    assert lost.split("/")[0] == first.name
    assert_same_units(uninterrupted_run, first)
    local = train(tmp_path / "local", mfcc, folds=2, epochs=2)
    assert_same_units(tmp_path / "local" / "Models" / local.run_id, second)
    assert workbook.is_file() and table.complete.all()
    assert (table.war_mean[1], table.uar_mean[1]) == (local.summary["war_mean"], local.summary["uar_mean"])


@pytest.mark.slow
def test_a_run_whose_cluster_died_resumes_on_a_new_one(two_nodes, mfcc, tmp_path, uninterrupted_run):
    """A power cut: the driver and the local cluster it started are killed at once (kill -9 of the driver's
    process group); `--resume` on another cluster (here the two-node one) finishes the run exactly."""
    common = ["--mfcc", str(mfcc), "--folds", str(UNINTERRUPTED["folds"]), "--epochs", str(UNINTERRUPTED["epochs"])]
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
        how = Execution(Roots(root / "M", root / "L", root / "R"), "ray", device="cpu", progress=False)
        run_training(None, None, how, resume=found)
    assert_same_units(uninterrupted_run, models)
