"""`timnet study`: a study grid end to end in quick mode, its report's tables checked against the runs' own units
and scipy, the quick label on every table and at the top of the page, missing corpora listed, and the page itself
in headless Chromium (skips without it)."""

from __future__ import annotations

import shutil
import subprocess
import sys
import warnings
from fractions import Fraction

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import REPO, small_study
from scipy import stats

from timnet.analysis.compare import compare_runs
from timnet.analysis.fold_statistics import TESTS, fold_values, size_ratio, t_intervals
from timnet.cli_options import build_parser
from timnet.core.errors import TimnetError
from timnet.studies.study import load_study, plan_study, restrict, run_study, trained_policy
from timnet.training.execution import Execution
from timnet.training.run_store import Roots


def study_file(tmp_path, mfcc, protocols='["random", "sentence"]') -> object:
    path = tmp_path / "mini.toml"
    path.write_text(
        f'name = "mini"\ndatasets = ["EMODB", "RAVDESS"]\nprotocols = {protocols}\n'
        'checkpoints = ["best-test", "last"]\nbaseline = "TIM-Net"\n'
        '[variants]\n"TIM-Net" = {}\n"w/o TAB" = { "model.gate" = false }\n'
        '[set]\n"features.signal_length" = 16000\n'
        '[quick]\n"train.folds" = 2\n"train.epochs" = 3\n'
        f'[mfcc]\nEMODB = "{mfcc}"\n'
    )
    return path


@pytest.fixture(scope="module")
def quick_study(mfcc, tmp_path_factory):
    root = tmp_path_factory.mktemp("study")
    roots = Roots(root / "Models", root / "logs", root / "Results")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        how = Execution(roots, device="cpu", workers=2, threads=1, progress=False)
        record, report = run_study(study_file(root, mfcc), quick=True, how=how)
    return roots, record, report


@pytest.mark.slow
def test_a_quick_study_reports_every_run_at_both_policies(quick_study):
    roots, record, report = quick_study
    assert len(record["runs"]) == 4  # EMODB x (random, sentence) x (TIM-Net, w/o TAB); RAVDESS has no features
    results = report["tables"]["results"]
    assert len(results) == 8 and results["mode"].str.startswith("QUICK (2 folds x 3 epochs)").all()
    for row in results.itertuples():
        units = [torch.load(p, weights_only=True) for p in sorted((roots.models / row.run).glob("fold_*.pt"))]
        chosen = [
            u["metrics"] if row.checkpoint.startswith("best-test") else u["also"]["last"]["metrics"] for u in units
        ]
        war = np.array([m["war"] for m in chosen])
        assert row.units == row.folds == 2 and row.war_per_fold_mean == pytest.approx(war.mean())
        if abs(war[0] - war[1]) < 1e-9:  # equal in counts: no spread, no interval, a note
            assert np.isnan(row.war_t_ci_low) and "no spread" in row.note
            continue
        low, high = stats.t.interval(0.95, 1, loc=war.mean(), scale=stats.sem(war))
        assert (row.war_t_ci_low, row.war_t_ci_high) == pytest.approx((low, high))
        assert row.war_corrected_t_ci_low < row.war_t_ci_low and row.war_corrected_t_ci_high > row.war_t_ci_high
        assert 0 <= row.war_pooled <= 100 and 0 <= row.uar_pooled <= 100
    random_best = results[(results.protocol == "random") & results.checkpoint.str.startswith("best-test")]
    full, ablated = random_best[random_best.variant == "TIM-Net"], random_best[random_best.variant == "w/o TAB"]
    # a quick study is not the paper's setting: the gate's reasons stand where the paper's number stood
    quick = "paper: not comparable: quick study, 2 folds, 3 epochs, features.signal_length 16000, 20 of 535 "
    assert (full.published == quick + "utterances, 64 utterances not in the corpus, audio trimmed to 0.60 s").all()
    assert "published_war" not in results or results.published_war.isna().all()
    assert ablated.published.str.startswith("none for w/o TAB").all()
    sentence = results[(results.protocol == "sentence") & (results.variant == "TIM-Net")]
    assert sentence.published.str.contains("not comparable: quick study, sentence protocol").all()
    last = results[results.checkpoint.str.startswith("last") & (results.variant == "TIM-Net")]
    assert last.published.str.startswith("authors' 2023 update: not comparable: quick study").all()
    missing = report["tables"]["missing"]
    assert missing.dataset.tolist() == ["RAVDESS"] and "no features" in missing.reason.iat[0]


