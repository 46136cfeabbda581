"""Results per speaker (every run's `speakers` sheet) and speaker-sentence runs whose folds pool their cells: the
numbers recomputed from the predictions, the cells trained once each, resumed where they stopped."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pandas as pd
import pytest
from conftest import SHORT, small_study

from timnet import load_config
from timnet.analysis.compare import read_units, training_sizes
from timnet.core.config import Config
from timnet.core.errors import TimnetError
from timnet.core.metrics import scores, speaker_table
from timnet.data.feature_files import load_features
from timnet.data.splits import protocol_splits
from timnet.training.execution import Execution
from timnet.training.run import run_training
from timnet.training.run_store import Roots


def test_speaker_table_pools_folds_and_averages_seeds():
    """Speaker A: seed 1 gets 3 of 4 right (folds 1 and 2 pooled), seed 2 gets 1 of 4: WAR (75 + 25) / 2."""
    rows = [(1, 1, "A", "x", "x"), (1, 1, "A", "y", "y"), (1, 2, "A", "x", "x"), (1, 2, "A", "y", "x")]
    rows += [(2, 1, "A", "x", "x"), (2, 1, "A", "y", "x"), (2, 2, "A", "x", "y"), (2, 2, "A", "y", "x")]
    rows += [(1, 3, "", "x", "x"), (2, 3, "", "x", "y")]  # a speaker the corpus does not name
    table = speaker_table(pd.DataFrame(rows, columns=["seed", "fold", "speaker", "label", "predicted"]))
    assert table.speaker.tolist() == ["A", "unknown"] and table.n.tolist() == [4, 1]
    assert table.war.tolist() == [50.0, 50.0] and table.folds.tolist() == ["1,2", "3"]
    assert table.uar[0] == pytest.approx((75.0 + 25.0) / 2)  # seed 1: recalls x 1, y 1/2; seed 2: x 1/2, y 0


def test_every_run_workbook_has_a_speakers_sheet_that_recomputes_from_its_predictions(trained_run):
    _, _, run = trained_run
    book = pd.read_excel(run.workbook, sheet_name=None, dtype={"speaker": str})
    speakers, predictions = book["speakers"], book["predictions"]
    assert speakers.speaker.tolist() == ["03", "08", "09", "10"]
    assert speakers.n.sum() == len(predictions) == 84
    for row in speakers.itertuples():
        mine = predictions[predictions.speaker == row.speaker]
        expected = scores(mine.label.to_numpy(), mine.predicted.to_numpy())
        assert row.n == len(mine) == 21
        assert row.war == pytest.approx(expected["war"]) and row.uar == pytest.approx(expected["uar"])
        assert row.folds == ",".join(map(str, sorted(mine.fold.unique())))


def speaker_sentence_run(root, mfcc, only_folds=None, resume=None):
    cfg = None if resume else load_config("EMODB", {**SHORT, "train.protocol": "speaker-sentence"})
    if cfg is not None:
        cfg.train.folds, cfg.train.epochs = 2, 1
    with warnings.catch_warnings(record=True) as said:
        warnings.simplefilter("always")
        how = Execution(Roots(root / "Models", root / "logs", root / "Results"), device="cpu", workers=1, threads=1,
                        progress=False)  # fmt: skip
        run = run_training(cfg, None if resume else mfcc, how, resume=resume, only_folds=only_folds)
    return run, [str(w.message) for w in said]


def test_speaker_sentence_run_trains_each_cell_once_and_its_folds_pool_them(tmp_path, mfcc):
    """2 speaker groups x 2 sentence groups (4 speakers, 3 texts): 4 units, said before training; fold 1 first,
    then the resume trains fold 2's cells only; the folds sheet has 2 folds, each its cells pooled."""
    first, said = speaker_sentence_run(tmp_path, mfcc, only_folds=[1])
    assert any("2 speaker groups x 2 sentence groups = 4 units" in line for line in said)
    models = tmp_path / "Models" / first.run_id
    record = json.loads((models / "config.json").read_text())
    units = ["fold_1_cell1", "fold_1_cell2", "fold_2_cell1", "fold_2_cell2"]
    assert [u["unit"] for u in record["folds"]] == units and [u["cell"] for u in record["folds"]] == [1, 2, 1, 2]
    tested = [s for u in record["folds"] for s in u["test_stems"]]
    assert len(tested) == len(set(tested)) == 84  # every utterance in one cell's test part
    assert sorted(p.stem for p in models.glob("fold_*.pt")) == units[:2]
    stamps = {u: (models / f"{u}.pt").stat().st_mtime_ns for u in units[:2]}
    run, _ = speaker_sentence_run(tmp_path, None, resume=first.run_id)
    assert sorted(p.stem for p in models.glob("fold_*.pt")) == units and run.summary["complete"]
    assert {u: (models / f"{u}.pt").stat().st_mtime_ns for u in units[:2]} == stamps  # finished cells not redone

    book = pd.read_excel(run.workbook, sheet_name=None)
    folds, cells, predictions = book["folds"], book["cells"], book["predictions"]
    assert folds.fold.tolist() == [1, 2, "mean", "std"] and folds.cells[:2].tolist() == [2, 2]
    assert cells[["fold", "cell"]].values.tolist() == [[1, 1], [1, 2], [2, 1], [2, 2]]
    assert folds.n_test[:2].tolist() == cells.groupby("fold").n_test.sum().tolist()
    assert len(predictions) == 84 and predictions.stem.is_unique and set(predictions.cell) == {1, 2}
    for k in (1, 2):
        mine = predictions[predictions.fold == k]
        assert folds.war[k - 1] == pytest.approx((mine.label == mine.predicted).mean() * 100)
        assert not set(mine.speaker) & set(predictions[predictions.fold != k].speaker)  # a fold = a speaker group
    assert folds.war[2] == pytest.approx(folds.war[:2].mean())  # the mean is over the 2 folds, not the 4 cells
    leakage = book["leakage"]
    assert leakage.iloc[-1].n_test == 84 and leakage.iloc[-1].shared_speaker == leakage.iloc[-1].shared_sentence == 0

    units = read_units(run.run_id, tmp_path / "Models")  # compare and the study: a fold's cells are one unit
    seed = record["config"]["train"]["seed"]
    assert sorted(units.metrics) == [(seed, 1), (seed, 2)]
    for (_, fold), metrics in units.metrics.items():
        assert len(units.tests[(seed, fold)]) == folds.n_test[fold - 1]
        for metric in ("war", "uar", "f1"):
            assert metrics[metric] == pytest.approx(folds[metric][fold - 1])
    assert units.folds == run.summary["folds"] == 2  # K_s speaker groups, not the 4 units


