"""Augmentation as settings of the one training step (`step.augment`): SpecAugment-style time and coefficient masks
and mixup, drawn from each unit's own generator; off by default (the authors' recipe, bit for bit), reproducible
from the seed, exact on resume, the same pooled and packed as alone."""

from __future__ import annotations

import os
import signal
import subprocess
import time

import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from conftest import assert_same_units, train, train_cli, train_interrupted

from timnet import load_config
from timnet.core.config import Config
from timnet.core.errors import TimnetError
from timnet.training.augmentation import augment, augmentation_seed
from timnet.training.packed_training import reference_model
from timnet.training.step import step_declines, trained_both_ways, unit_step

# Every augmentation on, strong enough to change what a short run learns.
AUGMENT = {"time_masks": 2, "time_mask_width": 8, "coefficient_masks": 2, "coefficient_mask_width": 6, "mixup": 0.4}


def settings(**train):
    return load_config("EMODB", {f"train.{k}": v for k, v in train.items()}).train


def batch(b: int = 6, frames: int = 30, coefficients: int = 39, seed: int = 0):
    draw = torch.Generator().manual_seed(seed)
    return torch.randn(b, frames, coefficients, generator=draw, dtype=torch.float64), torch.arange(b) % 7


def runs(a) -> list[tuple[int, int]]:
    """(start, width) of the runs of True in a 1-D bool tensor."""
    found, start = [], None
    for i, on in enumerate([*a.tolist(), False]):
        if on and start is None:
            start = i
        if not on and start is not None:
            found.append((start, i - start))
            start = None
    return found


def test_masks_land_where_the_generator_says_within_their_widths():
    """Per utterance, masked frames (every coefficient changed) and masked coefficients (every frame changed) are
    what the generator draws, in the documented order (time masks' widths then starts, then the coefficients'),
    each span at most its width, set to the utterance's mean per coefficient; nothing else changes."""
    t = settings(time_masks=2, time_mask_width=5, coefficient_masks=1, coefficient_mask_width=3)
    x, y = batch()
    out, mix = augment(x, y, t, torch.Generator().manual_seed(7))
    assert mix is None and out.shape == x.shape
    draw = torch.Generator().manual_seed(7)
    expected = []
    for size, count, width in ((30, 2, 5), (39, 1, 3)):
        widths = torch.randint(0, width + 1, (6, count), generator=draw)
        starts = (torch.rand(6, count, generator=draw, dtype=torch.float64) * (size - widths + 1)).long()
        expected.append((widths, starts))
    changed = out != x
    frames, coefficients = changed.all(2), changed.all(1)  # [B, T], [B, F]
    assert torch.equal(changed, frames[:, :, None] | coefficients[:, None, :])
    mean = x.mean(1, keepdim=True).expand_as(x)
    assert torch.equal(out[changed], mean[changed])
    for i in range(6):
        for (widths, starts), masked, size in zip(expected, (frames[i], coefficients[i]), (30, 39)):
            want = torch.zeros(size, dtype=torch.bool)
            for w, s in zip(widths[i].tolist(), starts[i].tolist()):
                assert 0 <= w <= (5 if size == 30 else 3) and 0 <= s and s + w <= size
                want[s : s + w] = True
            assert torch.equal(masked, want), i
            assert all(w <= 2 * (5 if size == 30 else 3) for _, w in runs(masked))  # two masks may touch
    assert frames.any() and coefficients.any()


def test_mask_widths_cover_zero_to_their_bound_uniformly():
    """Widths are drawn uniformly in 0..width: over many utterances every width occurs, none beyond, none wider
    than the utterance."""
    t = settings(time_masks=1, time_mask_width=4)
    x, y = batch(b=400, frames=12, coefficients=3)
    out, _ = augment(x, y, t, torch.Generator().manual_seed(1))
    widths = (out != x).all(2).sum(1)
    counts = torch.bincount(widths, minlength=5)
    assert len(counts) == 5 and (counts > 50).all()
    wide = settings(time_masks=1, time_mask_width=50)  # wider than the utterance: at most all of it
    out, _ = augment(x[:50], y[:50], wide, torch.Generator().manual_seed(2))
    assert (out != x[:50]).all(2).sum(1).max() <= 12


