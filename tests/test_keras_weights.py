"""Keras weight import: parity with a fresh reference Keras implementation (tools/keras_reference.py)."""

from __future__ import annotations

import io
import shutil
import zipfile

import h5py
import numpy as np
import pytest
import torch
from conftest import REPO, WEIGHTS, model_config, needs_shared

from timnet.core.errors import TimnetError
from timnet.model.keras_weights import (
    fold_weights,
    infer_config,
    load_fold_models,
    load_into,
    read_layers,
    seed_from_name,
)
from timnet.model.network import TIMNet

DATA = REPO / "tests" / "data"


def assert_parity(model, ref):
    """Logits, softmax and penultimate embedding all within 1e-4 of the Keras reference."""
    with torch.no_grad():
        x = torch.from_numpy(ref["x"])
        logits, emb = model(x).numpy(), model.embed(x).numpy()
    assert np.abs(logits - ref["logits"]).max() <= 1e-4
    assert np.abs(torch.softmax(torch.from_numpy(logits), -1).numpy() - ref["softmax"]).max() <= 1e-4
    assert np.abs(emb - ref["embedding"]).max() <= 1e-4


def test_random_keras_model_parity():
    """A randomly initialised Keras model's weights and outputs (no ../shared needed)."""
    ref = np.load(DATA / "keras_random_emodb.npz")
    assert_parity(load_into(TIMNet(model_config()), DATA / "keras_random_emodb.hdf5"), ref)


@needs_shared
def test_authors_fold1_parity():
    ref = np.load(DATA / "keras_reference_emodb46.npz")
    blob = fold_weights(WEIGHTS / "EMODB_46.zip")[1]
    assert_parity(load_into(TIMNet(model_config()), io.BytesIO(blob)), ref)


def test_every_tensor_is_mapped_explicitly():
    layers = read_layers(DATA / "keras_random_emodb.hdf5")
    cfg = infer_config(layers)
    assert (cfg.n_classes, cfg.levels, cfg.filters, cfg.n_mfcc, cfg.kernel_size) == (7, 8, 39, 39, 2)
    model = load_into(TIMNet(cfg), DATA / "keras_random_emodb.hdf5")
    dense = next(v for k, v in layers.items() if k.startswith("dense"))
    np.testing.assert_array_equal(model.classifier.weight.detach().numpy(), dense["kernel"].T)


def test_wrong_dataset_is_a_clear_error():
    with pytest.raises(TimnetError, match=r"trained for 7 classes, 8 levels.*has 8 classes.*wrong --dataset"):
        load_into(TIMNet(model_config(n_classes=8)), DATA / "keras_random_emodb.hdf5")
    with pytest.raises(TimnetError, match=r"7 classes, 8 levels.*10 levels"):
        load_into(TIMNet(model_config(levels=10)), DATA / "keras_random_emodb.hdf5")


def test_not_weights_or_truncated(tmp_path):
    bad = tmp_path / "x.hdf5"
    bad.write_bytes(b"not hdf5")
    with pytest.raises(TimnetError, match="not a Keras HDF5 weight file"):
        load_into(TIMNet(model_config()), bad)
    other = tmp_path / "other.hdf5"
    with h5py.File(other, "w") as f:
        f["a"] = np.zeros(3)
    with pytest.raises(TimnetError, match="without Keras layer_names"):
        load_into(TIMNet(model_config()), other)


def test_sources_file_folder_and_zip(tmp_path):
    folder = tmp_path / "EMODB_46"
    folder.mkdir()
    for k in (1, 2):
        shutil.copy(DATA / "keras_random_emodb.hdf5", folder / f"10-fold_weights_best_{k}.hdf5")
    with zipfile.ZipFile(tmp_path / "EMODB_46.zip", "w") as z:
        for k in (1, 2):
            z.write(folder / f"10-fold_weights_best_{k}.hdf5", f"EMODB_46/10-fold_weights_best_{k}.hdf5")
    cfg = model_config()
    for source in (folder, tmp_path / "EMODB_46.zip"):
        models = load_fold_models(source, cfg)
        assert list(models) == ["fold_1", "fold_2"]
        assert list(load_fold_models(source, cfg, folds={2})) == ["fold_2"]
    assert list(load_fold_models(DATA / "keras_random_emodb.hdf5", cfg)) == ["fold_1"]
    assert seed_from_name(tmp_path / "EMODB_46.zip") == 46
    with pytest.raises(TimnetError, match="weights not found"):
        fold_weights(tmp_path / "missing.zip")


@needs_shared
@pytest.mark.parametrize(
    "name,classes,levels", [("EMODB_46", 7, 8), ("RAVDE_46", 8, 8), ("EMOVO_1", 7, 8), ("CASIA_32", 6, 8)]
)
def test_all_published_weight_sets_load(name, classes, levels):
    models = load_fold_models(WEIGHTS / f"{name}.zip", model_config(n_classes=classes, levels=levels))
    assert list(models) == [f"fold_{k}" for k in range(1, 11)]
