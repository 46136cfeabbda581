"""Prediction on new audio and the t-SNE of the penultimate layer, for our runs and the authors' weights."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import EMODB_16K, REPO, WEIGHTS, needs_shared, pixels_of, tone, write_wav

import timnet
from timnet import load_config
from timnet.analysis.evaluate import evaluate_weights
from timnet.analysis.tsne import embeddings_of, procrustes_map, run_embeddings, write_tsne
from timnet.core.errors import BadAudioError, TimnetError
from timnet.data.feature_files import load_features
from timnet.data.mfcc_extraction import features_from_audio, load_or_extract
from timnet.training.run_store import read_run_record


def test_predict_with_one_fold_equals_the_evaluation_output(trained_run):
    root, tree, result = trained_run
    saved = torch.load(root / "Models" / result.run_id / "fold_2.pt", weights_only=True)
    stems = saved["test_stems"][:3]
    files = [tree / "wav" / f"{s}.wav" for s in stems]
    table = timnet.predict(files, run=result.run_id, models_root=root / "Models", fold=2)
    classes = load_config("EMODB").dataset.classes
    np.testing.assert_allclose(table[classes].to_numpy(), saved["test_probs"][:3].numpy(), atol=1e-5)
    assert list(table.predicted) == [classes[i] for i in saved["test_probs"][:3].argmax(1)]


def test_predict_averages_folds_into_probabilities(trained_run):
    root, tree, result = trained_run
    files = sorted((tree / "wav").glob("*.wav"))[:4]
    table = timnet.predict(files, run=result.run_id, models_root=root / "Models")
    classes = load_config("EMODB").dataset.classes
    np.testing.assert_allclose(table[classes].sum(axis=1), 1.0, atol=1e-5)
    one = [
        timnet.predict(files, run=result.run_id, models_root=root / "Models", fold=k)[classes].to_numpy()
        for k in (1, 2)
    ]
    np.testing.assert_allclose(table[classes].to_numpy(), np.mean(one, axis=0), atol=1e-6)


def test_predict_errors_and_long_file_warning(trained_run, tmp_path):
    root, _, result = trained_run
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


def test_load_model_of_a_run_by_id_or_folder_with_fold_and_seed(trained_run):
    root, _, result = trained_run
    models = root / "Models"
    run = timnet.load_model(result.run_id, models_root=models)
    assert run.engine == "torch" and run.units == ["fold_1", "fold_2"] and run.kfold_seed is None
    assert run.fold_of == {"fold_1": 1, "fold_2": 2} and run.seed_of == {"fold_1": 46, "fold_2": 46}
    one = timnet.load_model(models / result.run_id, fold=2, seed=46)  # the run's folder, one unit of it
    assert one.units == ["fold_2"] and one.source == str(models / result.run_id)
    x = load_features(read_run_record(models / result.run_id)["mfcc"]).x
    saved = torch.load(models / result.run_id / "fold_2.pt", weights_only=True)
    np.testing.assert_allclose(one.predict_proba(x[saved["test_index"]]), saved["test_probs"].numpy(), atol=1e-5)
    np.testing.assert_array_equal(run.predict_proba(x, fold=2), one.predict_proba(x))
    probs, embs = run.fold_outputs(x[:5])
    assert probs.shape == (5, 2, 7) and embs.shape == (5, 2, 39)
    np.testing.assert_array_equal(run.predict_proba(x[:5]), probs.mean(1))
    np.testing.assert_array_equal(run.unit_outputs("fold_2", x[:5])[1], embs[:, 1])
    np.testing.assert_array_equal(one.embed(x[:5]), embs[:, 1])
    assert list(run.fold_models) == ["fold_1", "fold_2"]
    with pytest.raises(TimnetError, match=r"no model of fold 3 \(it has folds 1, 2; seeds 46\)"):
        timnet.load_model(result.run_id, models_root=models, fold=3)
    with pytest.raises(TimnetError, match="no model of fold 1 and seed 7"):
        timnet.load_model(result.run_id, models_root=models, fold=1, seed=7)
    with pytest.raises(TimnetError, match="--engine onnx needs an exported model folder"):
        timnet.load_model(result.run_id, models_root=models, engine="onnx")
    with pytest.raises(TimnetError, match="no fold model 'fold_3'"):
        run.unit_outputs("fold_3", x[:2])


def test_load_model_of_keras_weights_needs_a_dataset(tmp_path):
    """One .hdf5 or a folder of them (the authors' zip: test_reproduction); without dataset= a clear error."""
    hdf5 = REPO / "tests/data/keras_random_emodb.hdf5"
    with pytest.raises(TimnetError, match="--weights needs --dataset: keras_random_emodb.hdf5 does not say which"):
        timnet.load_model(hdf5)
    one = timnet.load_model(hdf5, dataset="EMODB")
    assert one.engine == "torch" and one.units == ["fold_1"] and one.classes == load_config("EMODB").dataset.classes
    assert one.config.train.checkpoint == "best-test" and one.kfold_seed is None  # no _<seed> in the name
    folder = tmp_path / "EMODB_7"
    folder.mkdir()
    for k in (2, 4):
        (folder / f"10-fold_weights_best_{k}.hdf5").write_bytes(hdf5.read_bytes())
    both = timnet.load_model(folder, dataset=load_config("EMODB"))
    assert both.units == ["fold_2", "fold_4"] and both.fold_of == {"fold_2": 2, "fold_4": 4} and both.kfold_seed == 7
    x = np.random.default_rng(0).normal(0, 20, size=(3, 20, 39)).astype(np.float32)
    np.testing.assert_array_equal(both.unit_outputs("fold_4", x)[0], one.predict_proba(x))  # the same weights
    assert timnet.load_model(folder, dataset="EMODB", fold=4, seed=7).units == ["fold_4"]
    with pytest.raises(TimnetError, match=r"no model of fold 3 \(it has folds 2, 4; seeds 7\)"):
        timnet.load_model(folder, dataset="EMODB", fold=3)
    with pytest.raises(TimnetError, match="weights not found"):
        timnet.load_model(tmp_path / "missing.zip", dataset="EMODB")


@needs_shared
def test_load_model_of_the_authors_zip():
    with pytest.raises(TimnetError, match="--weights needs --dataset: EMODB_46.zip"):
        timnet.load_model(WEIGHTS / "EMODB_46.zip")
    model = timnet.load_model(WEIGHTS / "EMODB_46.zip", dataset="EMODB")
    assert model.units == [f"fold_{k}" for k in range(1, 11)] and model.kfold_seed == 46
    assert set(model.seed_of.values()) == {46}
    three = timnet.load_model(WEIGHTS / "EMODB_46.zip", dataset="EMODB", fold=3)
    x = np.random.default_rng(0).normal(0, 20, size=(4, 188, 39)).astype(np.float32)
    np.testing.assert_array_equal(three.predict_proba(x), model.predict_proba(x, fold=3))
    assert not np.allclose(model.predict_proba(x, fold=3), model.predict_proba(x, fold=4), atol=1e-3)


@pytest.mark.slow
def test_tsne_of_a_run(trained_run):
    root, _, result = trained_run
    in_progress = root / "Models" / result.run_id / "in_progress"
    in_progress.mkdir(exist_ok=True)
    (in_progress / "fold_3.pt").write_bytes(b"half-written state of an unfinished fold")
    cfg, features, emb, notes = run_embeddings(result.run_id, root / "Models")  # held-out, aligned (default)
    assert emb.shape == (84, 39) and np.isfinite(emb).all()
    assert (
        notes["align"] == "procrustes" and -1 <= notes["silhouette_embedding"] <= 1 and "silhouette_unaligned" in notes
    )
    png, csv = write_tsne(
        root / "Results" / result.run_id, cfg, features, emb, "test", perplexity=10, speaker_markers=True, notes=notes
    )
    table = pd.read_csv(csv, dtype={"speaker": str})
    assert len(table) == 84 and table.file.is_unique and np.isfinite(table[["x", "y"]].to_numpy()).all()
    assert set(table.label) == set(cfg.dataset.classes)
    from matplotlib import colormaps

    for c, name in enumerate(cfg.dataset.classes):  # every emotion's points in its colour (alpha 0.8 on white)
        assert pixels_of(png, 0.8 * np.array(colormaps["tab10"](c)[:3]) + 0.2, 0.06) > 30, f"t-SNE: no {name} points"
    sidecar = json.loads(csv.with_suffix(".json").read_text())
    assert (
        sidecar["silhouette_embedding"] == pytest.approx(notes["silhouette_embedding"]) and sidecar["utterances"] == 84
    )
    assert -1 <= sidecar["silhouette_tsne"] <= 1 and sidecar["perplexity"] == 10
    png2, _ = write_tsne(root / "Results" / result.run_id, cfg, features, emb, "test", perplexity=10)
    assert png2 != png and png.exists(), "an earlier figure must not be overwritten"
    _, _, raw, _ = run_embeddings(result.run_id, root / "Models", align="none")
    _, _, one, _ = run_embeddings(result.run_id, root / "Models", fold=2)
    test_of = {
        k: torch.load(root / "Models" / result.run_id / f"fold_{k}.pt", weights_only=True)["test_index"] for k in (1, 2)
    }
    np.testing.assert_allclose(one[test_of[2]], raw[test_of[2]], atol=1e-5)  # raw: each file from its test-fold model
    np.testing.assert_allclose(emb[test_of[1]], raw[test_of[1]], atol=1e-6)  # the reference fold stays where it is
    assert not np.allclose(emb[test_of[2]], raw[test_of[2]], atol=1e-3)  # fold 2 is mapped into fold 1's space
    assert not np.allclose(one, raw, atol=1e-3)


@pytest.mark.slow
@needs_shared
def test_authors_weights_predict_equals_evaluate_and_tsne():
    cfg = load_config("EMODB")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        features, _ = features_from_audio(cfg, EMODB_16K, progress=False)
    ev = evaluate_weights(WEIGHTS / "EMODB_46.zip", cfg, features)
    rows = ev.predictions[ev.predictions.fold == 3].head(3)
    table = timnet.predict(
        [EMODB_16K / f for f in rows.file], weights=WEIGHTS / "EMODB_46.zip", dataset="EMODB", fold=3
    )
    np.testing.assert_allclose(
        table[cfg.dataset.classes].to_numpy(), rows[[f"p_{c}" for c in cfg.dataset.classes]].to_numpy(), atol=1e-5
    )
    assert np.isfinite(ev.embeddings).all() and ev.embeddings.shape == (361, 39)


def test_predict_command_writes_csv_once(trained_run, tmp_path, capsys):
    from timnet.cli import main

    root, tree, result = trained_run
    files = [str(p) for p in sorted((tree / "wav").glob("*.wav"))[:2]]
    csv = tmp_path / "pred.csv"
    assert main(["predict", "--run", result.run_id, "--models", str(root / "Models"), *files, "--csv", str(csv)]) == 0
    table = pd.read_csv(csv)
    classes = load_config("EMODB").dataset.classes
    api = timnet.load_model(result.run_id, models_root=root / "Models").predict(files)
    assert table.file.tolist() == files and table.predicted.tolist() == api.predicted.tolist()
    assert table.predicted.tolist() == [classes[i] for i in table[classes].to_numpy().argmax(1)]
    np.testing.assert_allclose(table[classes].to_numpy(), api[classes].to_numpy(), atol=1e-6)
    np.testing.assert_allclose(table[classes].sum(axis=1), 1, atol=1e-3)
    assert main(["predict", "--run", result.run_id, "--models", str(root / "Models"), *files, "--csv", str(csv)]) == 2
    assert "already exists" in capsys.readouterr().err


def test_procrustes_map_recovers_a_rotation():
    rng = np.random.default_rng(0)
    rotation, _ = np.linalg.qr(rng.normal(size=(39, 39)))
    source, points = rng.normal(size=(200, 39)), rng.normal(size=(20, 39))
    shift = rng.normal(size=39)
    np.testing.assert_allclose(
        procrustes_map(source, source @ rotation + shift, points), points @ rotation + shift, atol=1e-9
    )


@pytest.mark.slow
@needs_shared
def test_aligned_tsne_of_the_authors_weights_clusters_by_emotion(tmp_path):
    cfg = load_config("EMODB")
    features, _ = load_or_extract(cfg, EMODB_16K, progress=False)
    raw = embeddings_of(
        weights=WEIGHTS / "EMODB_46.zip", config=cfg, features=features, align="none", results_root=tmp_path
    )
    aligned = embeddings_of(weights=WEIGHTS / "EMODB_46.zip", config=cfg, features=features, results_root=tmp_path)
    np.testing.assert_array_equal(np.isnan(raw.embeddings), np.isnan(aligned.embeddings))
    assert raw.silhouette < 0.05 and aligned.silhouette > raw.silhouette + 0.25, (raw.silhouette, aligned.silhouette)
    png, csv = write_tsne(
        aligned.out_dir, aligned.config, aligned.features, aligned.embeddings, aligned.title, notes=aligned.notes
    )
    sidecar = json.loads(csv.with_suffix(".json").read_text())
    assert sidecar["align"] == "procrustes" and sidecar["silhouette_embedding"] == pytest.approx(aligned.silhouette)
    assert sidecar["silhouette_tsne"] > sidecar["silhouette_embedding"] - 0.2
