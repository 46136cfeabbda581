"""Training over folds on synthetic audio: files written, protocols, learning, resume after kill -9."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import UNINTERRUPTED, assert_same_units, pixels_of, pool_workers_of, proc_stat, run_dirs, train
from conftest import train_cli as cli
from sklearn.model_selection import KFold

from timnet import load_config
from timnet.analysis.tsne import run_embeddings
from timnet.core.errors import TimnetError
from timnet.core.report import SUMMARY_NAME
from timnet.data.corpora import canonical_stems
from timnet.data.feature_files import load_features
from timnet.data.splits import make_folds, speaker_folds, validation_split
from timnet.model.inference import infer
from timnet.serving.loading import load_model


@pytest.mark.slow
def test_two_fold_two_epoch_run_writes_every_output(tmp_path, mfcc):
    from matplotlib import colormaps

    before = np.load(mfcc, allow_pickle=True).item()["y"].copy()
    run = train(tmp_path, mfcc, folds=2, epochs=2)
    models, logs = tmp_path / "Models" / run.run_id, tmp_path / "logs" / run.run_id
    for k in (1, 2):
        saved = torch.load(models / f"fold_{k}.pt", weights_only=True)
        assert saved["fold"] == k and saved["epoch"] == 2 and saved["config"]["train"]["epochs"] == 2
        assert set(saved["metrics"]) == {"war", "uar", "f1"} and len(saved["test_stems"]) == 42
        assert saved["test_probs"].shape == (42, 7)
        torch.testing.assert_close(saved["test_probs"].sum(1), torch.ones(42))
        history = pd.read_csv(logs / f"fold_{k}.csv")
        assert list(history.columns) == ["epoch", "loss", "train_acc", "lr", "val_acc", "test_acc"] and list(
            history.epoch
        ) == [1, 2]
        assert pixels_of(logs / f"fold_{k}.png", "C0") > 200, "fold curves: the train loss/accuracy not drawn"
    assert not (models / "in_progress").exists(), "per-epoch state (and its folder) go once every unit is done"
    assert (models / "config.json").is_file() and (logs / "config.json").is_file()
    assert run.confusion_png == tmp_path / "Results" / run.run_id / "confusion.png"
    assert pixels_of(logs / "curves.png", "C0") > 200, "curves.png (every fold's curves): train accuracy not drawn"

    book = pd.read_excel(run.workbook, sheet_name=None)
    assert list(book) == [
        *("folds", "predictions", "confusion", "confusion_per_fold"),
        *("leakage", "speakers", "calibration", "reliability", "config"),  # audit, per speaker, calibration
    ]
    leakage = book["leakage"]  # the authors' random folds: every test utterance's speaker and text are in training
    assert leakage.iloc[-1].fold == "total" and leakage.iloc[-1].shared_speaker == leakage.iloc[-1].n_test == 84
    assert leakage.iloc[-1].shared_sentence == 84 and leakage.iloc[-1].identical_audio == 0
    assert run.summary["leakage"].endswith("84/84 share a speaker, 84/84 a sentence, 0/84 identical audio")
    folds = book["folds"]
    assert list(folds.fold[:2]) == [1, 2] and list(folds.fold[2:]) == ["mean", "std"]
    assert folds.war[2] == pytest.approx(folds.war[:2].mean())
    assert folds.war[3] == pytest.approx(np.std(folds.war[:2].astype(float), ddof=1))  # sample std, as the sheet says
    assert "ddof=1" in book["config"].set_index("setting").value["std"]
    preds = book["predictions"]
    assert len(preds) == 84 and preds.file.str.startswith("wav/").all() and preds.stem.is_unique
    assert np.allclose(preds.filter(like="p_").sum(axis=1), 1, atol=1e-5)
    war = (preds.label == preds.predicted).mean() * 100
    assert war == pytest.approx((folds.war[:2] * folds.n_test[:2]).sum() / 84)
    counts = book["confusion"].drop(columns="true").to_numpy()
    assert counts.sum() == 84
    top_share = (counts / counts.sum(axis=1, keepdims=True)).max()  # the heatmap is row-normalised
    # a cell of that share: ~10^4 px of its colour (the colour bar has < 400 of any)
    assert pixels_of(run.confusion_png, colormaps["Blues"](top_share), 0.01) > 3000, "cells not coloured"
    per_fold = book["confusion_per_fold"]
    assert per_fold.groupby("fold")["count"].sum().tolist() == [42, 42] and len(per_fold) == 2 * 7 * 7
    fold1 = torch.load(models / "fold_1.pt", weights_only=True)["confusion"]
    assert np.array(fold1).sum() == 42 and np.trace(np.array(fold1)) == round(folds.war[0] * 42 / 100)
    assert "train.epochs" in set(book["config"].setting)

    summary = pd.read_excel(tmp_path / "Results" / SUMMARY_NAME)
    assert list(summary.run) == [run.run_id]
    # published numbers only beside their setting (tests/test_published.py): here the reason, never the number
    assert summary.paper_war[0].startswith("not comparable: 2 folds, 2 epochs, checkpoint last (the paper's: best")
    assert summary.authors_2023_war[0].startswith("not comparable: 2 folds, 2 epochs, features.signal_length 16000")
    assert summary.folds[0] == 2
    assert summary.war_mean[0] == pytest.approx(folds.war[:2].mean(), abs=0.01)
    assert summary.war_std[0] == pytest.approx(folds.war[3], abs=0.006) and summary.uar_std[0] == pytest.approx(
        folds.uar[3], abs=0.006
    )
    # label smoothing never touches the labels (upstream smoothed them in place, once per fold)
    np.testing.assert_array_equal(np.load(mfcc, allow_pickle=True).item()["y"], before)

    again = train(tmp_path, mfcc, folds=2, epochs=1)
    assert again.run_id != run.run_id and run.workbook.exists()
    assert len(pd.read_excel(tmp_path / "Results" / SUMMARY_NAME)) == 2


@pytest.mark.slow
def test_short_run_beats_chance_by_a_wide_margin(tmp_path, mfcc):
    # enough optimiser steps for BatchNorm's slow (Keras momentum 0.99) running statistics to settle
    run = train(tmp_path, mfcc, folds=2, epochs=30, batch_size=16)
    assert run.summary["war_mean"] >= 60, run.folds  # chance is 14 %


@pytest.mark.slow
def test_best_test_is_labelled_optimistic_and_best_val_uses_validation(tmp_path, mfcc):
    run = train(tmp_path, mfcc, folds=2, epochs=3, checkpoint="best-test")
    label = "best-test (OPTIMISTIC: epoch picked on the test fold, the paper's protocol)"
    assert run.summary["checkpoint"] == label
    config_sheet = pd.read_excel(run.workbook, sheet_name="config")
    assert config_sheet.value[1] == label
    run = train(tmp_path, mfcc, folds=2, epochs=3, checkpoint="best-val", protocol="speaker")
    history = pd.read_csv(tmp_path / "logs" / run.run_id / "fold_1.csv")
    assert history.val_acc.notna().all()
    saved = torch.load(tmp_path / "Models" / run.run_id / "fold_1.pt", weights_only=True)
    assert saved["epoch"] == int(history.val_acc.idxmax()) + 1


def test_a_best_val_unit_tested_every_epoch_keeps_the_best_test_epoch_and_the_last(tmp_path, mfcc):
    run = train(tmp_path, mfcc, folds=2, epochs=3, checkpoint="best-val", protocol="speaker", test_every=1)
    history = pd.read_csv(tmp_path / "logs" / run.run_id / "fold_1.csv")
    saved = torch.load(tmp_path / "Models" / run.run_id / "fold_1.pt", weights_only=True)
    best_test = saved["also"]["best-test"]
    assert best_test["epoch"] == int(history.test_acc.idxmax()) + 1  # the first epoch of the best test accuracy
    assert best_test["metrics"]["war"] == pytest.approx(history.test_acc.max())
    assert saved["also"]["last"]["epoch"] == 3 and saved["epoch"] == int(history.val_acc.idxmax()) + 1
    plain = train(tmp_path, mfcc, folds=2, epochs=3, checkpoint="best-val", protocol="speaker")
    assert "best-test" not in torch.load(tmp_path / "Models" / plain.run_id / "fold_1.pt", weights_only=True)["also"]


@pytest.mark.slow
def test_early_stopping_on_validation(tmp_path, mfcc):
    run = train(tmp_path, mfcc, folds=2, epochs=60, patience=2)
    for k in (1, 2):
        history = pd.read_csv(tmp_path / "logs" / run.run_id / f"fold_{k}.csv")
        assert history.val_acc.notna().all() and len(history) < 60
        best = history.val_acc.cummax()
        assert (best.iloc[-1] == best.iloc[-3]) and history.val_acc.iloc[-2:].max() <= best.iloc[
            -3
        ]  # 2 epochs without improvement
    assert set(run.folds.epoch) == {len(pd.read_csv(tmp_path / "logs" / run.run_id / f"fold_{k}.csv")) for k in (1, 2)}


@pytest.mark.slow
def test_several_seeds_give_mean_and_std(tmp_path, mfcc):
    run = train(tmp_path, mfcc, folds=2, epochs=1, seeds=[46, 7])
    assert sorted(set(run.folds.seed)) == [7, 46] and len(run.folds) == 4
    assert (tmp_path / "Models" / run.run_id / "fold_1_seed7.pt").exists()
    assert run.summary["seeds"] == "46,7" and not np.isnan(run.summary["war_std_over_seeds"])
    # every seed is evaluated on the same (authors') test sets; only training randomness differs
    tests = {
        (p["seed"], p["fold"]): p["test_stems"]
        for p in json.loads((tmp_path / "Models" / run.run_id / "config.json").read_text())["folds"]
    }
    assert tests[(46, 1)] == tests[(7, 1)] and tests[(46, 2)] == tests[(7, 2)]
    assert run.predictions.groupby("seed").stem.apply(sorted).apply(tuple).nunique() == 1
    # t-SNE with one fold's model takes the asked seed's model (default: the run's first seed), never an arbitrary one
    models = tmp_path / "Models"
    for asked, used in ((7, 7), (None, 46)):
        _, fs, embedding, _ = run_embeddings(run.run_id, models, fold=1, seed=asked)
        (model,) = load_model(run.run_id, fold=1, seed=used, models_root=models).fold_models.values()
        np.testing.assert_array_equal(embedding, infer(model, fs.x)[1])
    with pytest.raises(TimnetError, match="has no seed 3; its seeds: 46, 7"):
        run_embeddings(run.run_id, models, fold=1, seed=3)


# --- protocols ---------------------------------------------------------------------------
def test_random_folds_equal_the_authors_kfold():
    cfg = load_config("EMODB")
    canonical = canonical_stems(cfg.dataset)
    folds = make_folds("random", canonical.assign(speaker=""), canonical, 10, 46)
    for (tr, te), (ktr, kte) in zip(folds, KFold(10, shuffle=True, random_state=46).split(np.zeros(535))):
        np.testing.assert_array_equal(te, kte)
        np.testing.assert_array_equal(tr, ktr)
    # a subset keeps the authors' test sets, restricted to the files present
    subset = canonical.iloc[::3].reset_index(drop=True)
    sub_folds = make_folds("random", subset, canonical, 10, 46)
    for (_, te), (_, full_te) in zip(sub_folds, folds):
        assert set(subset.stem[te]) == set(canonical.stem[full_te]) & set(subset.stem)


def test_speaker_folds_share_no_speaker(mfcc):
    fs = load_features(mfcc, load_config("EMODB").dataset.classes)
    folds = make_folds("speaker", fs.manifest, None, 10, 46)
    assert len(folds) == 4  # leave-one-speaker-out with 4 speakers
    for tr, te in folds:
        assert not set(fs.manifest.speaker[tr]) & set(fs.manifest.speaker[te])
        assert len(tr) + len(te) == len(fs)
    two = speaker_folds(fs.manifest.speaker, 2, seed=0)
    assert [len(set(fs.manifest.speaker[te])) for _, te in two] == [2, 2]
    sessions = pd.DataFrame(
        {
            "stem": list("abcdef"),
            "speaker": ["S1F", "S1M", "S2F", "S2M", "S3F", "S3M"],
            "session": ["Session1", "Session1", "Session2", "Session2", "Session3", "Session3"],
        }
    )
    assert [list(te) for _, te in make_folds("speaker", sessions, None, 5, 0)] == [[0, 1], [2, 3], [4, 5]]
    with pytest.raises(TimnetError, match="need a speaker for every utterance.*--protocol random"):
        make_folds("speaker", fs.manifest.assign(speaker=""), None, 10, 46)


def test_validation_comes_from_training_part_only(mfcc):
    fs = load_features(mfcc, load_config("EMODB").dataset.classes)
    train_idx, test_idx = make_folds("speaker", fs.manifest, None, 10, 46)[0]
    tr, va = validation_split(train_idx, fs.y, fs.manifest.speaker, 0.1, seed=0)
    assert set(tr) | set(va) == set(train_idx) and not set(va) & set(test_idx) and not set(tr) & set(va)
    assert not set(fs.manifest.speaker[tr]) & set(fs.manifest.speaker[va])
    tr, va = validation_split(train_idx, fs.y, None, 0.2, seed=0)
    assert set(tr) | set(va) == set(train_idx) and len(va) == pytest.approx(0.2 * len(train_idx), abs=1)


# --- interruption -------------------------------------------------------------------------
def running(pid: int) -> bool:
    """The process exists and is not a zombie (an exited child its new parent has not reaped yet)."""
    try:
        return proc_stat(pid)[0] != "Z"
    except (OSError, IndexError):
        return False


@pytest.mark.slow
def test_resume_after_kill_gives_exactly_the_uninterrupted_numbers(tmp_path, mfcc, uninterrupted_run):
    common = ["--mfcc", str(mfcc), "--folds", str(UNINTERRUPTED["folds"]), "--epochs", str(UNINTERRUPTED["epochs"])]

    def dirs(name):
        return run_dirs(tmp_path, name)

    proc = subprocess.Popen(cli(*common, *dirs("killed")), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300  # a start (imports, worker processes) on a loaded machine
    history = None
    while time.time() < deadline:
        found = list((tmp_path / "killed" / "L").glob("*/fold_1.csv"))
        if found and len(pd.read_csv(found[0])) >= 5:
            history = found[0]
            break
        time.sleep(0.05)
    workers = pool_workers_of(proc.pid) if sys.platform.startswith("linux") else []
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    gone = time.time() + 5  # orphaned workers stop within a second, not at the end of their epoch
    while time.time() < gone and any(map(running, workers)):
        time.sleep(0.1)
    assert workers or not sys.platform.startswith("linux"), "the run had no worker processes to watch"
    assert not any(map(running, workers)), f"workers {workers} outlived their parent"
    assert history is not None, "the run never got going"
    run_id = history.parent.name
    models = tmp_path / "killed" / "M" / run_id
    assert not (models / "fold_2.pt").exists(), "the kill came too late to test anything"
    assert list(models.glob("in_progress/fold_*.pt")), "the killed run left no state to resume from"
    done_before = {p.name for p in models.glob("fold_*.pt")}

    subprocess.run(cli("--resume", run_id, *dirs("killed")), check=True, capture_output=True)
    assert_same_units(uninterrupted_run, models)
    changed = tmp_path / "changed.npy"
    changed.write_bytes(mfcc.read_bytes())
    record = models / "config.json"
    saved = record.read_text()
    record.write_text(saved.replace(str(mfcc.resolve()), str(changed)))
    with open(changed, "ab") as f:
        f.write(b"\0")
    failed = subprocess.run(cli("--resume", run_id, *dirs("killed")), capture_output=True, text=True)
    assert failed.returncode == 2 and "changed since run" in failed.stderr
    record.write_text(saved)
    if "fold_1.pt" in done_before:  # a finished fold is never retrained
        assert (models / "fold_1.pt").stat().st_mtime_ns < (models / "fold_2.pt").stat().st_mtime_ns
    assert (
        pd.read_excel(tmp_path / "killed" / "R" / f"{run_id}.xlsx", sheet_name="folds").war[:2].tolist()
        == pd.read_excel(
            uninterrupted_run.parents[1] / "Results" / f"{uninterrupted_run.name}.xlsx", sheet_name="folds"
        )
        .war[:2]
        .tolist()
    )


def test_settings_have_defaults_in_code_and_runs_of_earlier_versions_still_load():
    from timnet.core.config import Config

    data = load_config("EMODB").to_dict()
    for key in ("compile", "test_every"):  # settings added later: an earlier run did not compile, tested every epoch
        del data["train"][key]
    data["train"]["device"] = "auto"  # retired: the device is chosen when a command runs
    earlier = Config.from_dict(data)
    assert earlier.train.compile == "off" and earlier.train.test_every == 1
    toml = {"dataset": {"name": "MINE", "classes": ["a", "b"]}, "train": {"epochs": 3}}  # a TOML: the rest defaults
    mine = Config.from_dict(toml)
    assert (mine.train.epochs, mine.train.compile, mine.train.test_every, mine.model.levels) == (3, "auto", 10, 8)
    with pytest.raises(TimnetError, match=r"incomplete \[dataset\] section"):
        Config.from_dict({"dataset": {"name": "MINE"}})  # the classes have no default


@pytest.mark.slow
def test_recomputed_activations_train_to_the_same_bits(tmp_path, mfcc):
    """`train.recompute = on` keeps only block inputs for backward; dropout replays its RNG state, so the
    weights and numbers equal those of ordinary training exactly."""
    from timnet.accel.recompute import should_recompute

    runs = {setting: train(tmp_path / setting, mfcc, folds=2, epochs=2, recompute=setting) for setting in ("off", "on")}
    assert_same_units(*(tmp_path / s / "Models" / runs[s].run_id for s in ("off", "on")))
    iemocap, emodb = load_config("IEMOCAP"), load_config("EMODB")
    assert should_recompute("auto", iemocap, 64) and not should_recompute("auto", emodb, 64)  # op by op
    assert not should_recompute("auto", iemocap, 64, kernel=True) and not should_recompute(
        "auto", emodb, 64, kernel=True
    )
    assert should_recompute("on", emodb, 64, kernel=True) and not should_recompute("off", iemocap, 64)
