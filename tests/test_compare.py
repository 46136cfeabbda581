"""`timnet compare`: two runs on the units they share, with scipy's paired statistics on differences exact in counts
(ties stay ties, constant differences have no t, the corrected resampled t is Nadeau & Bengio's formula); refused in
one line when the runs did not split the corpus the same way or were read at other checkpoint policies."""

from __future__ import annotations

import subprocess
import sys
from fractions import Fraction

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import train
from scipy import stats

from timnet.analysis.compare import COLUMNS, compare_runs, mcnemar_p
from timnet.analysis.fold_statistics import fold_values, paired, size_ratio
from timnet.cli import main
from timnet.core.errors import TimnetError
from timnet.core.metrics import scores


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


def exact_scores(unit: dict) -> dict[str, Fraction]:
    """WAR and UAR (%) of a unit file, exactly, from its confusion matrix (counts)."""
    conf = np.array(unit["confusion"])
    tested = conf.sum(axis=1)
    recalls = [Fraction(int(conf[c, c]), int(tested[c])) for c in range(len(conf)) if tested[c]]
    war = 100 * Fraction(int(np.trace(conf)), int(conf.sum()))
    return {"war": war, "uar": 100 * sum(recalls, Fraction(0)) / len(recalls)}


WILCOXON_METHODS = {"exact": "exact", "normal approximation (tie and continuity corrected)": "asymptotic"}


@pytest.mark.slow
def test_compare_equals_scipy_on_the_exact_differences(runs):
    a_dir, b_dir, _ = runs
    table = compare_runs(a_dir, b_dir)
    assert list(table.columns) == COLUMNS and table.metric.tolist() == ["WAR", "UAR"]
    a, b = unit_files(a_dir), unit_files(b_dir)
    for row in table.itertuples():
        key = row.metric.lower()
        va, vb = [exact_scores(u)[key] for u in a], [exact_scores(u)[key] for u in b]
        assert [float(v) for v in va] == pytest.approx([u["metrics"][key] for u in a])  # the workbooks' numbers
        d = [y - x for x, y in zip(va, vb)]
        assert row.mean_a == pytest.approx(float(sum(va) / 2)) and row.diff == pytest.approx(float(sum(d) / 2))
        assert row.folds == row.folds_a == row.folds_b == 2 and row.policy_a == row.policy_b == "last"
        if d[0] == d[1]:  # two folds that moved alike in counts: no spread (constant cases are tested below)
            assert np.isnan(row.t_p) or (d[0] == 0 and row.t_p == 1)
            continue
        t = stats.ttest_rel([float(v) for v in vb], [float(v) for v in va])
        assert row.t_p == pytest.approx(t.pvalue)
        assert (row.t_ci_low, row.t_ci_high) == pytest.approx(tuple(t.confidence_interval(0.95)))
        nonzero = np.array([float(x) for x in d if x != 0])
        method = WILCOXON_METHODS.get(row.wilcoxon_method, stats.PermutationMethod())
        assert row.wilcoxon_p == pytest.approx(stats.wilcoxon(nonzero, method=method).pvalue)
        assert "Wilcoxon cannot reach 0.05" in row.note and row.wilcoxon_zero_method == "wilcox"
    for ua, ub in zip(a, b):
        assert ua["test_stems"] == ub["test_stems"]
        assert (np.array(ub["confusion"]).sum(axis=1) == np.array(ua["confusion"]).sum(axis=1)).all()
    assert 0 <= table.mcnemar_p.iloc[0] <= 1 and np.isnan(table.mcnemar_p.iloc[1])


def test_paired_statistics_and_mcnemar_are_scipys():
    a, b = [Fraction(v) for v in (80, 82, 85, 79, 90)], [Fraction(v) for v in (81, 85, 84, 83, 93)]
    row = paired(a, b, 0.25)
    t = stats.ttest_rel(np.array(b, float), np.array(a, float))
    assert row["t_p"] == pytest.approx(t.pvalue) and row["folds"] == 5
    assert row["wilcoxon_p"] == pytest.approx(stats.wilcoxon(np.array(b, float), np.array(a, float)).pvalue)
    assert (row["t_ci_low"], row["t_ci_high"]) == pytest.approx(tuple(t.confidence_interval(0.95)))
    assert "5 non-zero differences: Wilcoxon cannot reach 0.05" in row["note"]
    right_a = np.array([True] * 10 + [False] * 10)
    right_b = np.array([True] * 8 + [False] * 2 + [True] * 9 + [False])  # discordant: 2 only A, 9 only B
    assert mcnemar_p(right_a, right_b) == pytest.approx(stats.binomtest(9, 11, 0.5).pvalue)
    assert mcnemar_p(right_a, right_a) == 1.0


