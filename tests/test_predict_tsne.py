"""Prediction on new audio and the t-SNE of the penultimate layer, for our runs and the authors' weights."""
from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import EMODB_16K, WEIGHTS, emodb_tree, needs_shared, tone, write_wav

import timnet
from timnet import load_config
from timnet.errors import BadAudioError, TimnetError
from timnet.evaluate import evaluate_weights
from timnet.features import features_from_audio, preprocess
from timnet.train import run_training
from timnet.tsne import run_embeddings, write_tsne

SHORT = {"features.signal_length": 16000}


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    root = tmp_path_factory.mktemp("run")
    tree = emodb_tree(root / "EMODB")
    cfg = load_config("EMODB", {**SHORT, "train.folds": 2, "train.epochs": 3})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        preprocess(cfg, tree, root / "MFCC", progress=False)
        result = run_training(cfg, root / "MFCC" / "EMODB.npy", root / "Models", root / "logs", root / "Results", progress=False)
    return root, tree, result


def test_predict_with_one_fold_equals_the_evaluation_output(run):
    root, tree, result = run
    saved = torch.load(root / "Models" / result.run_id / "fold_2.pt", weights_only=True)
    stems = saved["test_stems"][:3]
    files = [tree / "wav" / f"{s}.wav" for s in stems]
    table = timnet.predict(files, run=result.run_id, models_root=root / "Models", fold=2)
    classes = load_config("EMODB").dataset.classes
    np.testing.assert_allclose(table[classes].to_numpy(), saved["test_probs"][:3].numpy(), atol=1e-5)
    assert list(table.predicted) == [classes[i] for i in saved["test_probs"][:3].argmax(1)]


def test_predict_averages_folds_into_probabilities(run):
    root, tree, result = run
    files = sorted((tree / "wav").glob("*.wav"))[:4]
    table = timnet.predict(files, run=result.run_id, models_root=root / "Models")
    classes = load_config("EMODB").dataset.classes
    np.testing.assert_allclose(table[classes].sum(axis=1), 1.0, atol=1e-5)
    one = [timnet.predict(files, run=result.run_id, models_root=root / "Models", fold=k)[classes].to_numpy() for k in (1, 2)]
    np.testing.assert_allclose(table[classes].to_numpy(), np.mean(one, axis=0), atol=1e-6)


def test_predict_errors_and_long_file_warning(run, tmp_path):
    root, _, result = run
    bad = tmp_path / "broken.wav"
    bad.write_bytes(b"RIFFjunk")
    with pytest.raises(BadAudioError, match="broken.wav: cannot be read as audio"):
        timnet.predict([bad], run=result.run_id, models_root=root / "Models")
    long = write_wav(tmp_path / "long.wav", y=tone(3.0))
    with pytest.warns(UserWarning, match=r"long.wav: 3.0 s long, the model was trained on 0.73 s"):
        timnet.predict([long], run=result.run_id, models_root=root / "Models")
    with pytest.raises(TimnetError, match="not a timnet run"):
        timnet.predict([long], run="nope", models_root=root / "Models")
    with pytest.raises(TimnetError, match="--weights needs --dataset"):
        timnet.predict([long], weights=tmp_path / "x.zip")


def test_tsne_of_a_run(run):
    root, _, result = run
    in_progress = root / "Models" / result.run_id / "in_progress"
    in_progress.mkdir(exist_ok=True)
    (in_progress / "fold_3.pt").write_bytes(b"half-written state of an unfinished fold")
    cfg, features, emb = run_embeddings(result.run_id, root / "Models")
    assert emb.shape == (84, 39) and np.isfinite(emb).all()
    png, csv = write_tsne(root / "Results" / result.run_id, cfg, features, emb, "test", perplexity=10, speaker_markers=True)
    table = pd.read_csv(csv, dtype={"speaker": str})
    assert len(table) == 84 and table.file.is_unique and np.isfinite(table[["x", "y"]].to_numpy()).all()
    assert set(table.label) == set(cfg.dataset.classes)
    assert png.stat().st_size > 10_000
    png2, _ = write_tsne(root / "Results" / result.run_id, cfg, features, emb, "test", perplexity=10)
    assert png2 != png and png.exists(), "an earlier figure must not be overwritten"
    _, _, one = run_embeddings(result.run_id, root / "Models", fold=2)
    test_of_2 = torch.load(root / "Models" / result.run_id / "fold_2.pt", weights_only=True)["test_index"]
    np.testing.assert_allclose(one[test_of_2], emb[test_of_2], atol=1e-5)  # same model for fold 2's test files
    assert not np.allclose(one, emb, atol=1e-3)


@needs_shared
def test_authors_weights_predict_equals_evaluate_and_tsne():
    cfg = load_config("EMODB")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        features, _ = features_from_audio(cfg, EMODB_16K, progress=False)
    ev = evaluate_weights(WEIGHTS / "EMODB_46.zip", cfg, features)
    rows = ev.predictions[ev.predictions.fold == 3].head(3)
    table = timnet.predict([EMODB_16K / f for f in rows.file], weights=WEIGHTS / "EMODB_46.zip", dataset="EMODB", fold=3)
    np.testing.assert_allclose(table[cfg.dataset.classes].to_numpy(), rows[[f"p_{c}" for c in cfg.dataset.classes]].to_numpy(), atol=1e-5)
    assert np.isfinite(ev.embeddings).all() and ev.embeddings.shape == (361, 39)


def test_predict_command_writes_csv_once(run, tmp_path, capsys):
    from timnet.cli import main

    root, tree, result = run
    files = [str(p) for p in sorted((tree / "wav").glob("*.wav"))[:2]]
    csv = tmp_path / "pred.csv"
    assert main(["predict", "--run", result.run_id, "--models", str(root / "Models"), *files, "--csv", str(csv)]) == 0
    table = pd.read_csv(csv)
    assert table.file.tolist() == files and table.predicted.isin(load_config("EMODB").dataset.classes).all()
    np.testing.assert_allclose(table[load_config("EMODB").dataset.classes].sum(axis=1), 1, atol=1e-3)
    assert main(["predict", "--run", result.run_id, "--models", str(root / "Models"), *files, "--csv", str(csv)]) == 2
    assert "already exists" in capsys.readouterr().err
