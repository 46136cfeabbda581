"""`timnet compare`: two runs on the units they share, with scipy's paired statistics; refused in one line when the
runs did not split the corpus the same way."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import train
from scipy import stats

from timnet.analysis.compare import COLUMNS, compare_runs, mcnemar_p, paired_statistics
from timnet.core.errors import TimnetError


@pytest.fixture(scope="module")
def runs(trained_run, mfcc, tmp_path_factory):
    """A = the shared tiny run (2 folds x 3 epochs); B = the same folds trained 6 epochs; C = 3 folds."""
    root, _, a = trained_run
    other = tmp_path_factory.mktemp("compare")
    b = train(other, mfcc, folds=2, epochs=6)
    c = train(other, mfcc, folds=3, epochs=1)
    return root / "Models" / a.run_id, other / "Models" / b.run_id, other / "Models" / c.run_id


def unit_files(run_dir):
    return [torch.load(p, weights_only=True) for p in sorted(run_dir.glob("fold_*.pt"))]


def test_compare_equals_scipy_on_the_same_inputs(runs):
    a_dir, b_dir, _ = runs
    table = compare_runs(a_dir, b_dir)
    assert list(table.columns) == COLUMNS and table.metric.tolist() == ["WAR", "UAR"]
    a, b = unit_files(a_dir), unit_files(b_dir)
    for row in table.itertuples():
        key = row.metric.lower()
        va, vb = np.array([u["metrics"][key] for u in a]), np.array([u["metrics"][key] for u in b])
        assert row.mean_a == pytest.approx(va.mean()) and row.mean_b == pytest.approx(vb.mean())
        assert row.diff == pytest.approx((vb - va).mean())
        if np.all(vb - va == (vb - va)[0]):
            continue  # two folds that moved alike: no spread (the constant case is tested below)
        t = stats.ttest_rel(vb, va)
        assert row.t_p == pytest.approx(t.pvalue)
        assert (row.ci_low, row.ci_high) == pytest.approx(tuple(t.confidence_interval(0.95)))
        assert row.wilcoxon_p == pytest.approx(stats.wilcoxon(vb, va).pvalue)
    labels = {}
    for u in a:
        conf = np.array(u["confusion"])
        labels[u["fold"]] = conf.sum(axis=1)  # per-class counts: the same test utterances in both runs
    for ua, ub in zip(a, b):
        assert ua["test_stems"] == ub["test_stems"]
        assert (np.array(ub["confusion"]).sum(axis=1) == labels[ua["fold"]]).all()
    assert 0 <= table.mcnemar_p.iloc[0] <= 1 and np.isnan(table.mcnemar_p.iloc[1])


def test_paired_statistics_and_mcnemar_are_scipys():
    a, b = np.array([80.0, 82, 85, 79, 90]), np.array([81.0, 85, 84, 83, 93])
    row = paired_statistics(a, b)
    t = stats.ttest_rel(b, a)
    assert row["t_p"] == pytest.approx(t.pvalue) and row["wilcoxon_p"] == pytest.approx(stats.wilcoxon(b, a).pvalue)
    assert (row["ci_low"], row["ci_high"]) == pytest.approx(tuple(t.confidence_interval(0.95)))
    same = paired_statistics(a, a)
    assert same["diff"] == 0 and same["t_p"] == 1 and same["wilcoxon_p"] == 1 and same["ci_low"] == same["ci_high"] == 0
    right_a = np.array([True] * 10 + [False] * 10)
    right_b = np.array([True] * 8 + [False] * 2 + [True] * 9 + [False])  # discordant: 2 only A, 9 only B
    assert mcnemar_p(right_a, right_b) == pytest.approx(stats.binomtest(9, 11, 0.5).pvalue)
    assert mcnemar_p(right_a, right_a) == 1.0


def test_runs_on_other_folds_are_refused_in_one_line(runs):
    a_dir, _, c_dir = runs
    with pytest.raises(TimnetError, match=r"^cannot compare: fold 1 tests other utterances"):
        compare_runs(a_dir, c_dir)


def test_compare_cli_writes_the_csv(runs, tmp_path):
    a_dir, b_dir, c_dir = runs
    csv = tmp_path / "diff.csv"
    argv = [sys.executable, "-m", "timnet.cli", "compare", str(a_dir), str(b_dir), "--csv", str(csv)]
    done = subprocess.run(argv, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert "2 shared folds, 84 test predictions each" in done.stdout
    assert list(pd.read_csv(csv).columns) == COLUMNS
    refused = subprocess.run(argv[:5] + [str(c_dir)], capture_output=True, text=True)
    assert refused.returncode == 2 and refused.stderr.startswith("timnet: error: cannot compare")