def test_a_speaker_sentence_folds_n_train_is_the_mean_of_its_cells(tmp_path, mfcc):
    """The corrected resampled t's n_train of a fold of cells: the mean of its cells' training parts, as the
    protocol rebuilds them, or, where it rebuilds other cells, as each saved cell's test part leaves them (the
    utterances sharing neither a speaker nor a text with it): the same numbers."""
    run, _ = speaker_sentence_run(tmp_path, mfcc)
    record = json.loads((tmp_path / "Models" / run.run_id / "config.json").read_text())
    config = record["config"]
    manifest = load_features(record["mfcc"], config["dataset"]["classes"], trust_pickle=True).manifest
    built, splits = protocol_splits(Config.from_dict(config), manifest)
    expected = {k: np.mean([len(s.train) for s in splits if s.fold == k]) for k in (1, 2)}
    assert all(len({len(s.train) for s in splits if s.fold == k}) == 2 for k in (1, 2))  # cells differ: a real mean
    assert read_units(run.run_id, tmp_path / "Models").train_sizes == expected
    saved = {k: [u["test_stems"] for u in record["folds"] if u["fold"] == k] for k in (1, 2)}
    assert training_sizes(config, manifest, saved) == expected
    for k, cells in saved.items():  # each saved cell's training part: no speaker and no text of its test part
        for stems in cells:
            test = built[built.stem.isin(stems)]
            apart = ~built.speaker.isin(test.speaker) & ~built.sentence.isin(test.sentence)
            assert int(apart.sum()) in [len(s.train) for s in splits if s.fold == k]
    other = config | {"train": config["train"] | {"folds": 3}}  # rebuilds other cells: the saved ones' parts
    rebuilt = protocol_splits(Config.from_dict(other), manifest)[1]
    assert all(sorted(map(sorted, saved[k])) != sorted(sorted(built.stem.iloc[s.test]) for s in rebuilt if s.fold == k)
               for k in (1, 2))  # fmt: skip
    assert training_sizes(other, manifest, saved) == expected