@pytest.mark.slow
def test_ablations_are_the_paired_comparison_of_the_same_folds(quick_study):
    roots, record, report = quick_study
    ablations = report["tables"]["ablations"]
    assert len(ablations) == 2 * 2 * 2  # protocols x policies x (WAR, UAR) for the one variant
    runs = {(r["protocol"], r["variant"]): r["run_id"] for r in record["runs"]}
    for policy, label in (("best-test", "best-test"), ("last", "last")):
        direct = compare_runs(roots.models / runs[("random", "TIM-Net")], roots.models / runs[("random", "w/o TAB")],
                              roots.models, policy)  # fmt: skip
        mine = ablations[(ablations.protocol == "random") & ablations.checkpoint.str.startswith(label)]
        for metric in ("WAR", "UAR"):
            got, want = mine[mine.metric == metric].iloc[0], direct[direct.metric == metric].iloc[0]
            assert got["diff"] == pytest.approx(want["diff"]) and got.mean_a == pytest.approx(want.mean_a)


@pytest.mark.slow
def test_the_workbook_and_page_say_quick_everywhere(quick_study):
    roots, record, report = quick_study
    sheets = pd.read_excel(report["xlsx"], sheet_name=None)
    assert set(sheets) == {"results", "ablations", "missing", "runs"}
    assert all(s["mode"].str.startswith("QUICK").all() for s in sheets.values() if len(s))
    page = report["html"].read_text()
    assert page.count("QUICK (2 folds x 3 epochs)") == 1 + 4  # the top, and every section
    assert page.count("data:image/png;base64,") == 2 and "<table" in page and "http" not in page.split("<body>")[1]


@pytest.mark.slow
def test_the_markdown_table_has_every_result_row_and_its_numbers(quick_study):
    roots, record, report = quick_study
    text = report["md"].read_text()
    assert text.startswith(f"Study `{record['study']}` (QUICK (2 folds x 3 epochs)")
    rows = [line for line in text.splitlines() if line.startswith("| EMODB")]
    results = report["tables"]["results"]
    assert len(rows) == len(results) == 8
    assert "corrected resampled t (Nadeau & Bengio 2003), the one to cite" in text
    for line, (_, row) in zip(rows, results.iterrows()):  # noqa: B905 (asserted equal above)
        cells = [c.strip() for c in line.strip("|").split("|")]
        assert cells[:3] == [row.dataset, row.protocol, row.variant]
        assert cells[4].startswith(f"{row.war_per_fold_mean:.2f}") and f"pooled {row.war_pooled:.2f}" in cells[4]
        if not np.isnan(row.war_t_ci_low):
            plain, corrected = (f"[{row[f'war_{n}_ci_low']:.2f}, {row[f'war_{n}_ci_high']:.2f}]" for n in TESTS)
            assert f"{corrected} (t: {plain}; 2 folds)" in cells[4]
        assert cells[6] == row.published and cells[7] == ""  # the gate's reason, no number (a quick study)


