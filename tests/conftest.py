"""Shared fixtures: synthetic audio written by the tests, and ../shared when it is there."""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import sys
import tempfile
import warnings
from contextlib import contextmanager
from pathlib import Path

import pytest
import torch

from timnet.data.example import EMOTION_PITCH, tone, write_example_corpus, write_wav  # noqa: F401  (re-exported for tests)

# Tiny tensors: one thread is as fast, and far faster when another process holds the second core.
torch.set_num_threads(1)
# The same for every process a test starts (notebook kernels, CLI commands): two xdist workers already fill the two
# cores, and OpenMP threads that wait on each other behind another process's work made the t-SNE notebook 6.5x
# slower in the suite than alone (153 s vs 23 s). Units still set their own threads (`pool`, `cluster`).
os.environ.setdefault("OMP_NUM_THREADS", "1")
# Machine measurements (`train.blas = auto`, `timnet devices`) go to a cache of this test process's own, inherited
# by the commands it starts, never to the user's ~/.cache/timnet. There `auto` is numpy's BLAS (and the fused
# blocks): measured under the other worker's load, the answer flipped between runs, and so did which path a
# test's model trained through (tests/test_blas.py measures in caches of its own).
if "TIMNET_CACHE" not in os.environ:
    os.environ["TIMNET_CACHE"] = tempfile.mkdtemp(prefix="timnet_test_cache_")
    from timnet.accel.blas import cache_file, machine_key

    cache_file().write_text(json.dumps({machine_key(): "numpy"}))

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("TIMNET_SHARED", REPO.parent / "shared"))
EMODB_16K = SHARED / "data" / "emodb-16k-subset"
EMODB_22K = SHARED / "data" / "emodb-22k-2s"
WEIGHTS = SHARED / "data" / "timnet-weights"

needs_shared = pytest.mark.skipif(
    not (EMODB_16K.is_dir() and WEIGHTS.is_dir()),
    reason=f"needs ../shared (real EMO-DB audio and the authors' weights), not found at {SHARED}",
)


# Starting a Ray node, JupyterLab or Chromium takes both cores for seconds; two at once on a 2-core machine (or one
# beside a busy process) missed Ray's fixed 30 s start-up wait. The heavy starters take turns, across the xdist
# workers and any other test session on this machine: a file lock, held from the start until the process answers.
HEAVY_START_LOCK = Path(tempfile.gettempdir()) / "timnet-tests-heavy-start.lock"


