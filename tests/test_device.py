"""The device self-test: what a user runs on their Mac or GPU before training there.

    python -m pytest -m device --device mps        # or cuda, cuda:1; CI runs it with the default, cpu

On the device under test: the model's forward and backward equal the CPU's to float tolerance, a packed run
equals its units trained alone, a 2-epoch run trains and writes its files, an interrupted unit resumes where it
stopped, and the export of a run trained there predicts with onnxruntime what the run predicted; on CUDA, the
captured (CUDA graph) packed step equals the eager one. Skips, naming the reason, where this machine lacks the
device (`conftest.device`).
"""

from __future__ import annotations

import copy
import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import SHORT, model_config, train

import timnet
from timnet import load_config
from timnet.data.feature_files import load_features
from timnet.model.network import TIMNet
from timnet.training.run import prepare_run
from timnet.training.run_store import Roots
from timnet.training.unit import train_unit

pytestmark = pytest.mark.device

# float32 on another device (other kernels, other summation orders) against the CPU's result
TOLERANCE = 1e-4
# Parameters without effect in training (a bias just before a BatchNorm; see test_packed.FUNCTIONLESS): their
# gradients are float noise, so only their absolute size is compared.
FUNCTIONLESS = ("conv1.bias", "conv2.bias")


def relative(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.double() - b.double()).norm() / a.double().norm())


def unit(run_dir, name: str = "fold_1") -> dict:
    return torch.load(run_dir / f"{name}.pt", weights_only=True)


def test_forward_and_backward_on_the_device_equal_the_cpu(device):
    torch.manual_seed(0)
    cpu_model = TIMNet(model_config(dropout=0.0)).train()  # dropout streams differ between devices; sums must not
    on_device = copy.deepcopy(cpu_model).to(device)
    x, y = torch.randn(16, 188, 39), torch.randint(0, 7, (16,))
    seen = {}
    for name, model in (("cpu", cpu_model), ("device", on_device)):
        logits = model(x.to(device if name == "device" else "cpu"))
        F.cross_entropy(logits, y.to(logits.device), label_smoothing=0.1).backward()
        grads = {n: p.grad.cpu() for n, p in model.named_parameters()}
        seen[name] = logits.detach().cpu(), grads, {n: b.cpu() for n, b in model.named_buffers()}
    (logits, grads, stats), (dev_logits, dev_grads, dev_stats) = seen["cpu"], seen["device"]
    assert relative(logits, dev_logits) < TOLERANCE
    shaping = [n for n in grads if not n.endswith(FUNCTIONLESS)]
    flat = [torch.cat([g[n].flatten() for n in shaping]) for g in (grads, dev_grads)]
    assert relative(*flat) < TOLERANCE
    for n in grads:
        assert (grads[n] - dev_grads[n]).abs().max() < 1e-5, n
    for n, b in stats.items():
        assert torch.allclose(b.double(), dev_stats[n].double(), rtol=TOLERANCE, atol=1e-6), n


@pytest.fixture(scope="module")
def device_run(tmp_path_factory, mfcc, device):
    """A 2-fold, 2-epoch run trained on the device: (root, RunResult)."""
    root = tmp_path_factory.mktemp("device_run")
    return root, train(root, mfcc, device=device, folds=2, epochs=2, batch_size=8)


def test_a_two_epoch_run_trains_on_the_device(device_run):
    root, result = device_run
    run = root / "Models" / result.run_id
    for name in ("fold_1", "fold_2"):
        saved = unit(run, name)
        losses = [row["loss"] for row in saved["history"]]
        assert len(losses) == 2 and losses[1] < losses[0], (name, losses)
        assert saved["test_probs"].shape == (len(saved["test_index"]), 7)
        assert torch.allclose(saved["test_probs"].sum(1), torch.ones(len(saved["test_index"])), atol=1e-5)
    assert not (run / "in_progress").exists()
    assert len(result.predictions) == 84 and result.workbook.is_file()