def test_augmentation_is_reproducible_from_the_seed_and_off_draws_nothing():
    t = settings(**AUGMENT)
    x, y = batch()
    first, mix_a = augment(x, y, t, torch.Generator().manual_seed(3))
    again, mix_b = augment(x, y, t, torch.Generator().manual_seed(3))
    other, mix_c = augment(x, y, t, torch.Generator().manual_seed(4))
    assert torch.equal(first, again) and torch.equal(mix_a[0], mix_b[0]) and torch.equal(mix_a[1], mix_b[1])
    assert not torch.equal(first, other)
    off = torch.Generator().manual_seed(3)
    before = off.get_state()
    out, mix = augment(x, y, settings(), off)
    assert out is x and mix is None and torch.equal(off.get_state(), before)
    # a unit's augmentation stream is its own: not its shuffling's (the same seed), not another unit's
    seeds = [augmentation_seed(s) for s in (46046001, 46046002, 47047001)]
    assert len(set(seeds)) == 3 and 46046001 not in seeds
    assert augmentation_seed(46046001) == augmentation_seed(46046001)


def test_mixup_mixes_pairs_and_its_loss_is_the_hand_formula():
    """The batch is lambda x + (1 - lambda) x[partners] (partners a permutation, lambda in (0, 1)); the step's loss
    is lambda CE(y) + (1 - lambda) CE(y[partners]), each with the label smoothing and class weights, written out
    here from log-softmax: torch's weighted mean divides by the batch's summed label weights."""
    t = settings(mixup=0.4, label_smoothing=0.1, class_weights="balanced")
    x, y = batch(b=8)
    y = torch.tensor([0, 0, 0, 1, 2, 3, 3, 6])
    weight = torch.linspace(0.5, 2.0, 7, dtype=torch.float64)
    out, (partners, lam) = augment(x, y, t, torch.Generator().manual_seed(5))
    draw = torch.Generator().manual_seed(5)
    torch.rand((), generator=draw, dtype=torch.float64)  # lambda's uniform
    order = torch.randperm(8, generator=draw)
    assert torch.equal(partners, y[order]) and 0 < float(lam) < 1
    assert torch.equal(out, lam * x + (1 - lam) * x[order])

    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(30 * 39, 7)).double()
    opt = torch.optim.SGD(model.parameters(), lr=0.0)
    logits, value = unit_step(model, opt, x, y, weight, t, torch.Generator().manual_seed(5))

    def by_hand(labels):
        logp = torch.log_softmax(logits, -1)
        eps, k = 0.1, 7
        per = (1 - eps) * weight[labels] * -logp.gather(1, labels[:, None])[:, 0] + eps / k * -(logp * weight).sum(1)
        return per.sum() / weight[labels].sum()

    hand = lam * by_hand(y) + (1 - lam) * by_hand(y[order])
    assert abs(float(value) - float(hand)) < 1e-12
    plain = F.cross_entropy(logits, y, weight=weight, label_smoothing=0.1)
    assert abs(float(plain) - float(by_hand(y))) < 1e-12  # the hand formula is torch's smoothed, weighted CE


def test_augmentation_settings_are_checked_and_default_off():
    t = settings()
    assert (t.time_masks, t.coefficient_masks, t.mixup) == (0, 0, 0.0)
    for key, value, message in [
        ("time_masks", -1, r"^train\.time_masks: must be ≥ 0 \(got -1\)"),
        ("coefficient_mask_width", 2.5, r"^train\.coefficient_mask_width: must be an integer \(got 2\.5\)"),
        ("mixup", -0.2, r"^train\.mixup: must be ≥ 0 \(got -0\.2\)"),
        ("mixup", "yes", r"^train\.mixup: 'yes' is not a number"),
    ]:
        with pytest.raises(TimnetError, match=message):
            settings(**{key: value})
    data = load_config("EMODB").to_dict()  # the record of a run from before augmentation: defaults fill in
    for key in ("time_masks", "time_mask_width", "coefficient_masks", "coefficient_mask_width", "mixup"):
        del data["train"][key]
    assert Config.from_dict(data).train == load_config("EMODB").train