def fold_tests(correct: list[int], sizes: list[int], seed: int = 1) -> dict:
    """Units (seed, fold) whose test predictions get `correct[k]` of `sizes[k]` right (two classes, alternating)."""
    tests = {}
    for fold, (right, n) in enumerate(zip(correct, sizes), start=1):
        label = np.arange(n) % 2
        predicted = np.where(np.arange(n) < right, label, 1 - label)
        tests[(seed, fold)] = pd.DataFrame({"label": label, "predicted": predicted})
    return tests


def as_float_percentages(tests: dict, metric: str = "war") -> np.ndarray:
    """The per-fold numbers as the workbooks hold them (floats in %): what compare tested before."""
    return np.array([scores(t.label.to_numpy(), t.predicted.to_numpy())[metric] for t in tests.values()])


def test_a_tie_exact_in_counts_stays_a_tie_that_floats_would_split():
    sizes = [54] * 6
    a = [39, 40, 41, 42, 43, 44]
    b = [40, 41, 42, 43, 42, 43]  # four folds one utterance better, two one worse: |difference| 100/54 in each
    va, vb = fold_values(fold_tests(a, sizes), "war"), fold_values(fold_tests(b, sizes), "war")
    row = paired(list(va.values()), list(vb.values()), 0.1)
    # every |difference| tied: Wilcoxon's signed ranks reduce to the sign test, 4 of 6 positive
    assert row["wilcoxon_p"] == pytest.approx(stats.binomtest(4, 6, 0.5).pvalue)
    assert row["wilcoxon_method"].startswith("exact") and row["nonzero_diffs"] == 6
    fa, fb = as_float_percentages(fold_tests(a, sizes)), as_float_percentages(fold_tests(b, sizes))
    assert len(set(np.abs(fb - fa))) > 1  # rounding splits the tie...
    assert abs(stats.wilcoxon(fb, fa).pvalue - row["wilcoxon_p"]) > 0.1  # ...and moves the p-value


def test_constant_non_zero_differences_give_no_t_and_all_zero_give_p_one():
    sizes = [54] * 8
    a = [30, 33, 36, 39, 42, 45, 48, 51]
    b = [x + 1 for x in a]  # every fold exactly one utterance better
    va = list(fold_values(fold_tests(a, sizes), "war").values())
    vb = list(fold_values(fold_tests(b, sizes), "war").values())
    fa, fb = as_float_percentages(fold_tests(a, sizes)), as_float_percentages(fold_tests(b, sizes))
    assert len(set(fb - fa)) > 1  # in floats the differences have a spread of rounding errors
    row = paired(va, vb, 0.1)
    assert row["diff"] == pytest.approx(100 / 54) and row["folds"] == 8
    for name in ("t", "corrected_t"):
        assert np.isnan(row[f"{name}_p"]) and np.isnan(row[f"{name}_ci_low"]) and np.isnan(row[f"{name}_ci_high"])
    assert "no spread, t and its interval undefined" in row["note"]
    assert row["wilcoxon_p"] == pytest.approx(2 / 2**8)  # all 8 positive: the exact two-sided p
    same = paired(va, va, 0.1)
    assert same["diff"] == 0 and same["wilcoxon_p"] == 1 and same["nonzero_diffs"] == 0
    for name in ("t", "corrected_t"):
        assert same[f"{name}_p"] == 1 and same[f"{name}_ci_low"] == same[f"{name}_ci_high"] == 0
    assert "every difference is zero" in same["note"] and "Wilcoxon cannot reach 0.05" in same["note"]


def test_the_corrected_resampled_t_is_nadeau_and_bengios_formula():
    sizes = [54, 54, 54, 54, 54, 53, 53, 53, 53, 53]
    a = [40, 44, 47, 41, 45, 46, 42, 48, 43, 49]
    b = [42, 43, 50, 44, 45, 48, 41, 51, 46, 49]
    tests_a, tests_b = fold_tests(a, sizes), fold_tests(b, sizes)
    ratio = size_ratio(sizes, [535 - n for n in sizes])
    assert ratio == pytest.approx(np.mean([n / (535 - n) for n in sizes]))
    row = paired(list(fold_values(tests_a, "war").values()), list(fold_values(tests_b, "war").values()), ratio)
    d = np.array([100 * y / n - 100 * x / n for x, y, n in zip(a, b, sizes)])
    k = len(d)
    se = np.sqrt((1 / k + ratio) * d.var(ddof=1))  # the variance of the mean inflated by n_test / n_train
    t = d.mean() / se
    assert row["corrected_t_p"] == pytest.approx(2 * stats.t.sf(abs(t), k - 1))
    half = stats.t.ppf(0.975, k - 1) * se
    assert (row["corrected_t_ci_low"], row["corrected_t_ci_high"]) == pytest.approx((d.mean() - half, d.mean() + half))
    plain = stats.ttest_1samp(d, 0)
    assert row["t_p"] == pytest.approx(plain.pvalue) and row["t_p"] < row["corrected_t_p"]
    assert row["corrected_t_ci_high"] - row["corrected_t_ci_low"] > row["t_ci_high"] - row["t_ci_low"]
    assert row["wilcoxon_method"] == "exact (all sign flips: ties)" and row["nonzero_diffs"] == 8