@pytest.mark.slow
def test_a_packed_run_equals_its_units_trained_alone_on_the_device(tmp_path, mfcc, device):
    runs = {}
    for pack in ("1", "2"):
        result = train(tmp_path / pack, mfcc, device=device, folds=2, epochs=3, pack=pack)
        runs[pack] = tmp_path / pack / "Models" / result.run_id
    for name in ("fold_1", "fold_2"):
        alone, packed = unit(runs["1"], name), unit(runs["2"], name)
        assert [r["epoch"] for r in alone["history"]] == [r["epoch"] for r in packed["history"]]
        assert np.allclose([r["loss"] for r in alone["history"]], [r["loss"] for r in packed["history"]], rtol=1e-4)
        assert torch.equal(alone["test_probs"].argmax(1), packed["test_probs"].argmax(1)), name
        assert (alone["test_probs"] - packed["test_probs"]).abs().max() < 1e-3, name


def test_an_interrupted_unit_resumes_where_it_stopped_on_the_device(tmp_path, mfcc, device):
    """A unit stopped after its 2nd epoch (as by Ctrl-C) continues from its saved state: the same 4 epochs as an
    uninterrupted unit (bit for bit on CPU; on other devices to float tolerance)."""
    cfg = load_config("EMODB", {**SHORT, "train.folds": 2, "train.epochs": 4})

    class Stop(Exception):
        pass

    def stop_after_2(event):
        if event["event"] == "epoch" and event["epoch"] == 2:
            raise Stop

    jobs = {}
    for name in ("whole", "cut"):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            jobs[name] = prepare_run(cfg, mfcc, Roots(*(tmp_path / name / d for d in "MLR")), device=device).jobs[0]
    whole = train_unit(jobs["whole"])
    with pytest.raises(Stop):
        train_unit(jobs["cut"], report=stop_after_2)
    assert torch.load(jobs["cut"].state_path, weights_only=True)["progress"]["epoch"] == 2
    cut = train_unit(jobs["cut"])
    losses = [whole.history.loss.tolist(), cut.history.loss.tolist()]
    a, b = unit(jobs["whole"].paths.models), unit(jobs["cut"].paths.models)
    if device == "cpu":
        assert losses[0] == losses[1] and all(torch.equal(v, b["state_dict"][k]) for k, v in a["state_dict"].items())
    else:
        assert np.allclose(*losses, rtol=1e-5)
        assert all(torch.allclose(v, b["state_dict"][k], rtol=1e-4, atol=1e-6) for k, v in a["state_dict"].items())


@pytest.mark.slow
def test_the_export_of_a_device_trained_run_predicts_what_the_run_did(tmp_path, mfcc, device_run):
    from timnet.serving.export import export_run

    root, result = device_run
    out = export_run(result.run_id, tmp_path / "exported", root / "Models")
    model = timnet.load_model(out, engine="onnx")
    data = load_features(mfcc)
    for k in (1, 2):
        saved = unit(root / "Models" / result.run_id, f"fold_{k}")
        probs = model.predict_proba(data.x[saved["test_index"]], fold=k)
        np.testing.assert_allclose(probs, saved["test_probs"].numpy(), atol=1e-4)


def test_a_captured_pack_trains_what_the_eager_pack_trains(tmp_path, mfcc, device):
    """CUDA graphs (`train.capture`) of the packed step, full and last short batches: the same losses, weights and
    predictions as the same pack stepping eagerly."""
    if not device.startswith("cuda"):
        pytest.skip(f"CUDA graphs need a CUDA device (the self-test runs on {device}: pass --device cuda)")
    from timnet.training.execution import Execution
    from timnet.training.run import run_training
    from timnet.training.run_store import Roots

    runs = {}
    for capture in ("off", "on"):
        cfg = load_config("EMODB", {**SHORT, "train.folds": 3, "train.epochs": 3, "train.capture": capture})
        root = tmp_path / capture
        with warnings.catch_warnings(record=True) as said:
            warnings.simplefilter("always")
            how = Execution(Roots(*(root / d for d in "MLR")), device=device, progress=False)
            result = run_training(cfg, mfcc, how)
        assert not [w for w in said if "capture failed" in str(w.message)]  # it fell back to eager steps
        runs[capture] = root / "M" / result.run_id
    for name in ("fold_1", "fold_2", "fold_3"):
        eager, captured = unit(runs["off"], name), unit(runs["on"], name)
        assert np.allclose([r["loss"] for r in eager["history"]], [r["loss"] for r in captured["history"]], rtol=1e-5)
        assert torch.equal(eager["test_probs"].argmax(1), captured["test_probs"].argmax(1)), name
        for key, value in eager["state_dict"].items():
            assert torch.allclose(value, captured["state_dict"][key], rtol=1e-4, atol=1e-6), (name, key)
