"""Packed units (`train.pack`): several units trained as one batched model equal each unit trained alone."""

from __future__ import annotations

import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from conftest import SHORT, assert_same_units, train

from timnet import load_config
from timnet.accel.accelerate import accelerate
from timnet.accel.packed_model import PackedTIMNet, resolve_pack
from timnet.core.errors import TimnetError
from timnet.model.network import TIMNet, TIMNetConfig
from timnet.training.step import PackedOptimizer, packed_step

# A bias just before a BatchNorm has no effect in training (the batch mean removes it) and a gradient of float
# noise, which Adam scales to full steps of either sign: such biases (and the running means that absorb them)
# differ between two ways of computing the same network; the network's function does not.
FUNCTIONLESS = ("conv1.bias", "conv2.bias", "running_mean")


def relative_gap(a: dict, b: dict) -> float:
    """||a - b|| / ||a|| over the weights that shape the network's function."""
    keys = [k for k, v in a.items() if v.is_floating_point() and not k.endswith(FUNCTIONLESS)]
    gap = sum(((a[k].double() - b[k].double()) ** 2).sum() for k in keys) ** 0.5
    return float(gap / sum((a[k].double() ** 2).sum() for k in keys) ** 0.5)


def unit_weights(run_dir, unit: str) -> dict:
    return torch.load(run_dir / f"{unit}.pt", weights_only=True)["state_dict"]


def assert_packed_like_alone(tmp_path, alone, packed, units=("fold_1", "fold_2", "fold_3")) -> None:
    """A run trained packed (under tmp_path/packed) against the same run alone (tmp_path/alone): the same
    predictions and validation accuracies each epoch, losses and weights to float32 rounding (which Adam amplifies)."""
    assert alone.predictions.predicted.tolist() == packed.predictions.predicted.tolist()
    a_dir, p_dir = tmp_path / "alone" / "Models" / alone.run_id, tmp_path / "packed" / "Models" / packed.run_id
    for unit in units:
        assert relative_gap(unit_weights(a_dir, unit), unit_weights(p_dir, unit)) < 1e-2, unit
        a_log = pd.read_csv(tmp_path / "alone" / "logs" / alone.run_id / f"{unit}.csv")
        p_log = pd.read_csv(tmp_path / "packed" / "logs" / packed.run_id / f"{unit}.csv")
        assert (a_log.val_acc == p_log.val_acc).all(), unit
        assert ((a_log.loss - p_log.loss).abs() / a_log.loss).max() < 2e-3, unit


def test_resolve_pack_auto_packs_accelerators_only():
    assert resolve_pack("auto", "cpu", 10) == 1
    assert resolve_pack("auto", "cuda:0", 10) == 10 and resolve_pack("auto", "mps", 4) == 4
    assert resolve_pack("3", "cpu", 10) == 3 and resolve_pack("16", "cpu", 5) == 5
    with pytest.raises(TimnetError, match=r"^train\.pack: must be auto or a whole number ≥ 1 \(got '0'\)"):
        load_config("EMODB", {"train.pack": "0"})
    assert load_config("EMODB", {"train.pack": 4}).train.pack == "4"