def test_seeds_are_averaged_within_a_fold_from_counts():
    sizes = [10, 11]
    tests = fold_tests([7, 8], sizes, seed=1) | fold_tests([9, 6], sizes, seed=2)
    values = fold_values(tests, "war")
    assert values == {1: Fraction(100 * (7 + 9), 20), 2: Fraction(100 * (8 + 6), 22)}
    uar = fold_values(fold_tests([3], [4]), "uar")  # labels 0,1,0,1: the first 3 right -> recalls 2/2 and 1/2
    assert uar == {1: Fraction(75)}


@pytest.mark.slow
def test_runs_on_other_folds_are_refused_in_one_line(runs):
    a_dir, _, c_dir = runs
    with pytest.raises(TimnetError, match=r"^cannot compare: fold 1 tests other utterances"):
        compare_runs(a_dir, c_dir)


@pytest.mark.slow
def test_compare_cli_writes_the_csv(runs, tmp_path):
    a_dir, b_dir, c_dir = runs
    csv = tmp_path / "diff.csv"
    argv = [sys.executable, "-m", "timnet.cli", "compare", str(a_dir), str(b_dir), "--csv", str(csv)]
    done = subprocess.run(argv, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert "2 shared folds used (seeds averaged within a fold), 84 test predictions each" in done.stdout
    assert "policy last, protocol random, 2 folds" in done.stdout and "corrected resampled t" in done.stdout
    written = pd.read_csv(csv)
    assert list(written.columns) == COLUMNS and (written.folds == 2).all()
    assert written.wilcoxon_zero_method.eq("wilcox").all() and written.wilcoxon_method.notna().all()
    refused = subprocess.run(argv[:5] + [str(c_dir)], capture_output=True, text=True)
    assert refused.returncode == 2 and refused.stderr.startswith("timnet: error: cannot compare")


@pytest.fixture(scope="module")
def policy_runs(mfcc, tmp_path_factory):
    """The same 2 folds trained 2 epochs twice: the epoch picked on the test fold, and on validation."""
    root = tmp_path_factory.mktemp("policies")
    best_test = train(root, mfcc, folds=2, epochs=2, checkpoint="best-test")
    best_val = train(root, mfcc, folds=2, epochs=2, checkpoint="best-val")
    return root / "Models" / best_test.run_id, root / "Models" / best_val.run_id


@pytest.mark.slow
def test_compare_refuses_runs_at_other_policies_unless_allowed(policy_runs, tmp_path, capsys):
    best_test, best_val = policy_runs
    argv = [sys.executable, "-m", "timnet.cli", "compare", str(best_test), str(best_val)]
    refused = subprocess.run(argv, capture_output=True, text=True)
    assert refused.returncode == 2 and refused.stdout == "" and len(refused.stderr.strip().splitlines()) == 1
    assert refused.stderr.startswith("timnet: error: cannot compare:") and "best-test" in refused.stderr
    assert "best-val" in refused.stderr and "--allow-mixed-policies" in refused.stderr
    csv = tmp_path / "mixed.csv"
    assert main([*argv[3:], "--allow-mixed-policies", "--csv", str(csv)]) == 0  # the same CLI, in this process
    printed = capsys.readouterr().out
    assert f"A = {best_test.name} (policy best-test, protocol random, 2 folds)" in printed
    assert f"B = {best_val.name} (policy best-val, protocol random, 2 folds)" in printed
    written = pd.read_csv(csv)
    assert (written.policy_a == "best-test").all() and (written.policy_b == "best-val").all()
    assert (written.protocol_a == "random").all() and (written.folds_a == 2).all() and (written.folds_b == 2).all()
    last = compare_runs(best_test, best_val, policy="last")  # both read at their last epoch: comparable
    assert (last.policy_a == "last").all() and (last.policy_b == "last").all()
