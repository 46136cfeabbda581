"""The faithfulness test: the authors' weights, their folds, features we compute from original audio."""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import pytest
from conftest import EMODB_16K, REPO, WEIGHTS, needs_shared

import timnet
from timnet import load_config
from timnet.analysis.evaluate import authors_test_folds, evaluate_weights
from timnet.data.mfcc_extraction import features_from_audio

pytestmark = needs_shared


@pytest.fixture(scope="module")
def emodb_subset():
    cfg = load_config("EMODB")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        features, skipped = features_from_audio(cfg, EMODB_16K, progress=False)
    assert skipped == [] and len(features) == 361
    return cfg, features


def test_reproduces_the_authors_keras_evaluation(emodb_subset):
    cfg, features = emodb_subset
    ev = evaluate_weights(WEIGHTS / "EMODB_46.zip", cfg, features)
    ref = pd.read_csv(REPO / "tests/data/keras_reference_emodb46_predictions.csv", dtype={"stem": str})
    merged = ref.merge(ev.predictions, on="stem", validate="one_to_one")
    assert len(merged) == len(ev.predictions) == 361
    assert (merged.fold_x == merged.fold_y).all(), "a file landed in another test fold than in the reference"
    agreement = (merged.keras_pred.map(cfg.dataset.classes.__getitem__) == merged.predicted).mean()
    assert agreement == 1.0  # the README: predictions equal Keras's on 361/361 files
    ours = merged.apply(lambda r: r[f"p_{cfg.dataset.classes[r.keras_pred]}"], axis=1)
    assert np.abs(ours - merged.keras_prob).max() <= 2e-6  # float32 through other kernels: rounding only
    keras_war = (ref.label == ref.keras_pred).mean() * 100
    assert abs(ev.overall["war"] - keras_war) <= 0.3
    # the authors' own Keras code on these 361 files: WAR 94.46 %, UAR 93.74 %
    assert round(ev.overall["war"], 2) == 94.46 and round(ev.overall["uar"], 2) == 93.74
    assert ev.missing == 535 - 361
    assert ev.folds.war.min() >= 85 and ev.folds.war.max() <= 100


@pytest.mark.slow
def test_fold_models_know_their_training_files(emodb_subset):
    """A wrong order or seed leaks training files into test folds; the right one makes every fold model
    ~100 % on its own training files and wrong only on test files."""
    cfg, features = emodb_subset
    model = timnet.load_model(WEIGHTS / "EMODB_46.zip", dataset=cfg)
    assert model.kfold_seed == 46 and model.units == [f"fold_{k}" for k in range(1, 11)]
    tests, _ = authors_test_folds(cfg, features, 10, model.kfold_seed)
    for k in range(1, 11):  # the README: every fold model scores 100 % on its own training files
        train = np.setdiff1d(np.arange(len(features)), tests[k - 1])
        prob, _ = model.unit_outputs(f"fold_{k}", features.x[train])
        assert (prob.argmax(1) == features.y[train]).mean() == 1.0, f"fold {k}"
    wrong_seed, _ = authors_test_folds(cfg, features, 10, 0)
    assert not all(np.array_equal(a, b) for a, b in zip(tests, wrong_seed))


def synthetic_features(cfg, stems_labels: pd.DataFrame, seed: int = 0):
    from timnet.data.feature_files import FeatureSet

    rng = np.random.default_rng(seed)
    x = rng.normal(0, 20, size=(len(stems_labels), cfg.features.frames, 39)).astype(np.float32)
    y = stems_labels.label.map(cfg.dataset.classes.index).to_numpy()
    manifest = stems_labels.assign(file=stems_labels.stem + ".wav", speaker="").reset_index(drop=True)
    return FeatureSet(x, y, manifest, cfg.dataset.classes)


@pytest.mark.slow
def test_ravdess_weights_on_a_partial_corpus_use_the_authors_folds():
    """Plumbing with the published RAVDESS weights: the canonical 1440-name list, their seed, a subset present."""
    from sklearn.model_selection import KFold

    from timnet.data.corpora import canonical_stems

    cfg = load_config("RAVDESS")
    canonical = canonical_stems(cfg.dataset)
    present = canonical.iloc[::12]  # 120 of 1440
    ev = evaluate_weights(WEIGHTS / "RAVDE_46.zip", cfg, synthetic_features(cfg, present))
    assert ev.missing == 1440 - 120 and ev.folds.n_test.sum() == 120
    expected = [
        len(np.intersect1d(te, np.arange(0, 1440, 12)))
        for _, te in KFold(10, shuffle=True, random_state=46).split(np.zeros(1440))
    ]
    assert ev.folds.n_test.tolist() == expected
    np.testing.assert_allclose(ev.predictions.filter(like="p_").sum(axis=1), 1, atol=1e-5)


@pytest.mark.slow
def test_casia_weights_need_the_complete_authors_npy():
    cfg = load_config("CASIA")
    labels = pd.DataFrame(
        {"stem": [f"CASIA_{i:05d}" for i in range(1200)], "label": [cfg.dataset.classes[i // 200] for i in range(1200)]}
    )
    ev = evaluate_weights(WEIGHTS / "CASIA_32.zip", cfg, synthetic_features(cfg, labels))
    assert ev.folds.n_test.tolist() == [120] * 10 and ev.missing == 0
    from timnet.core.errors import TimnetError

    with pytest.raises(TimnetError, match=r"need the complete corpus \(1200 utterances"):
        evaluate_weights(WEIGHTS / "CASIA_32.zip", cfg, synthetic_features(cfg, labels.iloc[:600]))