def test_a_study_with_two_seeds_has_its_interval_over_the_fold_means(mfcc, tmp_path):
    roots, record, report = small_study(
        tmp_path,
        'name = "seeds"\ndatasets = ["EMODB"]\nprotocols = ["random"]\ncheckpoints = ["last"]\n'
        '[set]\n"features.signal_length" = 16000\n"train.seeds" = [1, 2]\n'
        f'[quick]\n"train.folds" = 3\n"train.epochs" = 1\n[mfcc]\nEMODB = "{mfcc}"\n',
        quick=True,
    )
    row = report["tables"]["results"].iloc[0]
    units = [torch.load(p, weights_only=True) for p in sorted((roots.models / row.run).glob("fold_*.pt"))]
    assert len(units) == 6 and row.units == 6 and row.folds == 3
    means = np.array([np.mean([u["metrics"]["war"] for u in units if u["fold"] == k]) for k in (1, 2, 3)])
    assert row.war_per_fold_mean == pytest.approx(means.mean())
    low, high = stats.t.interval(0.95, 2, loc=means.mean(), scale=stats.sem(means))  # n = 3 folds, not 6 units
    assert (row.war_t_ci_low, row.war_t_ci_high) == pytest.approx((low, high))
    n_test = np.array([len(u["test_stems"]) for u in units if u["seed"] == 1])
    ratio = np.mean(n_test / (84 - n_test))  # random folds: a fold trains on every utterance it does not test
    half = stats.t.ppf(0.975, 2) * np.sqrt((1 / 3 + ratio) * means.var(ddof=1))
    assert (row.war_corrected_t_ci_low, row.war_corrected_t_ci_high) == pytest.approx(
        (means.mean() - half, means.mean() + half)
    )


def test_study_help_names_protocols_as_examples_of_protocols():
    study = " ".join(build_parser()._subparsers._group_actions[0].choices["study"].format_help().split())
    assert "e.g. random,speaker" in study and "e.g. EMODB,SAVEE" in study


@pytest.mark.slow
def test_a_resumed_study_writes_its_report_again(quick_study, tmp_path):
    roots, record, report = quick_study
    before = report["html"].stat().st_mtime_ns
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        how = Execution(roots, device="cpu", workers=1, progress=False)
        again, second = run_study(resume=record["study"], how=how)
    assert again["runs"] == record["runs"] and second["html"].stat().st_mtime_ns > before
    pd.testing.assert_frame_equal(second["tables"]["results"], report["tables"]["results"])


@pytest.mark.slow
def test_report_only_reports_the_units_trained_so_far_and_trains_none(quick_study, tmp_path):
    roots, record, _ = quick_study
    copy = Roots(tmp_path / "Models", tmp_path / "logs", tmp_path / "Results")
    for source, target in zip((roots.models, roots.logs, roots.results), (copy.models, copy.logs, copy.results)):
        shutil.copytree(source, target)
    run = record["runs"][0]["run_id"]
    (copy.models / run / "fold_2.pt").unlink()  # a unit still training elsewhere
    how = Execution(copy, device="cpu", workers=1, progress=False)
    _, partial = run_study(resume=record["study"], how=how, report_only=True)
    assert not (copy.models / run / "fold_2.pt").exists()
    results = partial["tables"]["results"]
    assert (results[results.run == run].units == 1).all() and (results[results.run != run].units == 2).all()
    assert set(results[results.run == run].trained) == {"PARTIAL: 1 of 2 folds"}
    assert set(results[results.run != run].trained) == {"complete"}
    assert f"**Not complete** (resume the study): {run} PARTIAL: 1 of 2 folds" in partial["md"].read_text()
    with pytest.raises(TimnetError, match=r"^--report-only needs --resume ID"):
        run_study(study_file(tmp_path, "x.npy"), how=how, report_only=True)