@contextmanager
def heavy_start():
    """Hold the machine-wide start-up turn (see HEAVY_START_LOCK) while a heavy process starts."""
    with open(HEAVY_START_LOCK, "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


# Two worker processes (pyproject's addopts: `-n 2 --dist loadgroup --no-loadscope-reorder`), each test file on one
# of them, the two Ray files together on one (Ray clusters side by side slow each other ~2x), the slowest groups
# first so the many short files fill in around them (xdist's own order, most tests first, started the Ray group
# last: 13.1 min). Measured on 2 cores: 17.8 min serially, 13.6 min file by file in alphabetical order.
SLOW_FIRST = ("ray", "test_notebooks.py", "test_parallel.py", "test_train.py")
RAY_FILES = ("test_cluster.py", "test_cluster_faults.py")


@pytest.hookimpl(tryfirst=True)  # before xdist's own hook reads the groups
def pytest_collection_modifyitems(items):
    group = {item: "ray" if item.path.name in RAY_FILES else item.path.name for item in items}
    for item in items:
        item.add_marker(pytest.mark.xdist_group(group[item]))
    rank = {name: i for i, name in enumerate(SLOW_FIRST)}
    items.sort(key=lambda item: rank.get(group[item], len(SLOW_FIRST)))  # stable: each file keeps its order


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """With TIMNET_REQUIRE_BROWSER=1 (`.ci/run` sets it) a browser test that would skip fails: CI must show the
    notebooks and the study report in Chromium, not pass without them."""
    outcome = yield
    report = outcome.get_result()
    if report.skipped and item.get_closest_marker("browser") and os.environ.get("TIMNET_REQUIRE_BROWSER") == "1":
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
        report.outcome = "failed"
        report.longrepr = f"browser test skipped where it must run (TIMNET_REQUIRE_BROWSER=1): {reason}"


def pytest_addoption(parser):
    parser.addoption(
        "--device",
        default="cpu",
        help="device of the self-test (tests marked `device`): cpu, cuda, cuda:N or mps (default: cpu)",
    )


@pytest.fixture(scope="session")
def device(request) -> str:
    """The device under self-test (`pytest -m device --device mps|cuda`); skips when this machine lacks it."""
    from timnet.core.devices import pick_device
    from timnet.core.errors import TimnetError

    name = request.config.getoption("--device")
    try:
        return pick_device(name)
    except TimnetError as err:
        pytest.skip(f"--device {name} is not available here: {err}")


@pytest.fixture
def make_wav(tmp_path):
    return lambda name, **kw: write_wav(tmp_path / name, **kw)


def emodb_tree(root: Path, **kw) -> Path:
    """A small EMO-DB in its distributed layout (wav/03a01Wa.wav), class-separable audio."""
    return write_example_corpus(root, **kw)


@pytest.fixture
def emodb_root(tmp_path) -> Path:
    return emodb_tree(tmp_path / "EMODB")


# Short signals (16000 samples -> 32 frames) keep training tests fast; the model is the same.
SHORT = {"features.signal_length": 16000}


def built_once(tmp_path_factory, name: str, build) -> str:
    """What `build(folder)` returns (a string), built once for the whole test session: under pytest-xdist the
    first worker to take the lock builds into a folder both workers see, the other reads what it built, so a
    session fixture that trains is paid once, not once per worker. The fixtures built so are only read."""
    base = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        base = base.parent  # pytest-of-<user>/pytest-<n>: this session's, shared by its workers
    folder, done = base / f"once-{name}", base / f"once-{name}.json"
    with open(base / f"once-{name}.lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            if not done.exists():
                shutil.rmtree(folder, ignore_errors=True)  # a build that failed half-way
                folder.mkdir()
                done.write_text(json.dumps(build(folder)))
            return json.loads(done.read_text())
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


@pytest.fixture(scope="session")
def mfcc(tmp_path_factory) -> Path:
    """MFCC/EMODB.npy of a small synthetic EMO-DB (4 speakers x 3 texts x 7 emotions = 84), short signals;
    the audio lies in the folder EMODB beside the MFCC folder."""

    def build(root: Path) -> str:
        from timnet import load_config
        from timnet.data.mfcc_extraction import preprocess

        tree = emodb_tree(root / "EMODB", speakers=("03", "08", "09", "10"), texts=("a01", "a02", "a04"))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            preprocess(load_config("EMODB", SHORT), tree, root / "MFCC", progress=False)
        return str(root / "MFCC" / "EMODB.npy")

    return Path(built_once(tmp_path_factory, "mfcc", build))


def train(
    root: Path,
    mfcc: Path | None,
    *,
    cfg=None,
    resume: str | None = None,
    workers: int = 1,
    backend: str = "local",
    progress: bool = False,
    settings: dict | None = None,
    device: str = "cpu",
    **train_settings,
):
    """One run under root/{Models,logs,Results} on `device` (CPU), one thread per unit, in this process unless
    `workers` says otherwise: the short-signal EMO-DB config with `train_settings` (train.*) and `settings` (any),
    or `cfg`, or `resume=RUN`. Warnings (e.g. a small corpus' folds) are silenced."""
    from timnet import load_config
    from timnet.training.execution import Execution
    from timnet.training.run import run_training
    from timnet.training.run_store import Roots

    if cfg is None and resume is None:
        overrides = {**SHORT, **(settings or {}), **{f"train.{k}": v for k, v in train_settings.items()}}
        cfg = load_config("EMODB", overrides)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        how = Execution(
            Roots(root / "Models", root / "logs", root / "Results"), backend, None, device, workers, 1, progress
        )
        return run_training(cfg, None if resume else mfcc, how, resume=resume)


def train_interrupted(root: Path, mfcc: Path, monkeypatch, cls, method: str, stop, **train_settings) -> str:
    """Train under `root` (as `train`) until `stop(self, *args)`, asked after each call of `cls.method`, says so:
    then KeyboardInterrupt, as Ctrl-C would. The method is restored; returns the interrupted run's id."""
    original = getattr(cls, method)

    def stopping(self, *args):
        result = original(self, *args)
        if stop(self, *args):
            raise KeyboardInterrupt
        return result

    monkeypatch.setattr(cls, method, stopping)
    with pytest.raises(KeyboardInterrupt):
        train(root, mfcc, **train_settings)
    monkeypatch.setattr(cls, method, original)
    return next((root / "Models").iterdir()).name


def assert_same_units(dir_a: Path, dir_b: Path, units: list[str] | None = None) -> None:
    """The finished units of two run folders are equal bit for bit: metrics, test files and probabilities, every
    weight, the loss of every epoch, the epoch and predictions of every other policy a unit keeps (`units`: these,
    else all of dir_a's, which must be those of dir_b)."""
    if units is None:
        units = sorted(p.stem for p in dir_a.glob("fold_*.pt"))
        assert units and units == sorted(p.stem for p in dir_b.glob("fold_*.pt"))
    for unit in units:
        a = torch.load(dir_a / f"{unit}.pt", weights_only=True)
        b = torch.load(dir_b / f"{unit}.pt", weights_only=True)
        assert a["metrics"] == b["metrics"] and a["test_stems"] == b["test_stems"], unit
        assert torch.equal(a["test_probs"], b["test_probs"]), unit
        for key, tensor in a["state_dict"].items():
            assert torch.equal(tensor, b["state_dict"][key]), (unit, key)
        assert [r["loss"] for r in a["history"]] == [r["loss"] for r in b["history"]], unit
        assert a.get("also", {}).keys() == b.get("also", {}).keys(), unit  # the other policies' epochs, too
        for policy, other in a.get("also", {}).items():
            assert other["epoch"] == b["also"][policy]["epoch"], (unit, policy)
            assert torch.equal(other["test_probs"], b["also"][policy]["test_probs"]), (unit, policy)


@pytest.fixture(scope="session")
def trained_run(mfcc, tmp_path_factory):
    """One tiny finished run (2 folds x 3 epochs) on `mfcc`, shared by the tests that read a run:
    (root with Models/ logs/ Results/, the corpus folder, the RunResult)."""
    root = tmp_path_factory.mktemp("run")
    return root, mfcc.parent.parent / "EMODB", train(root, mfcc, folds=2, epochs=3)


# The uninterrupted run that interrupted ones (a killed worker, a killed Ray worker, Ctrl-C) must equal.
UNINTERRUPTED = {"folds": 2, "epochs": 40}


@pytest.fixture(scope="session")
def uninterrupted_run(mfcc, tmp_path_factory) -> Path:
    """The Models/<run> folder of one UNINTERRUPTED run, trained once per test session (both workers)."""
    return Path(
        built_once(
            tmp_path_factory,
            "uninterrupted",
            lambda root: str(root / "Models" / train(root, mfcc, **UNINTERRUPTED).run_id),
        )
    )


def train_cli(*args: str) -> list[str]:
    """argv of `timnet train` on the short-signal EMO-DB config (or of a --resume), quiet, on CPU, one thread
    per unit (the same arithmetic whatever the number of workers, so runs compare bit for bit)."""
    config = [] if "--resume" in args else ["--dataset", "EMODB", "--set", "features.signal_length=16000"]
    return [sys.executable, "-m", "timnet.cli", "train", *config, "--device", "cpu", "--threads", "1", "--quiet", *args]


def proc_stat(pid: int) -> list[str]:
    """The fields of /proc/<pid>/stat after the command name (state, ppid, ...); Linux."""
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()


def pool_workers_of(parent: int) -> list[int]:
    """Pool worker pids among a process's children (not multiprocessing's resource tracker); Linux (/proc)."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            ppid = int(proc_stat(int(entry))[1])
            cmdline = Path(f"/proc/{entry}/cmdline").read_bytes()
        except (OSError, IndexError, ValueError):
            continue
        if ppid == parent and b"spawn_main" in cmdline:
            found.append(int(entry))
    return found


def run_dirs(tmp_path: Path, name: str) -> list[str]:
    """`--models/--logs/--results` of one training under tmp_path/name."""
    return [
        "--models",
        str(tmp_path / name / "M"),
        "--logs",
        str(tmp_path / name / "L"),
        "--results",
        str(tmp_path / name / "R"),
    ]


def tiny_grid(path: Path, name: str, mfcc: Path, runs: str = "", grid: str = "") -> Path:
    """A sweep grid file of 2-fold x 2-epoch short-signal EMO-DB runs on `mfcc`, with extra `[runs]` and `[grid]`
    lines (TOML)."""
    path.write_text(
        f'name = "{name}"\n[runs]\ndataset = "EMODB"\nmfcc = "{mfcc}"\n'
        'set = { "train.folds" = 2, "train.epochs" = 2, "features.signal_length" = 16000 }\n'
        f"{runs}\n[grid]\n{grid}\n"
    )
    return path


def small_study(tmp_path: Path, text: str, quick: bool = False):
    """(roots, record, report) of the study whose file holds `text` (TOML), trained under tmp_path on the CPU, one
    unit at a time, warnings silenced."""
    from timnet.studies.study import run_study
    from timnet.training.execution import Execution
    from timnet.training.run_store import Roots

    path = tmp_path / "study.toml"
    path.write_text(text)
    roots = Roots(tmp_path / "Models", tmp_path / "logs", tmp_path / "Results")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        how = Execution(roots, device="cpu", workers=1, threads=1, progress=False)
        record, report = run_study(path, quick=quick, how=how)
    return roots, record, report


def pixels_of(png: Path, colour, tolerance: float = 0.05) -> int:
    """How many pixels of a PNG have `colour` (a matplotlib colour or an RGB(A) tuple), within `tolerance` per
    channel: a figure's plotted series show up as pixels of their colour, a blank or empty figure has none."""
    from matplotlib.colors import to_rgb
    from matplotlib.image import imread

    return int((abs(imread(png)[..., :3] - to_rgb(colour)).max(-1) < tolerance).sum())


def model_config(**changes):
    """EMO-DB's architecture from its TOML (the one place defaults live), with `changes`."""
    import dataclasses

    from timnet import load_config
    from timnet.model.network import TIMNetConfig

    return dataclasses.replace(TIMNetConfig.from_config(load_config("EMODB")), **changes)


# Ray's node failure found within a few seconds, not its default of half a minute.
FAST_HEALTH = {"health_check_initial_delay_ms": 0, "health_check_period_ms": 1000, "health_check_failure_threshold": 5}


def start_two_nodes(attempts: int = 3):
    """Ray's own test cluster: a head and a worker node on this machine, one CPU each; a node whose agents miss
    Ray's fixed start-up wait on a busy machine is started again (clean), up to `attempts` times."""
    import time

    from ray.cluster_utils import Cluster

    for attempt in range(attempts):
        cluster = Cluster()
        try:
            cluster.add_node(num_cpus=1, include_dashboard=False, _system_config=FAST_HEALTH)  # the head
            cluster.add_node(num_cpus=1)
            return cluster
        except Exception:
            cluster.shutdown()
            if attempt == attempts - 1:
                raise
            print(f"a Ray node did not start (attempt {attempt + 1} of {attempts}); starting the cluster again")
            time.sleep(2)


@pytest.fixture(scope="session")
def ray_cluster():
    """The one Ray cluster of the test session (the Ray files share a worker, so it starts once): a head, where
    the driver connects, and a worker node, one CPU each, so of two units one runs on each. Started in turn with
    the other heavy starters, with patience for a busy 2-core machine. A test that needs the worker node asks
    `live_worker(cluster)` for it: a node-loss test may have removed it."""
    ray = pytest.importorskip("ray", reason="Ray is installed by the README's setup command")
    patience = pytest.MonkeyPatch()  # a busy 2-core machine starts a node's agents slowly: give them time
    patience.setenv("RAY_agent_register_timeout_ms", "120000")
    with heavy_start():
        cluster = start_two_nodes()
        ray.init(address=cluster.address, log_to_driver=False)
        cluster.wait_for_nodes()
    yield cluster
    ray.shutdown()
    cluster.shutdown()
    patience.undo()
