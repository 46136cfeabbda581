"""One training step (`training.step`): the loss, optimiser and schedule set in [train] train packed units as they
train each unit alone (float64, past the schedule's change points), a step packing cannot compute declines in one
line, and a unit resumes exactly with its schedule."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from conftest import assert_same_units, model_config, train, train_interrupted

from timnet import load_config
from timnet.accel.packed_model import PackedTIMNet
from timnet.core.errors import TimnetError
from timnet.model.network import TIMNet
from timnet.training import step as training_step
from timnet.training.step import check_epochs, class_weights, next_epoch, packed_optimizer, packed_step, step_declines

# A bias just before a BatchNorm has a gradient of rounding noise, which Adam turns into steps of either sign (with
# coupled weight decay, growing): such biases and the running means that absorb them differ between two ways of
# computing the same network; its function does not (tests/test_packed.py).
FUNCTIONLESS = ("conv1.bias", "conv2.bias", "running_mean")
EPOCHS = 7  # the step schedule changes at 3 and 6, the cosine one every epoch to its last
CASES = {
    "adamw with weight decay": {"train.optimizer": "adamw", "train.weight_decay": 0.05},
    "adam with weight decay": {"train.weight_decay": 0.05},
    "balanced class weights": {"train.class_weights": "balanced"},
    "step schedule": {"train.lr_schedule": "step", "train.lr_step_size": 3, "train.lr_gamma": 0.5},
    "cosine schedule": {"train.lr_schedule": "cosine", "train.lr_min": 1e-4},
}


def settings(**changes):
    return load_config("EMODB", {"train.epochs": EPOCHS, "train.lr": 1e-2, **changes}).train


def torch_alone(model: TIMNet, t, x, y, seed: int) -> tuple[list, list]:
    """A unit trained by torch's own classes as the settings name them (not through `training.step`): one step per
    epoch, the schedule after each; (losses, learning rates)."""
    kind = {"adam": torch.optim.Adam, "adamw": torch.optim.AdamW}[t.optimizer]
    opt = kind(model.parameters(), lr=t.lr, betas=(t.beta1, t.beta2), eps=t.eps, weight_decay=t.weight_decay)
    schedule = {
        "step": lambda: torch.optim.lr_scheduler.StepLR(opt, t.lr_step_size, t.lr_gamma),
        "cosine": lambda: torch.optim.lr_scheduler.CosineAnnealingLR(opt, t.epochs, t.lr_min),
    }.get(t.lr_schedule, lambda: None)()
    counts = torch.bincount(y.flatten(), minlength=4).double()
    weight = len(y.flatten()) / (4 * counts) if t.class_weights == "balanced" else None
    losses, rates = [], []
    torch.manual_seed(seed)
    for epoch in range(t.epochs):
        rates.append(opt.param_groups[0]["lr"])
        loss = F.cross_entropy(model(x[epoch]), y[epoch], weight=weight, label_smoothing=t.label_smoothing)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.detach())
        if schedule:
            schedule.step()
    return losses, rates


@pytest.mark.parametrize("case", CASES)
def test_each_setting_trains_packed_as_each_unit_alone(case):
    """Two units of a small TIM-Net, float64, their own data (so their own balanced weights) and dropout streams,
    EPOCHS epochs of one step: packed through `training.step` (one torch optimiser over the stacked parameters,
    each unit's own schedule) they end where torch's classes end for each unit alone."""
    t = settings(**CASES[case])
    torch.manual_seed(0)
    model = TIMNet(model_config(n_classes=4, levels=2)).double().train()
    draw = torch.Generator().manual_seed(5)
    x = torch.randn(2, EPOCHS, 6, 20, 39, generator=draw, dtype=torch.float64)
    y = torch.stack(
        [torch.randint(0, 4, (EPOCHS, 6), generator=draw), (torch.arange(EPOCHS * 6).view(EPOCHS, 6) % 6).clamp(max=3)]
    )
    alone_models = [copy.deepcopy(model) for _ in range(2)]
    alone = [torch_alone(alone_models[u], t, x[u], y[u], seed=10 + u) for u in range(2)]
    models = [copy.deepcopy(model) for _ in range(2)]
    opts = [training_step.make_optimizer(m.parameters(), t, torch.device("cpu")) for m in models]
    schedules = [training_step.make_schedule(opt, t) for opt in opts]
    packed = PackedTIMNet(models)
    optimizer = packed_optimizer(packed, opts, t, torch.device("cpu"))
    weights = [class_weights(t, y[u].flatten(), 4, torch.float64) for u in range(2)]
    step = packed_step(packed, optimizer, t, None if weights[0] is None else torch.stack(weights))
    streams = [torch.Generator().manual_seed(10 + u) for u in range(2)]
    losses, rates = [], []
    for epoch in range(EPOCHS):
        optimizer.follow(opts[0])
        rates.append(optimizer.opt.param_groups[0]["lr"])
        optimizer.plan((0, 1))
        losses.append(step(torch.arange(2), x[:, epoch], y[:, epoch], streams)[0])
        for schedule in schedules:
            next_epoch(schedule)
    assert rates == pytest.approx(alone[0][1], rel=1e-15)
    if "schedule" in case:
        assert len(set(rates)) >= 3, rates  # the learning rate did move, past its changes
    for u, (want_losses, _) in enumerate(alone):
        torch.testing.assert_close(torch.stack([loss[u] for loss in losses]), torch.stack(want_losses))
    for u in range(2):
        got = packed.unit_state(u)
        for name, value in alone_models[u].state_dict().items():
            if name.endswith(FUNCTIONLESS) and "blocks." in name:
                continue
            torch.testing.assert_close(got[name], value, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("case", CASES)
def test_the_packing_check_passes_every_setting_over_its_change_points(case):
    t = settings(**CASES[case])
    points = check_epochs(t)
    if case == "step schedule":
        assert {2, 3, 5, 6} <= set(points)
    if case == "cosine schedule":
        assert EPOCHS - 1 in points
    torch.manual_seed(0)
    model = TIMNet(model_config(n_classes=4, levels=2))
    assert step_declines(model, t, torch.device("cpu")) is None


class NormalisedSGD(torch.optim.Optimizer):
    """A researcher's own optimiser: each tensor's step is its gradient over the gradient's norm (not elementwise:
    packed, the norm would be over every unit's gradient at once)."""

    def __init__(self, params, lr=1e-2, **ignored):
        super().__init__(params, {"lr": lr})

    @torch.no_grad()
    def step(self, closure=None):
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is not None:
                    p -= group["lr"] * p.grad / (p.grad.norm() + 1e-12)


def test_an_optimiser_packing_cannot_compute_declines_in_one_line(monkeypatch):
    monkeypatch.setitem(training_step.OPTIMIZERS, "adam", NormalisedSGD)
    torch.manual_seed(0)
    model = TIMNet(model_config(n_classes=4, levels=2))
    reason = step_declines(model, settings(), torch.device("cpu"))
    assert reason and len(reason.splitlines()) == 1 and "away from each unit's own" in reason, reason


def test_a_run_declines_packing_for_it_and_trains_unit_by_unit(tmp_path, mfcc, monkeypatch):
    from timnet.accel.accelerate import FastPathDeclined

    monkeypatch.setitem(training_step.OPTIMIZERS, "adam", NormalisedSGD)
    with pytest.warns(FastPathDeclined, match=r"^timnet: packed units step aside: packed steps of adam end "):
        from timnet.training.execution import Execution
        from timnet.training.run import run_training
        from timnet.training.run_store import Roots

        overrides = {"features.signal_length": 16000, "model.levels": 2, "train.folds": 2, "train.epochs": 1}
        overrides["train.pack"] = "2"
        cfg = load_config("EMODB", overrides)
        how = Execution(Roots(*(tmp_path / d for d in "MLR")), device="cpu", workers=1, threads=1)
        run = run_training(cfg, mfcc, how)
    assert len(run.folds) == 2


@pytest.mark.parametrize(
    "key, value, line",
    [
        ("train.optimizer", "sgd", "train.optimizer: must be one of adam, adamw (got 'sgd')"),
        ("train.class_weights", "inverse", "train.class_weights: must be one of none, balanced (got 'inverse')"),
        ("train.lr_schedule", "linear", "train.lr_schedule: must be one of none, step, cosine (got 'linear')"),
        ("train.weight_decay", -0.1, "train.weight_decay: must be ≥ 0 (got -0.1)"),
        ("train.lr_step_size", 0, "train.lr_step_size: must be ≥ 1 (got 0)"),
        ("train.lr_gamma", 0.0, "train.lr_gamma: must be > 0 (got 0.0)"),
        ("train.lr_min", -1e-3, "train.lr_min: must be ≥ 0 (got -0.001)"),
    ],
)
def test_a_bad_step_setting_is_one_line_naming_it_and_what_it_allows(key, value, line):
    with pytest.raises(TimnetError) as caught:
        load_config("EMODB", {key: value})
    assert str(caught.value) == line


def test_the_defaults_are_the_authors_step():
    t = load_config("EMODB").train
    assert (t.optimizer, t.weight_decay, t.class_weights, t.lr_schedule) == ("adam", 0.0, "none", "none")
    opt = training_step.make_optimizer([torch.nn.Parameter(torch.zeros(2))], t, torch.device("cpu"))
    assert type(opt) is torch.optim.Adam and opt.defaults["betas"] == (0.93, 0.98) and opt.defaults["lr"] == 1e-3
    assert training_step.make_schedule(opt, t) is None


@pytest.mark.slow
def test_a_unit_with_a_schedule_resumes_exactly(tmp_path, mfcc, monkeypatch):
    """Stopped after epoch 2 of 4 (its per-epoch state on disk: the optimiser's and the schedule's), resumed, a unit
    with AdamW, balanced class weights and a step schedule changing at epoch 2 ends bit for bit where the
    uninterrupted run ends."""
    from timnet.training import unit

    step = {"optimizer": "adamw", "weight_decay": 0.01, "class_weights": "balanced", "lr_schedule": "step"}
    common = dict(folds=2, epochs=4, lr_step_size=2, lr_gamma=0.5, **step)
    whole = train(tmp_path / "whole", mfcc, **common)
    after_two = lambda self, progress: progress.epoch == 2  # noqa: E731
    run_id = train_interrupted(tmp_path / "cut", mfcc, monkeypatch, unit.UnitTrainer, "save", after_two, **common)
    state = next((tmp_path / "cut" / "Models" / run_id / "in_progress").glob("fold_*.pt"))
    saved = torch.load(state, weights_only=True)
    assert saved["schedule"]["last_epoch"] == 2 and saved["schedule"]["_last_lr"] == [pytest.approx(5e-4)]
    train(tmp_path / "cut", None, resume=run_id)
    assert_same_units(tmp_path / "whole" / "Models" / whole.run_id, tmp_path / "cut" / "Models" / run_id)


@pytest.mark.slow
def test_a_packed_run_with_every_step_setting_equals_its_units_alone(tmp_path, mfcc):
    """Through `timnet train`'s own machinery (`training.packed_training`): AdamW with weight decay, balanced class
    weights and a step schedule changing every epoch, 3 folds packed and alone: the same epochs' losses (float32
    rounding, which Adam amplifies: tests/test_packed.py), the same validation accuracies and predictions."""
    from test_packed import assert_packed_like_alone

    step = {"optimizer": "adamw", "weight_decay": 0.01, "class_weights": "balanced", "lr_schedule": "step"}
    common = dict(folds=3, epochs=3, batch_size=16, checkpoint="best-val", lr_step_size=1, lr_gamma=0.5, **step)
    alone = train(tmp_path / "alone", mfcc, pack="1", **common)
    packed = train(tmp_path / "packed", mfcc, pack="3", **common)
    assert_packed_like_alone(tmp_path, alone, packed)


@pytest.mark.slow
@pytest.mark.parametrize("schedule", ["none", "step"])
def test_a_pack_stopped_between_its_units_resumes_with_its_schedule(tmp_path, mfcc, monkeypatch, schedule):
    """Stopped when one unit had saved epoch 2 and the other epoch 1, the pack resumes: without a schedule both step
    together again; with one changing at epoch 2 their learning rates differ, so the late unit catches up alone (a
    pack of one), then both step together. The early unit ends bit for bit where the uninterrupted pack ends; the
    late one to float32 rounding (so it did before schedules: its catching-up epoch runs in another pack)."""
    from test_packed import relative_gap, unit_weights

    from timnet.training import packed_training

    common = dict(pack="2", folds=2, epochs=4, lr_schedule=schedule, lr_step_size=2, lr_gamma=0.5)
    whole = train(tmp_path / "whole", mfcc, **common)
    seen = []

    def between(self, u, *args):  # unit 0 has saved epoch 2, unit 1 epoch 1
        seen.append(u)
        return len(seen) == 3

    run_id = train_interrupted(tmp_path / "cut", mfcc, monkeypatch, packed_training.Pack, "record", between, **common)
    states = sorted((tmp_path / "cut" / "Models" / run_id / "in_progress").glob("fold_*.pt"))
    assert [torch.load(s, weights_only=True)["progress"]["epoch"] for s in states] == [2, 1]
    train(tmp_path / "cut", None, resume=run_id)
    a_dir, b_dir = tmp_path / "whole" / "Models" / whole.run_id, tmp_path / "cut" / "Models" / run_id
    assert_same_units(a_dir, b_dir, ["fold_1"])
    assert relative_gap(unit_weights(a_dir, "fold_2"), unit_weights(b_dir, "fold_2")) < 1e-4
