"""`train.blas`: whose BLAS runs the CPU causal convolution's products (torch's MKL or numpy's OpenBLAS), chosen
by a measurement cached per machine, and kept by a resumed unit."""

from __future__ import annotations

import json

import pandas as pd
import pytest
import torch
from conftest import assert_same_units, train

from timnet import load_config
from timnet.accel import blas
from timnet.accel.blas import CHOICES, resolve_blas
from timnet.core.errors import TimnetError
from timnet.training import unit as fold


def test_auto_measures_once_per_machine_and_accelerators_use_torch(tmp_path, monkeypatch):
    monkeypatch.setenv("TIMNET_CACHE", str(tmp_path))
    measured = []
    real = blas.measure
    monkeypatch.setattr(blas, "measure", lambda: measured.append(real(rounds=1)) or measured[-1])
    first, second = resolve_blas("auto", "cpu"), resolve_blas("auto", "cpu")
    assert first in CHOICES and [first] == measured and second == first  # the second answer came from the cache
    assert json.loads((tmp_path / "blas.json").read_text()) == {blas.machine_key(): first}
    assert resolve_blas("numpy", "cpu") == "numpy" and resolve_blas("torch", "cpu") == "torch"
    blocked = tmp_path / "a_file"  # a cache that cannot be written (a read-only home): measured, not an error
    blocked.write_text("")
    monkeypatch.setenv("TIMNET_CACHE", str(blocked / "cache"))
    assert resolve_blas("auto", "cpu") in CHOICES and len(measured) == 2
    assert resolve_blas("auto", "cuda:0") == "torch" and resolve_blas("numpy", "mps") == "torch"
    threads = torch.get_num_threads()
    try:  # numpy's BLAS only for a unit on one thread (beside torch's threads, OpenBLAS's wait for cores)
        torch.set_num_threads(2)
        assert blas.unit_blas("numpy") == "torch"
        torch.set_num_threads(1)
        assert blas.unit_blas("numpy") == "numpy" and blas.unit_blas("torch") == "torch"
    finally:
        torch.set_num_threads(threads)
    with pytest.raises(TimnetError, match=r"^train\.blas: must be one of auto, torch, numpy \(got 'mkl'\)"):
        load_config("EMODB", {"train.blas": "mkl"})


@pytest.mark.slow
def test_numpy_products_train_like_torchs_and_a_unit_resumes_with_the_blas_it_started_with(tmp_path, mfcc, monkeypatch):
    """Both BLAS train the same network (float32 rounding apart). A unit interrupted after epoch 2 of a numpy run
    resumes with numpy's products even where the run's settings now say torch: bit for bit the uninterrupted run."""
    default = train(tmp_path / "default", mfcc, folds=2, epochs=1)  # the record holds what `auto` chose
    record = json.loads((tmp_path / "default" / "Models" / default.run_id / "config.json").read_text())
    assert record["config"]["train"]["blas"] == resolve_blas("auto", "cpu")
    whole = train(tmp_path / "whole", mfcc, blas="numpy", folds=2, epochs=4)
    other = train(tmp_path / "torch", mfcc, blas="torch", folds=2, epochs=4)
    losses = [
        pd.read_csv(tmp_path / name / "logs" / run.run_id / "fold_1.csv").loss
        for name, run in (("whole", whole), ("torch", other))
    ]
    assert ((losses[0] - losses[1]).abs() / losses[1]).max() < 1e-3

    original = fold.UnitTrainer.record_epoch

    def stop_at_epoch_three(self, progress, *args):
        row = original(self, progress, *args)
        if progress.epoch == 3:  # epoch 2's state is on disk, epoch 3's is not
            raise KeyboardInterrupt
        return row

    monkeypatch.setattr(fold.UnitTrainer, "record_epoch", stop_at_epoch_three)
    with pytest.raises(KeyboardInterrupt):
        train(tmp_path / "cut", mfcc, blas="numpy", folds=2, epochs=4)
    monkeypatch.setattr(fold.UnitTrainer, "record_epoch", original)
    models = next((tmp_path / "cut" / "Models").iterdir())
    state = torch.load(models / "in_progress" / "fold_1.pt", weights_only=True)
    assert state["blas"] == "numpy" and state["progress"]["epoch"] == 2
    record = models / "config.json"
    record.write_text(record.read_text().replace('"blas": "numpy"', '"blas": "torch"'))
    assert '"blas": "torch"' in record.read_text()
    train(tmp_path / "cut", None, resume=models.name)
    assert_same_units(tmp_path / "whole" / "Models" / whole.run_id, models, units=["fold_1"])