@pytest.mark.slow
@pytest.mark.parametrize("dtype, steps, tolerance", [(torch.float64, 10, 1e-12), (torch.float32, 4, 1e-5)])
def test_packed_steps_equal_each_unit_stepping_alone(dtype, steps, tolerance):
    """Two units, Adam steps with dropout, each on its own batches and its own dropout stream: the packed model's
    weights, BatchNorm statistics and outputs equal each unit's own training. Measured: 9e-17 relative in float64
    after 20 steps (the same arithmetic); in float32 4e-8 after 4 steps, 5e-6 after 8, 2e-4 after 20: Adam (eps
    1e-8) turns the rounding noise of near-zero gradients into full steps, as it does between any two machines."""
    torch.manual_seed(0)
    cfg = TIMNetConfig.from_config(load_config("EMODB"))
    models = [TIMNet(cfg).to(dtype).train() for _ in range(2)]
    for model in models:  # alone, a unit's convolutions run as GEMMs (`accel.gemm_conv`), as packed ones do
        accelerate(model, blas="torch")
    adam = dict(lr=1e-3, betas=(0.93, 0.98), eps=1e-8)
    opts = [torch.optim.Adam(m.parameters(), **adam) for m in models]
    x = torch.randn(2, steps, 16, 60, 39, dtype=dtype)  # [unit, step, B, T, F]
    y = torch.randint(0, 7, (2, steps, 16))
    pack, streams = PackedTIMNet(models), [torch.Generator().manual_seed(10 + u) for u in range(2)]
    optimizer = PackedOptimizer(pack.params, opts, lambda params: torch.optim.Adam(params, **adam))
    step = packed_step(pack, optimizer, load_config("EMODB").train)  # label smoothing 0.1, as below
    for s in range(steps):
        optimizer.plan((0, 1))
        step(torch.tensor([0, 1]), x[:, s], y[:, s], streams)
    for u, (model, opt) in enumerate(zip(models, opts)):
        torch.manual_seed(10 + u)  # alone, dropout draws from the global generator
        for step in range(steps):
            loss = F.cross_entropy(model(x[u, step]), y[u, step], label_smoothing=0.1)
            opt.zero_grad()
            loss.backward()
            opt.step()
        packed = pack.unit_state(u)
        assert relative_gap(model.state_dict(), packed) < tolerance
        assert optimizer.counts[u] == steps and int(packed["forward_blocks.0.bn1.num_batches_tracked"]) == steps
        twin = TIMNet(cfg).to(dtype)
        twin.load_state_dict(packed)
        probe = torch.randn(8, 60, 39, dtype=dtype)
        with torch.no_grad():
            alone, together = torch.softmax(model.eval()(probe), -1), torch.softmax(twin.eval()(probe), -1)
        assert (alone - together).abs().max() < tolerance


@pytest.mark.slow
def test_a_packed_run_equals_its_units_trained_alone(tmp_path, mfcc):
    """5 folds of uneven size (last batches of 3 and 4 utterances step in two groups) and early stopping on
    validation (units leave the pack at different epochs): each unit's epochs, validation accuracies, checkpoint
    and predictions equal the run trained one unit at a time, its files are the same files, its weights equal to
    float32 rounding, which Adam amplifies over 20 steps (measured: ≤ 1.1e-3 relative here; float64 above shows
    the arithmetic is the same)."""
    common = dict(folds=5, epochs=4, batch_size=16, checkpoint="best-val", patience=1)
    alone = train(tmp_path / "alone", mfcc, pack="1", **common)
    packed = train(tmp_path / "packed", mfcc, pack="5", **common)
    a_dir, p_dir = tmp_path / "alone" / "Models" / alone.run_id, tmp_path / "packed" / "Models" / packed.run_id
    assert sorted(p.name for p in a_dir.iterdir()) == sorted(p.name for p in p_dir.iterdir())
    assert alone.predictions.predicted.tolist() == packed.predictions.predicted.tolist()
    epochs = alone.folds.epoch.tolist()
    assert epochs == packed.folds.epoch.tolist()
    for unit in (f"fold_{k}" for k in range(1, 6)):
        assert relative_gap(unit_weights(a_dir, unit), unit_weights(p_dir, unit)) < 1e-2, unit
        a_log = pd.read_csv(tmp_path / "alone" / "logs" / alone.run_id / f"{unit}.csv")
        p_log = pd.read_csv(tmp_path / "packed" / "logs" / packed.run_id / f"{unit}.csv")
        assert len(a_log) == len(p_log) and (a_log.val_acc == p_log.val_acc).all(), unit
        assert ((a_log.loss - p_log.loss).abs() / a_log.loss).max() < 2e-3, unit