def test_study_files_are_checked_in_one_line(tmp_path, mfcc):
    for text, message in [
        ('datasets = ["EMODB"]\nprotocols = ["randm"]', "'randm' is not one of random, speaker, sentence"),
        ('datasets = "EMODB"', "datasets must be a non-empty list"),
        ('datasets = ["EMODB"]\nbaseline = "full"', "baseline 'full' is not one of the variants"),
        ('datasets = ["EMODB"]\nepochs = 3', "unknown key(s) ['epochs']"),
    ]:
        bad = tmp_path / "bad.toml"
        bad.write_text(text)
        with pytest.raises(TimnetError, match=message.replace("(", r"\(").replace(")", r"\)").replace("[", r"\[")):
            load_study(bad)
    assert trained_policy(["last", "best-val", "best-test"]) == {"train.checkpoint": "best-val", "train.test_every": 1}
    assert trained_policy(["last"]) == {"train.checkpoint": "last"}
    paper = load_study(REPO / "studies" / "paper.toml")
    only = restrict(paper, {"datasets": ["EMODB"], "protocols": ["random"], "quick": True})
    assert (only["datasets"], only["protocols"]) == (["EMODB"], ["random"]) and len(plan_study(only, False)) == 1
    with pytest.raises(TimnetError, match=r"^--datasets EMO: not among the study's datasets \(CASIA, EMODB"):
        restrict(paper, {"datasets": ["EMO"]})
    for shipped in ("studies/paper.toml", "studies/ablations.toml"):
        study = load_study(REPO / shipped)
        assert plan_study(study, quick=True) and study["baseline"] == "TIM-Net"


def test_nothing_to_train_is_one_line(tmp_path):
    path = tmp_path / "none.toml"
    path.write_text('datasets = ["RAVDESS"]\n')
    done = subprocess.run([sys.executable, "-m", "timnet.cli", "study", str(path), "--quick"], capture_output=True,
                          text=True, cwd=tmp_path)  # fmt: skip
    assert done.returncode == 2 and done.stderr.count("\n") == 1 and "nothing to train" in done.stderr


@pytest.mark.slow
@pytest.mark.browser
def test_the_report_shows_its_tables_and_figures_in_chromium(quick_study):
    from test_browser import _browser, _needs

    roots, record, report = quick_study
    driver = _browser(*_needs())
    try:
        driver.get(report["html"].as_uri())
        shown = driver.execute_script(
            "return {tables: [...document.querySelectorAll('table')].map(t => t.rows.length),"
            " images: [...document.querySelectorAll('img')].map(i => [i.naturalWidth, i.naturalHeight]),"
            " banner: document.querySelector('.mode').innerText}"
        )
    finally:
        driver.quit()
    assert shown["tables"][:2] == [9, 9]  # header + 8 result rows; header + 8 ablation rows
    assert len(shown["images"]) == 2 and all(w > 100 and h > 100 for w, h in shown["images"])
    assert shown["banner"].startswith("QUICK")


def test_the_readmes_corrected_intervals_recompute_from_the_committed_study():
    """The README's corrected resampled t intervals of the committed EMO-DB study, and its report's with the plain
    t's: from its per-fold predictions (best-test) and its epoch logs (last epoch: test accuracy x fold size is the
    count of correct predictions)."""
    folder = REPO / "benchmarks" / "results" / "paper_study_emodb_20261207"
    predictions = pd.read_excel(folder / "EMODB_random_best-test_20261207-031500.xlsx", sheet_name="predictions")
    tests = {(46, int(fold)): table for fold, table in predictions.groupby("fold")}
    sizes = [len(tests[(46, k)]) for k in range(1, 11)]
    ratio = size_ratio(sizes, [len(predictions) - n for n in sizes])
    last = []
    for k, n in enumerate(sizes, start=1):
        accuracy = pd.read_csv(folder / "epochs" / f"fold_{k}.csv").test_acc.iloc[-1]
        last.append(100 * Fraction(round(accuracy * n / 100), n))
        assert float(last[-1]) == pytest.approx(accuracy)
    readme = " ".join((REPO / "README.md").read_text().split())
    report = (folder / "paper_20261207-031500.md").read_text()
    for policy, values in (("best-test", list(fold_values(tests, "war").values())), ("last", last)):
        got = t_intervals(values, ratio)
        corrected, plain = (f"[{got[f'{n}_ci_low']:.2f}, {got[f'{n}_ci_high']:.2f}]" for n in ("corrected_t", "t"))
        assert f"{got['mean']:.2f} {corrected} (t: {plain})" in readme  # the README's table row of the policy
        (line,) = [line for line in report.splitlines() if f"| {policy} |" in line]
        assert f"{got['mean']:.2f} {corrected} (t: {plain}; 10 folds)" in line
