"""Cross-corpus evaluation: a model trained on the synthetic EMO-DB scored on a pattern-defined corpus it never saw
(some classes shared, some not), from a model folder and from a run, through the CLI, the library and a sweep."""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import pytest
from conftest import tiny_grid, train
from test_own_corpora import mine_config, mine_tree

from timnet import load_config, load_model
from timnet.analysis.cross_corpus import class_mapping, evaluate_cross_corpus, write_cross_corpus
from timnet.cli import main
from timnet.core.errors import TimnetError
from timnet.data.mfcc_extraction import preprocess


@pytest.fixture(scope="module")
def mine(tmp_path_factory):
    """The pattern corpus MINE (angry, happy, neutral, surprise; 3 speakers) and its config file."""
    root = tmp_path_factory.mktemp("mine")
    return mine_config(root), mine_tree(root / "MINE")


def quiet(fn, *args, **kw):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return fn(*args, **kw)


def test_classes_are_matched_by_name_and_by_map():
    model, target = ["angry", "boredom", "neutral", "happy"], ["anger", "calm", "happy", "surprise"]
    assert class_mapping(model, target) == {"anger": "angry", "happy": "happy"}
    assert class_mapping(model, target, {"calm": "neutral", "happy": ""}) == {"anger": "angry", "calm": "neutral"}
    with pytest.raises(TimnetError, match="--map calm=joy: 'joy' is not a class of the model"):
        class_mapping(model, target, {"calm": "joy"})


def test_from_a_run_in_the_library_scores_only_the_shared_classes(trained_run, mine, tmp_path):
    root, _, run = trained_run
    config, data = mine
    result = quiet(evaluate_cross_corpus, root / "Models" / run.run_id, config, data, {"surprise": "fear"}, workers=1)
    assert result.shared == ["angry", "fear", "happy", "neutral"]  # the model's order; surprise scored as fear
    assert len(result.predictions) == 24 and result.source_dataset == "EMODB"
    # what `predict` says, restricted to the shared classes and renormalised
    model = load_model(root / "Models" / run.run_id)
    files = [data / f for f in result.predictions.file]
    full = quiet(model.predict, files, workers=1)
    kept = full[result.shared].to_numpy()
    probs = kept / kept.sum(1, keepdims=True)
    np.testing.assert_allclose(result.predictions[[f"p_{c}" for c in result.shared]].to_numpy(), probs, atol=1e-5)
    assert list(result.predictions.predicted) == [result.shared[i] for i in probs.argmax(1)]
    war = 100 * np.mean(result.predictions.predicted == result.predictions["as model class"])
    assert result.overall["war"] == pytest.approx(war)
    assert int(result.confusion.to_numpy().sum()) == 24
    notes = dict(zip(result.classes["model class"], result.classes.note))
    assert "probability is dropped" in notes["boredom"] and "probability is dropped" in notes["sad"]
    workbook = write_cross_corpus(result, tmp_path / "R")
    assert pd.read_excel(workbook, sheet_name="confusion").shape == (4, 5)
    summary = pd.read_excel(tmp_path / "R" / "Accuracy Analysis Summary.xlsx")
    assert list(summary.cross_corpus) == ["EMODB -> MINE"] and summary.war_mean[0] == pytest.approx(war, abs=0.01)
    with pytest.raises(TimnetError, match="already exists"):
        write_cross_corpus(result, tmp_path / "R", workbook)


def test_from_a_model_folder_through_the_cli(trained_run, mine, tmp_path, capsys):
    root, _, run = trained_run
    config, data = mine
    folder = tmp_path / "model"
    export = ["export", "--run", run.run_id, "--models", str(root / "Models"), "--out", str(folder), "--no-onnx"]
    assert quiet(main, export) == 0
    base = ["evaluate", "--model", str(folder), "--config", str(config), "--data", str(data), "--quiet"]
    base += ["--workers", "1", "--device", "cpu", "--results", str(tmp_path / "R")]
    capsys.readouterr()
    assert quiet(main, base) == 0
    out = capsys.readouterr().out
    assert "cross-corpus EMODB -> MINE" in out and "3 shared classes (angry, happy, neutral)" in out
    assert "on 18 MINE utterances" in out and "no model class: utterances left out" in out
    [workbook] = (tmp_path / "R" / "cross_corpus").glob("model_on_MINE_*.xlsx")
    assert set(pd.ExcelFile(workbook).sheet_names) >= {"scores", "classes", "confusion", "fold_models", "predictions"}
    assert quiet(main, [*base, "--map", "happy=", "--map", "neutral="]) == 2
    assert "EMODB and MINE share 1 class(es) (angry) — scores need at least two" in capsys.readouterr().err
    assert quiet(main, [*base, "--out", str(workbook)]) == 2
    assert "already exists" in capsys.readouterr().err


@pytest.mark.slow
def test_a_pattern_corpus_trains_per_speaker_and_is_scored_on_the_emodb_layout(trained_run, mine, tmp_path):
    _, emodb, _ = trained_run
    config, data = mine
    cfg = load_config(config, {"train.protocol": "speaker", "train.folds": 3, "train.epochs": 1})
    npy = quiet(preprocess, cfg, data, tmp_path / "MFCC", workers=1)
    run = train(tmp_path, npy.npy, cfg=cfg)
    assert [sorted(g.unique()) for _, g in run.predictions.groupby("fold").speaker] == [["AB"], ["CD"], ["EF"]]
    random = train(tmp_path, npy.npy, cfg=cfg.with_overrides({"train.protocol": "random", "train.folds": 2}))
    assert len(random.predictions) == 24
    result = quiet(evaluate_cross_corpus, tmp_path / "Models" / run.run_id, "EMODB", emodb, workers=1)
    assert result.shared == ["angry", "happy", "neutral"] and len(result.predictions) == 3 * 4 * 3


def test_a_sweep_holds_cross_corpus_cells(mfcc, mine, tmp_path):
    from timnet.studies.sweep import run_sweep
    from timnet.training.execution import Execution
    from timnet.training.run_store import Roots

    config, data = mine
    grid = tmp_path / "grid.toml"
    runs, cells = (
        f'evaluate_data = {{ MINE = "{data}" }}',
        f'protocol = ["random"]\nevaluate_on = ["{config}", "EMODB"]',
    )
    tiny_grid(grid, "cells", mfcc, runs, cells)
    roots = Roots(tmp_path / "M", tmp_path / "L", tmp_path / "R")
    how = Execution(roots, device="cpu", workers=1, threads=1, progress=False)
    record, table, workbook = quiet(run_sweep, grid, how=how)
    assert len(table) == 1  # evaluate_on is not a dimension of the grid
    cells = pd.read_excel(workbook, sheet_name="cross_corpus")
    assert list(cells.target) == ["MINE"] and list(cells.source) == ["EMODB"]  # its own corpus is no cell
    matrix = pd.read_excel(workbook, sheet_name="cross_corpus_uar")
    assert matrix.MINE[0] == pytest.approx(cells.uar[0])
    summary = pd.read_excel(tmp_path / "R" / "Accuracy Analysis Summary.xlsx")
    assert sorted(summary.protocol.astype(str)) == ["cross-corpus", "random"]