def test_resume_refuses_a_run_planned_with_other_units(tmp_path, mfcc):
    """A run whose record names other units (e.g. speaker-sentence folds made before they had cells) is not
    resumed with this version's units: one line, before anything trains."""
    cfg = load_config("EMODB", {**SHORT, "train.protocol": "speaker-sentence", "train.folds": 2, "train.epochs": 1})
    from timnet.training.run import prepare_run
    from timnet.training.run_store import Roots

    roots = Roots(tmp_path / "Models", tmp_path / "logs", tmp_path / "Results")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        run = prepare_run(cfg, mfcc, roots, device="cpu")
    path = roots.models / run.paths.run_id / "config.json"
    record = json.loads(path.read_text())
    record["folds"] = [{**u, "unit": f"fold_{u['fold']}"} for u in record["folds"] if u["cell"] == 1]
    path.write_text(json.dumps(record))
    with pytest.raises(TimnetError, match=r"planned with other units .* start a new run$") as err:
        prepare_run(None, None, roots, resume=run.paths.run_id, device="cpu")
    assert "\n" not in str(err.value) and not np.any([p.suffix == ".pt" for p in path.parent.iterdir()])


def test_a_study_of_a_grouped_protocol_reports_and_draws_each_speaker(tmp_path, mfcc):
    """speaker-sentence on 4 speakers: a speakers sheet (4 speakers x 2 policies) equal, at the run's own policy, to
    the run workbook's speakers sheet, a figure of them on the page, and results over the 2 pooled folds."""
    roots, record, report = small_study(
        tmp_path,
        'name = "grouped"\ndatasets = ["EMODB"]\nprotocols = ["speaker-sentence"]\n'
        'checkpoints = ["best-test", "last"]\n'
        '[set]\n"features.signal_length" = 16000\n"train.folds" = 2\n"train.epochs" = 1\n'
        f'[mfcc]\nEMODB = "{mfcc}"\n',
    )
    tables = report["tables"]
    assert tables["results"].units.tolist() == [2, 2]  # the 4 cells pooled into 2 folds, at each policy
    speakers = tables["speakers"]
    assert len(speakers) == 8 and speakers.speaker.tolist() == ["03", "08", "09", "10"] * 2
    run = record["runs"][0]["run_id"]
    own = pd.read_excel(roots.results / f"{run}.xlsx", sheet_name="speakers", dtype={"speaker": str})
    best = speakers[speakers.checkpoint.str.startswith("best-test")].reset_index(drop=True)
    assert best.speaker.tolist() == own.speaker.tolist() and best.n.tolist() == own.n.tolist()
    assert best.war.tolist() == pytest.approx(own.war.tolist()) and best.uar.tolist() == pytest.approx(own.uar.tolist())
    assert best.folds.astype(str).tolist() == own.folds.astype(str).tolist()
    assert set(pd.read_excel(report["xlsx"], sheet_name=None)) >= {"results", "speakers"}
    page = report["html"].read_text()
    assert "id='figure-speakers'" in page and page.count("data:image/png;base64,") == 2  # results, speakers


def test_a_study_of_savee_under_a_sentence_protocol_is_refused_before_any_run_exists(tmp_path, mfcc):
    from timnet.studies.study import run_study
    from timnet.training.run_store import Roots

    path = tmp_path / "texts.toml"
    path.write_text(
        'name = "texts"\ndatasets = ["EMODB", "SAVEE"]\nprotocols = ["sentence"]\ncheckpoints = ["last"]\n'
        f'[mfcc]\nEMODB = "{mfcc}"\nSAVEE = "{mfcc}"\n'  # any file: the refusal needs only that features exist
    )
    roots = Roots(tmp_path / "Models", tmp_path / "logs", tmp_path / "Results")
    with pytest.raises(TimnetError, match=r"^SAVEE: protocol sentence cannot keep texts apart — SAVEE numbers"):
        run_study(path, how=Execution(roots, device="cpu", workers=1, progress=False))
    assert not roots.models.exists()