@pytest.mark.slow
def test_an_interrupted_pack_resumes_exactly(tmp_path, mfcc, monkeypatch):
    """A pack stopped after some epochs (its units' per-epoch states on disk) and resumed equals the
    uninterrupted packed run bit for bit; the states are today's, so the run could also resume unpacked."""
    from timnet.training import packed_training as packed

    whole = train(tmp_path / "whole", mfcc, pack="2", folds=2, epochs=4)
    seen = []

    def stop_after_two(self, u, *args):
        row = original(self, u, *args)
        seen.append(u)
        if len(seen) == 4:  # both units have saved epoch 2
            raise KeyboardInterrupt
        return row

    original = packed.Pack.record
    monkeypatch.setattr(packed.Pack, "record", stop_after_two)
    with pytest.raises(KeyboardInterrupt):
        train(tmp_path / "cut", mfcc, pack="2", folds=2, epochs=4)
    monkeypatch.setattr(packed.Pack, "record", original)
    run_id = next((tmp_path / "cut" / "Models").iterdir()).name
    states = sorted((tmp_path / "cut" / "Models" / run_id / "in_progress").glob("fold_*.pt"))
    assert [torch.load(s, weights_only=True)["progress"]["epoch"] for s in states] == [2, 2]
    assert set(torch.load(states[0], weights_only=True)) >= {"model", "optimizer", "torch_rng", "shuffle_rng"}
    train(tmp_path / "cut", None, resume=run_id)
    assert_same_units(tmp_path / "whole" / "Models" / whole.run_id, tmp_path / "cut" / "Models" / run_id)


@pytest.mark.slow
def test_packs_train_in_worker_processes_as_in_this_process(tmp_path, mfcc):
    """Packs of a run go to worker processes as units do (with several GPUs: one pack per GPU at once): 4 units in
    2 packs on 2 workers train what the same packs train one after another here, bit for bit."""
    here = train(tmp_path / "here", mfcc, workers=1, pack="2", folds=4, epochs=2)
    pooled = train(tmp_path / "pool", mfcc, workers=2, pack="2", folds=4, epochs=2)
    assert_same_units(tmp_path / "here" / "Models" / here.run_id, tmp_path / "pool" / "Models" / pooled.run_id)


def test_packs_hold_the_units_of_one_device_and_gpus_take_turns(tmp_path, mfcc, monkeypatch):
    """With units spread over two GPUs (as `plan_jobs` spreads them), `auto` packs each GPU's units together and
    the packs of the GPUs alternate, so the workers (one per GPU) start one pack on each. (No GPU here: the pack
    check, which runs on the GPU, is taken as passed.)"""
    import timnet.training.run
    from timnet.training.run import plan_packs, prepare_run
    from timnet.training.run_store import Roots

    monkeypatch.setattr(timnet.training.run, "packable", lambda cfg, device: None)

    cfg = load_config("EMODB", {**SHORT, "train.folds": 6, "train.epochs": 1, "train.pack": "2"})
    run = prepare_run(cfg, mfcc, Roots(*(tmp_path / d for d in "MLR")), device="cpu")
    for i, job in enumerate(run.jobs):
        job.device = f"cuda:{i % 2}"
    packs = plan_packs([run], run.jobs, "cuda")
    assert [[j.fold for j in pack] for pack in packs] == [[1, 3], [2, 4], [5], [6]]
    assert [{j.device for j in pack} for pack in packs] == [{"cuda:0"}, {"cuda:1"}, {"cuda:0"}, {"cuda:1"}]
    cfg = load_config("EMODB", {**SHORT, "train.folds": 6, "train.epochs": 1})
    run = prepare_run(cfg, mfcc, Roots(*(tmp_path / "auto" / d for d in "MLR")), device="cpu")
    for i, job in enumerate(run.jobs):
        job.device = f"cuda:{i % 2}"
    assert [[j.fold for j in pack] for pack in plan_packs([run], run.jobs, "cuda")] == [[1, 3, 5], [2, 4, 6]]


def test_packed_units_use_torchs_products_and_compile_as_units_alone(tmp_path, mfcc):
    """`decide_execution`, the one place a unit's BLAS and compiling are decided: a pack's units run the pack's own
    batched products (torch's) whatever `train.blas` says; a unit alone keeps numpy's; compiling is the same."""
    from timnet.training.run import decide_execution, plan_packs, prepare_run
    from timnet.training.run_store import Roots

    cfg = load_config("EMODB", {**SHORT, "train.folds": 3, "train.epochs": 2, "train.blas": "numpy", "train.pack": 2})
    run = prepare_run(cfg, mfcc, Roots(tmp_path / "M", tmp_path / "L", tmp_path / "R"), device="cpu")
    packs = plan_packs([run], run.jobs, "cpu")
    assert [len(p) for p in packs] == [2, 1]
    decide_execution(run.jobs, 2, frozenset(j.key for p in packs if len(p) > 1 for j in p))
    assert [j.blas for j in run.jobs] == ["torch", "torch", "numpy"]
    assert [j.compile for j in run.jobs] == [False] * 3
