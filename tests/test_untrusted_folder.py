"""A model folder is data, never code: a folder edited each way is refused in one line naming what was edited."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from safetensors.torch import load_file, save_file

import timnet
from timnet.core.errors import TimnetError
from timnet.serving.export import export_run


@pytest.fixture(scope="module")
def exported(trained_run, tmp_path_factory) -> Path:
    """One exported folder (2 fold models, with ONNX graphs) of the session's tiny run, copied by each test."""
    root, _, result = trained_run
    return export_run(result.run_id, tmp_path_factory.mktemp("export") / "EMODB", root / "Models")


@pytest.fixture
def folder(exported, tmp_path) -> Path:
    return Path(shutil.copytree(exported, tmp_path / "copy"))


def edit_card(folder: Path, change) -> None:
    card = json.loads((folder / "config.json").read_text())
    change(card)
    (folder / "config.json").write_text(json.dumps(card))


def edit_weights(folder: Path, change) -> None:
    tensors = load_file(folder / "model.safetensors")
    change(tensors)
    save_file(tensors, folder / "model.safetensors")


def edit_graph(folder: Path, change) -> None:
    path = folder / "onnx" / "fold_1.onnx"
    model = onnx.load(str(path))
    change(model.graph)
    onnx.save(model, str(path))


def test_an_intact_folder_loads_with_both_engines(folder):
    x = np.random.default_rng(0).standard_normal((2, 32, 39)).astype(np.float32) * 20
    onnx_probs = timnet.load_model(folder, engine="onnx").predict_proba(x)
    torch_probs = timnet.load_model(folder, engine="torch", device="cpu").predict_proba(x)
    np.testing.assert_allclose(onnx_probs, torch_probs, atol=1e-4)


CARD_EDITS = {
    "classes": (lambda c: c.update(classes=c["classes"][::-1]), r"config\.json: classes: .* not the config's class"),
    "architecture": (lambda c: c["architecture"].update(filters=8), r"config\.json: architecture: .*not the config"),
    "recipe out of range": (
        lambda c: c["config"]["features"].update(n_mfcc=-3),
        r"config\.json: config: features\.n_mfcc: must be ≥ 1 \(got -3\)",
    ),
    "recipe of the wrong type": (
        lambda c: c["config"]["train"].update(epochs="many"),
        r"config\.json: config: .*train\.epochs",
    ),
    "config not an object": (lambda c: c.update(config=[1, 2]), r"config\.json: config: missing, or not an object"),
    "units": (lambda c: c.update(units="fold_1"), r"config\.json: units: must be a non-empty list"),
    "unit name": (lambda c: c.update(units=["../../etc"]), r"config\.json: units: '../../etc' is not a fold model"),
    "graph outside": (
        lambda c: c["onnx"]["files"].update(fold_1="../../outside.onnx"),
        r"config\.json: onnx\.files\.fold_1: '../../outside.onnx' is not a \.onnx file inside the folder",
    ),
    "seed": (lambda c: c["folds"][0].update(seed="46"), r"config\.json: folds: seed '46' is not an integer"),
}


@pytest.mark.parametrize("edit", CARD_EDITS, ids=list(CARD_EDITS))
def test_an_edited_config_json_is_refused_naming_the_field(folder, edit):
    change, message = CARD_EDITS[edit]
    edit_card(folder, change)
    with pytest.raises(TimnetError, match=message) as refused:
        timnet.load_model(folder, engine="torch")
    assert "\n" not in str(refused.value) and str(folder) in str(refused.value)


def test_a_config_json_that_is_not_json_is_refused(folder):
    (folder / "config.json").write_bytes(b'{"format": "timnet-model/1", \xff')
    with pytest.raises(TimnetError, match=r"config\.json: not valid JSON"):
        timnet.load_model(folder)


@pytest.mark.parametrize("name", ["fold_1.pt", "onnx/extra.pkl", "pytorch_model.bin", "loader.py"])
def test_files_that_would_be_executed_are_refused(folder, name):
    torch.save({"anything": 1}, folder / name)  # a pickle: loading it could run any code
    with pytest.raises(TimnetError, match=rf"{name}: a model folder holds only .* would load by executing it"):
        timnet.load_model(folder, engine="torch")


WEIGHT_EDITS = {
    "shape": (
        lambda t: t.update({"fold_1.classifier.weight": torch.zeros(3, 3)}),
        r"model\.safetensors: fold_1\.classifier\.weight has shape \[3, 3\], the architecture's is \[7, ",
    ),
    "missing": (lambda t: t.pop("fold_2.classifier.bias"), r"model\.safetensors: fold_2\.classifier\.bias is missing"),
    "extra": (
        lambda t: t.update({"fold_1.backdoor": torch.zeros(1)}),
        r"fold_1\.backdoor is not a parameter of the architecture",
    ),
}


def test_a_corrupt_weights_file_is_refused(folder):
    (folder / "model.safetensors").write_bytes(b"\x00" * 64)
    with pytest.raises(TimnetError, match=r"model\.safetensors: not a safetensors file"):
        timnet.load_model(folder, engine="torch")


def _rank_2_input(graph):
    del graph.input[0].type.tensor_type.shape.dim[1]


def _renamed_output(graph):
    graph.output[0].name = "logits"


def _other_class_count(graph):
    graph.output[0].type.tensor_type.shape.dim[1].dim_value = 5


def _custom_operator(graph):
    graph.node[0].domain = "com.example.evil"


GRAPH_EDITS = {
    "input rank": (_rank_2_input, r"onnx/fold_1\.onnx: inputs \[\('mfcc', \[None, 39\]\)\], expected mfcc \[N, T, 39"),
    "output name": (_renamed_output, r"onnx/fold_1\.onnx: outputs \[\('logits'"),
    "class count": (_other_class_count, r"onnx/fold_1\.onnx: outputs .*expected probabilities \[N, 7\]"),
    "custom operator": (_custom_operator, r"onnx/fold_1\.onnx: uses operators of domain\(s\) \['com\.example\.evil'\]"),
}


# weights that do not fit the architecture (torch engine), graphs with another interface (onnx engine)
EDITS = {f"weights: {k}": (edit_weights, *v, "torch") for k, v in WEIGHT_EDITS.items()}
EDITS |= {f"graph: {k}": (edit_graph, *v, "onnx") for k, v in GRAPH_EDITS.items()}


@pytest.mark.parametrize("edit", EDITS, ids=list(EDITS))
def test_weights_or_graphs_that_do_not_fit_are_refused_before_use(folder, edit):
    apply, change, message, engine = EDITS[edit]
    apply(folder, change)
    with pytest.raises(TimnetError, match=message):
        timnet.load_model(folder, engine=engine)


def test_an_onnx_file_that_is_not_a_graph_is_refused(folder):
    (folder / "onnx" / "fold_2.onnx").write_bytes(b"MZ\x90\x00 not protobuf at all")
    with pytest.raises(TimnetError, match=r"onnx/fold_2\.onnx: not an ONNX graph"):
        timnet.load_model(folder, engine="onnx")