def test_default_step_is_the_plain_step_bit_for_bit():
    """With the defaults a unit's step is the authors' (forward, smoothed CE, Adam), to the bit, and its
    augmentation generator is left as it was: a default run trains what it trained before augmentation existed."""
    cfg = load_config("EMODB")
    x, y = batch(b=4, frames=24)
    models = [reference_model(cfg, "cpu").double() for _ in range(2)]
    models[1].load_state_dict(models[0].state_dict())
    opts = [torch.optim.Adam(m.parameters(), lr=1e-3, betas=(0.93, 0.98), eps=1e-8) for m in models]
    generator = torch.Generator().manual_seed(9)
    state = generator.get_state()
    with torch.random.fork_rng():
        torch.manual_seed(0)
        _, value = unit_step(models[0], opts[0], x, y, None, cfg.train, generator)
        torch.manual_seed(0)
        plain = F.cross_entropy(models[1](x), y, label_smoothing=0.1)
        opts[1].zero_grad()
        plain.backward()
        opts[1].step()
    assert torch.equal(value, plain.detach()) and torch.equal(generator.get_state(), state)
    for a, b in zip(models[0].state_dict().values(), models[1].state_dict().values()):
        assert torch.equal(a, b)


def test_packed_augmented_steps_equal_each_unit_alone_in_float64():
    """`step_declines`' own check, with every augmentation on and balanced class weights: two units packed, each
    drawing its masks and mixup from its own generator, end where each alone ends (float64), so a pack trains."""
    cfg = load_config("EMODB", {f"train.{k}": v for k, v in {**AUGMENT, "class_weights": "balanced"}.items()})
    from timnet.accel.check import largest_difference

    model = reference_model(cfg, "cpu")
    alone, packed = trained_both_ways(model, cfg.train, torch.device("cpu"))
    assert largest_difference(alone, packed) < 1e-12
    assert step_declines(model, cfg.train, torch.device("cpu")) is None
    plain, _ = trained_both_ways(model, settings(class_weights="balanced"), torch.device("cpu"))
    assert largest_difference(alone, plain) > 1e-3  # the augmentation changed the steps


@pytest.mark.slow
def test_a_packed_run_of_every_new_setting_stopped_and_resumed_is_exact(tmp_path, mfcc, monkeypatch):
    """Every augmentation on, speaker normalisation, best-val tested every epoch (which keeps the best-test
    epoch's predictions), packed, stopped (as Ctrl-C) after epoch 2 of 4: the per-epoch state holds the augmentation
    generator, moved by its draws, and the best-test extra; resumed, the run ends bit for bit where the
    uninterrupted run ends, its best-test extra too, which is the first best test epoch and that of the units
    trained alone. (Alone and in worker processes, killed: the kill -9 test below.)"""
    from timnet.training import packed_training

    common = dict(folds=2, epochs=4, checkpoint="best-val", protocol="speaker", test_every=1, normalize="speaker")
    common |= AUGMENT
    whole = train(tmp_path / "whole", mfcc, pack="2", **common)
    seen = []
    cls, method, stop = packed_training.Pack, "record", lambda self, u, *args: seen.append(u) or len(seen) == 4
    run_id = train_interrupted(tmp_path / "cut", mfcc, monkeypatch, cls, method, stop, pack="2", **common)
    states = sorted((tmp_path / "cut" / "Models" / run_id / "in_progress").glob("fold_*.pt"))
    saved = torch.load(states[0], weights_only=True)
    assert saved["progress"]["epoch"] == 2 and saved["progress"]["best_test"]["epoch"] in (1, 2)
    unmoved = torch.Generator().manual_seed(augmentation_seed(46 * 1000 + 1)).get_state()
    assert not torch.equal(saved["augment_rng"], unmoved)  # augmentation drew from it
    train(tmp_path / "cut", None, resume=run_id)
    assert_same_units(tmp_path / "whole" / "Models" / whole.run_id, tmp_path / "cut" / "Models" / run_id)
    alone = train(tmp_path / "alone", mfcc, pack="1", **common)
    for name in ("fold_1", "fold_2"):
        packed, apart = (
            torch.load(tmp_path / where / "Models" / run / f"{name}.pt", weights_only=True)["also"]["best-test"]
            for where, run in (("whole", whole.run_id), ("alone", alone.run_id))
        )
        history = pd.read_csv(tmp_path / "whole" / "logs" / whole.run_id / f"{name}.csv")
        assert packed["epoch"] == int(history.test_acc.idxmax()) + 1 == apart["epoch"], name
        assert torch.allclose(packed["test_probs"], apart["test_probs"], atol=1e-3), name


