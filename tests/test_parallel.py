"""Units in parallel worker processes: bit-identical to serial, one progress view, failures named, compile."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time
import warnings

import pandas as pd
import pytest
from conftest import SHORT, UNINTERRUPTED, assert_same_units, pool_workers_of, run_dirs, train, train_cli

from timnet import load_config
from timnet.core.devices import available_cores
from timnet.core.errors import TimnetError
from timnet.training.compiling import should_compile
from timnet.training.pool import plan_workers


def test_worker_rule():
    cores = available_cores()
    assert plan_workers(10, "cpu") == (min(10, cores), max(1, cores // min(10, cores)) if min(10, cores) > 1 else None)
    assert plan_workers(1, "cpu") == (1, None)  # one unit: trained in this process
    assert plan_workers(10, "cpu", workers=1) == (1, None)
    assert plan_workers(10, "cpu", threads=cores) == (1, cores)
    assert plan_workers(10, "cpu", workers=3, threads=1) == (3, 1)
    assert plan_workers(10, "mps")[0] == 1
    with pytest.raises(TimnetError, match=r"workers: must be ≥ 1 \(got 0\)"):
        plan_workers(10, "cpu", workers=0)
    assert should_compile("on", 1, "cpu") and not should_compile("off", 5000, "cpu")
    assert (
        should_compile("auto", 1000, "cpu")
        and not should_compile("auto", 999, "cpu")
        and not should_compile("auto", 5000, "mps")
    )
    # a worker compiles once for the units it trains one after another: the paper protocol (10 folds x 500
    # epochs, 5 units per worker on 2 cores) compiles; 2 folds of 300 epochs on 2 workers do not
    assert should_compile("auto", 500, "cpu", units=5) and not should_compile("auto", 300, "cpu", units=1)
    assert not should_compile("auto", 500, "cpu", units=5, blas="numpy") and should_compile("on", 1, "cpu", 1, "numpy")


@pytest.mark.slow
def test_two_workers_equal_one_bit_for_bit_and_show_one_bar(tmp_path, mfcc, capsys, monkeypatch):
    serial = train(tmp_path / "serial", mfcc, workers=1, folds=2, epochs=3, seeds=[46, 7])
    capsys.readouterr()
    scratch = tmp_path / "scratch"  # where the parent shares the features with its workers
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))
    parallel = train(tmp_path / "parallel", mfcc, workers=2, progress=True, folds=2, epochs=3, seeds=[46, 7])
    assert not list(scratch.iterdir()), "the shared copy of the features must be removed after the run"
    bar = capsys.readouterr().err
    assert "12/12" in bar and "unit-epoch" in bar  # 4 units x 3 epochs in one bar
    units = ["fold_1_seed46", "fold_2_seed46", "fold_1_seed7", "fold_2_seed7"]
    assert_same_units(
        tmp_path / "serial" / "Models" / serial.run_id, tmp_path / "parallel" / "Models" / parallel.run_id, units
    )
    pd.testing.assert_frame_equal(
        serial.folds.drop(columns="train_seconds"), parallel.folds.drop(columns="train_seconds")
    )
    pd.testing.assert_frame_equal(serial.predictions, parallel.predictions)


def test_pool_workers_map_one_shared_copy_of_the_features(tmp_path, mfcc):
    """Workers memory-map the copy the parent wrote (pages shared between processes) instead of each reading
    the pickled MFCC file into memory of its own; what they see equals the file."""
    import numpy as np

    from timnet.data.feature_files import load_features
    from timnet.data.shared_features import share_features, unit_features
    from timnet.training.run import prepare_run
    from timnet.training.run_store import Roots

    cfg = load_config("EMODB", SHORT)
    run = prepare_run(cfg, mfcc, Roots(tmp_path / "M", tmp_path / "L", tmp_path / "R"), device="cpu")
    shared = share_features([run], tmp_path / "shared")
    assert list(shared) == [str(mfcc)]
    seen = unit_features(str(mfcc), tuple(cfg.dataset.classes), shared[str(mfcc)])
    own = load_features(mfcc, cfg.dataset.classes)
    assert isinstance(seen.x, np.memmap) and seen.x.mode == "c"
    np.testing.assert_array_equal(seen.x, own.x)
    np.testing.assert_array_equal(seen.y, own.y)
    pd.testing.assert_frame_equal(seen.manifest, own.manifest)


@pytest.mark.slow
def test_failing_unit_is_named_finished_units_are_never_retrained(tmp_path, mfcc):
    first = train(tmp_path / "run", mfcc, folds=3, epochs=2)  # all three folds finished
    models = tmp_path / "run" / "Models" / first.run_id
    (models / "fold_2.pt").unlink()
    (models / "fold_3.pt").unlink()
    (models / "in_progress").mkdir(exist_ok=True)
    (models / "in_progress" / "fold_2.pt").write_bytes(b"not a checkpoint")
    kept = (models / "fold_1.pt").stat().st_mtime_ns

    def resume():  # two workers: a unit's failure inside a pool worker is named too
        return train(tmp_path / "run", None, resume=first.run_id, workers=2)

    with pytest.raises(TimnetError) as failure:
        resume()
    message = str(failure.value)
    assert message.startswith("fold_2: ") and "unreadable per-epoch state" in message and "\n" not in message
    (models / "in_progress" / "fold_2.pt").unlink()
    again = resume()
    assert (models / "fold_1.pt").stat().st_mtime_ns == kept  # fold 1 was loaded, not trained again
    pd.testing.assert_frame_equal(first.folds.drop(columns="train_seconds"), again.folds.drop(columns="train_seconds"))


@pytest.mark.slow
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="finds worker processes through /proc")
def test_killed_worker_fails_the_run_naming_its_fold_and_resume_is_exact(tmp_path, mfcc, uninterrupted_run):
    common = ["--mfcc", str(mfcc), "--folds", str(UNINTERRUPTED["folds"]), "--epochs", str(UNINTERRUPTED["epochs"])]

    def dirs(name):
        return run_dirs(tmp_path, name)

    proc = subprocess.Popen(
        train_cli(*common, "--workers", "2", *dirs("killed")),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.time() + 300  # a start (imports, worker processes) on a loaded machine
    while time.time() < deadline:
        histories = list((tmp_path / "killed" / "L").glob("*/fold_*.csv"))
        if len(histories) == 2 and min(len(pd.read_csv(h)) for h in histories) >= 3:
            break
        time.sleep(0.05)
    victim = pool_workers_of(proc.pid)[0]
    os.kill(victim, signal.SIGKILL)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 2, err
    errors = [line for line in err.splitlines() if line.startswith("timnet: error")]
    assert len(errors) == 1 and f"its worker process {victim} died (killed by signal 9" in errors[0], err
    assert errors[0].startswith("timnet: error: fold_") and "--resume" in errors[0]
    run_id = histories[0].parent.name
    models = tmp_path / "killed" / "M" / run_id
    assert not list(models.glob("fold_*.pt")) and len(list(models.glob("in_progress/fold_*.pt"))) == 2

    subprocess.run(train_cli("--resume", run_id, *dirs("killed")), check=True, capture_output=True)
    assert_same_units(uninterrupted_run, models)


@pytest.mark.slow
def test_compiled_training_matches_eager_and_falls_back_when_compiling_fails(tmp_path, mfcc, monkeypatch):
    import torch._dynamo

    runs, said = {}, []  # every warning, whatever the filters (the helper silences them)
    for mode in ("off", "on"):  # in this process: dynamo's counters show whether compiling happened
        torch._dynamo.reset()
        torch._dynamo.utils.counters.clear()
        said.clear()
        monkeypatch.setattr(warnings, "warn", lambda message, *args, **kwargs: said.append(str(message)))
        runs[mode] = train(tmp_path / mode, mfcc, settings={"model.levels": 2}, folds=2, epochs=2, compile=mode)
        monkeypatch.undo()
        failed = [line for line in said if "torch.compile failed" in line]
        graphs = torch._dynamo.utils.counters["stats"]["unique_graphs"]
        assert (graphs > 0, failed) == (mode == "on", []), (mode, graphs, failed)  # on: compiled, no fallback
    probs = {mode: run.predictions.filter(like="p_").to_numpy() for mode, run in runs.items()}
    assert abs(probs["on"] - probs["off"]).max() < 1e-4

    def fold_1(mode):
        return torch.load(tmp_path / mode / "Models" / runs[mode].run_id / "fold_1.pt", weights_only=True)

    assert [r["loss"] for r in fold_1("on")["history"]] == pytest.approx(
        [r["loss"] for r in fold_1("off")["history"]], rel=1e-4
    )

    # no working C++ compiler and an empty inductor cache: a warning, then exactly the eager numbers (fold 1 only:
    # each unit's failed attempt costs a full trace, and one shows the fallback)
    env = {**os.environ, "CXX": "/nonexistent/c++", "TORCHINDUCTOR_CACHE_DIR": str(tmp_path / "empty_cache")}
    settings = ["--set", "model.levels=2", "--folds", "2", "--only-folds", "1", "--epochs", "2", "--compile", "on"]
    argv = train_cli("--mfcc", str(mfcc), *settings, *run_dirs(tmp_path, "broken"))
    done = subprocess.run(argv, capture_output=True, text=True, env=env)
    assert done.returncode == 0, done.stderr
    assert "torch.compile failed" in done.stderr and "training without compiling" in done.stderr
    fallback = torch.load(next((tmp_path / "broken" / "M").iterdir()) / "fold_1.pt", weights_only=True)
    torch.testing.assert_close(fallback["test_probs"], fold_1("off")["test_probs"], rtol=0, atol=0)


def test_auto_compiles_where_a_workers_units_together_repay_it(tmp_path, mfcc):
    """10 folds x 500 epochs with torch's BLAS: 1 or 2 workers train 5+ units each and compile; 10 workers (one
    unit each) do not; with numpy's BLAS `auto` does not compile; `off` never compiles."""
    from timnet.training.run import decide_execution, prepare_run
    from timnet.training.run_store import Roots

    cfg = load_config("EMODB", {**SHORT, "train.folds": 10, "train.epochs": 500, "train.blas": "torch"})
    run = prepare_run(cfg, mfcc, Roots(*(tmp_path / d for d in "MLR")), device="cpu")
    for workers, expected in ((1, True), (2, True), (10, False)):
        decide_execution(run.jobs, workers)
        assert [j.compile for j in run.jobs] == [expected] * 10, workers
    for job in run.jobs:  # numpy's BLAS: eager (compiling would put the products back on torch's)
        job.config["train"]["blas"] = "numpy"
    decide_execution(run.jobs, 1)
    assert not any(j.compile for j in run.jobs) and {j.blas for j in run.jobs} == {"numpy"}
    for job in run.jobs:
        job.config["train"]["compile"] = "off"
    decide_execution(run.jobs, 1)
    assert not any(j.compile for j in run.jobs)
