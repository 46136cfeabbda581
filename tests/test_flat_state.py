"""The per-epoch state file: its tensors flattened into one buffer per dtype (`flat_state`), resumed exactly, and
states written before that format still resume."""

from __future__ import annotations

import zipfile

import pytest
import torch
from conftest import UNINTERRUPTED, assert_same_units, train, train_interrupted

from timnet.training import unit as fold
from timnet.training.flat_state import flatten, unflatten


def test_flatten_round_trips_every_dtype_and_shape_through_torch_save(tmp_path):
    source = {
        "model": {"w": torch.randn(3, 2, 2), "b": torch.zeros(0), "n": torch.tensor(7)},
        "optimizer": {"state": {0: {"step": torch.tensor(3.0), "exp_avg": torch.randn(5).double()}},
                      "param_groups": [{"lr": 0.001, "betas": (0.93, 0.98), "params": [0]}]},
        "masks": [torch.tensor([True, False]), (torch.arange(4, dtype=torch.uint8).view(2, 2), "kept")],
    }  # fmt: skip
    weights = source["model"]["w"].clone()
    flat = flatten(source)
    assert len(flat["buffers"]) == 5  # float32, int64, float64, bool, uint8
    source["model"]["w"].add_(1)  # the flat copy does not follow the live tensors
    torch.save(flat, tmp_path / "s.pt")
    back = unflatten(torch.load(tmp_path / "s.pt", weights_only=True))
    assert back["model"]["w"].shape == (3, 2, 2) and torch.equal(back["model"]["w"], weights)
    assert back["model"]["b"].shape == (0,) and back["model"]["n"].dtype == torch.int64 and int(back["model"]["n"]) == 7
    assert back["optimizer"]["state"][0]["exp_avg"].dtype == torch.float64
    assert torch.equal(back["optimizer"]["state"][0]["exp_avg"], source["optimizer"]["state"][0]["exp_avg"])
    assert back["optimizer"]["param_groups"] == source["optimizer"]["param_groups"]
    assert torch.equal(back["masks"][0], source["masks"][0]) and back["masks"][1][1] == "kept"
    assert torch.equal(back["masks"][1][0], source["masks"][1][0]) and isinstance(back["masks"][1], tuple)
    back["model"]["w"].add_(1)  # each tensor is its own copy, not a view of a shared buffer
    assert torch.equal(back["model"]["b"], torch.zeros(0)) and back["model"]["w"].untyped_storage().size() == 48
    assert unflatten({"model": 1}) == {"model": 1} and unflatten(None) is None


@pytest.mark.slow
@pytest.mark.parametrize("checkpoint", ["last", "best-val"])
def test_a_flat_state_and_an_earlier_unflat_one_resume_to_the_uninterrupted_bits(
    tmp_path, mfcc, monkeypatch, uninterrupted_run, checkpoint
):
    """A run stopped in fold 2's epoch 4: fold 1 finished through flat per-epoch states equals the uninterrupted
    run; fold 2's state (epoch 3) is flat and resumes to the uninterrupted run's bits, and so does the same state
    as torch.save wrote states before `flat_state` (every tensor its own entry)."""
    if checkpoint == "last":
        settings, whole = UNINTERRUPTED, uninterrupted_run
    else:  # best-val: its own, shorter uninterrupted run
        settings = {"folds": 2, "epochs": 8, "checkpoint": checkpoint}
        whole = tmp_path / "whole" / "Models" / train(tmp_path / "whole", mfcc, **settings).run_id

    def at_epoch_four(self, progress, *args):  # fold 1 finished, epoch 3's state is on disk
        return progress.epoch == 4 and self.job.fold == 2

    cut = train_interrupted(
        tmp_path / "cut", mfcc, monkeypatch, fold.UnitTrainer, "record_epoch", at_epoch_four, **settings
    )
    models = tmp_path / "cut" / "Models" / cut
    state = models / "in_progress" / "fold_2.pt"
    with zipfile.ZipFile(state) as pt:
        stored = [n for n in pt.namelist() if "/data/" in n and not n.endswith(".pkl")]
    assert len(stored) <= 8, f"{len(stored)} tensors stored one by one: the state is not flat"
    saved = torch.load(state, weights_only=True)
    assert saved["progress"]["epoch"] == 3 and (saved["progress"]["best"] is not None) == (checkpoint == "best-val")
    assert_same_units(whole, models, units=["fold_1"])

    older = {**saved, "model": unflatten(saved["model"]), "optimizer": unflatten(saved["optimizer"])}
    older["progress"] = {**saved["progress"], "best": unflatten(saved["progress"]["best"])}
    torch.save(older, tmp_path / "older.pt")
    with zipfile.ZipFile(tmp_path / "older.pt") as pt:
        assert len([n for n in pt.namelist() if "/data/" in n]) > 200  # as torch.save wrote it: one entry a tensor

    train(tmp_path / "cut", None, resume=models.name)  # from the flat state
    assert_same_units(whole, models)
    (models / "fold_2.pt").unlink()
    state.parent.mkdir(exist_ok=True)
    (tmp_path / "older.pt").replace(state)
    train(tmp_path / "cut", None, resume=models.name)  # from the earlier format
    assert_same_units(whole, models)