@pytest.mark.slow
def test_a_state_from_before_augmentation_resumes_exactly(tmp_path, mfcc, monkeypatch):
    """A per-epoch state written before augmentation existed (no augmentation generator in it) still resumes, bit
    for bit, a run with the default (off) settings."""
    from timnet.training import unit

    common = dict(folds=2, epochs=3)
    whole = train(tmp_path / "whole", mfcc, **common)
    stop = lambda self, progress: progress.epoch == 1  # noqa: E731
    run_id = train_interrupted(tmp_path / "cut", mfcc, monkeypatch, unit.UnitTrainer, "save", stop, **common)
    for state in (tmp_path / "cut" / "Models" / run_id / "in_progress").glob("fold_*.pt"):
        saved = torch.load(state, weights_only=True)
        del saved["augment_rng"]
        torch.save(saved, state)
    train(tmp_path / "cut", None, resume=run_id)
    assert_same_units(tmp_path / "whole" / "Models" / whole.run_id, tmp_path / "cut" / "Models" / run_id)


@pytest.mark.slow
def test_an_augmented_run_killed_and_resumed_is_exact(tmp_path, mfcc):
    """`timnet train` with every augmentation on, in 2 worker processes, killed with SIGKILL mid-run (its workers
    with it), resumed (here, as `--resume` does): the same bits as the run trained uninterrupted in this process
    (so pooled units train as alone, too)."""
    epochs = 6
    aug = [f"train.{k}={v}" for k, v in AUGMENT.items()]
    common = ["--mfcc", str(mfcc), "--folds", "2", "--epochs", str(epochs), "--workers", "2"]
    common += [a for s in aug for a in ("--set", s)]
    whole = train(tmp_path / "whole", mfcc, folds=2, epochs=epochs, **AUGMENT)
    killed = tmp_path / "killed"
    dirs = ["--models", str(killed / "Models"), "--logs", str(killed / "logs"), "--results", str(killed / "Results")]
    proc = subprocess.Popen(train_cli(*common, *dirs), stderr=subprocess.DEVNULL)
    deadline, history = time.time() + 300, None
    while time.time() < deadline and proc.poll() is None:
        found = list((killed / "logs").glob("*/fold_1.csv"))
        if found and len(pd.read_csv(found[0])) >= 3:
            history = found[0]
            break
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert history is not None, "the run never got going"
    models = killed / "Models" / history.parent.name
    assert not (models / "fold_2.pt").exists(), "the kill came too late to test anything"
    time.sleep(1)  # orphaned workers stop within a second (tests/test_train.py checks that they do)
    train(killed, None, resume=models.name)
    assert_same_units(tmp_path / "whole" / "Models" / whole.run_id, models)


@pytest.mark.slow
def test_augmented_units_train_packed_as_alone(tmp_path, mfcc):
    """Every augmentation on, packed: the same epochs' validation accuracies and predictions, losses and weights to
    float32 rounding (tests/test_packed.py) as each unit trained alone."""
    from test_packed import assert_packed_like_alone

    common = dict(folds=2, epochs=3, batch_size=16, checkpoint="best-val", **AUGMENT)
    alone = train(tmp_path / "alone", mfcc, pack="1", **common)
    packed = train(tmp_path / "packed", mfcc, pack="2", **common)
    assert_packed_like_alone(tmp_path, alone, packed, ("fold_1", "fold_2"))


def test_the_packing_verdict_follows_a_change_of_the_packed_augmentation(monkeypatch):
    """`step_declines` remembers its verdict per process, keyed by the code its check runs: a packed augmentation
    that no longer draws each unit's batch from that unit's own generator is checked again, and declined."""
    from timnet.training import step as training_step

    cfg = load_config("EMODB", {f"train.{k}": v for k, v in AUGMENT.items()})
    model = reference_model(cfg, "cpu")
    assert step_declines(model, cfg.train, torch.device("cpu")) is None
    packed = training_step.augment_pack

    def swapped(x, y, t, generators):  # each unit's batch from the other unit's generator
        return packed(x, y, t, generators[::-1])

    monkeypatch.setattr(training_step, "augment_pack", swapped)
    assert "away from each unit's own" in (step_declines(model, cfg.train, torch.device("cpu")) or "")
