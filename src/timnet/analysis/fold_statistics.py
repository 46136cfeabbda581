"""Statistics over cross-validation folds, from counts: the one implementation `compare` and the study use.

A fold's accuracy is a ratio of integers (WAR: correct / tested; UAR: the mean over the classes present of
correct / tested in the class), so fold values and their paired differences stay exact fractions until a test needs
floats: differences equal in counts stay ties for Wilcoxon's ranks, and constant or all-zero differences are seen
as such, not as a spread of rounding errors (which gave a paired t p of 1e-30 and a "CI" 4e-14 wide). Seeds of one
fold share its test utterances, so they are averaged within the fold and the folds are the samples (n = folds).

The plain Student t over folds is anti-conservative: the folds' training parts overlap, so their results are
correlated. The corrected resampled t (Nadeau & Bengio 2003, "Inference for the generalization error") inflates the
variance of the mean from s²/k to (1/k + n_test/n_train)·s², with n_test/n_train the mean over the folds of each
fold's ratio (folds of a corpus differ by an utterance or, under speaker folds, by more); its interval and test are
the ones to cite. Wilcoxon's signed-rank test drops zero differences (`zero_method="wilcox"`); with fewer than 6
non-zero differences its two-sided exact p cannot go below 2/2^5 = 0.0625, so it cannot reach 0.05.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Iterable, Sequence
from fractions import Fraction

import numpy as np
import pandas as pd

LEVEL = 0.95
ZERO_METHOD = "wilcox"
WILCOXON_MIN_NONZERO = 6  # the fewest non-zero differences whose two-sided exact p can be below 0.05
TESTS = ("t", "corrected_t")  # column prefixes: the plain Student t and the corrected resampled t


def accuracy(labels: Iterable[int], predicted: Iterable[int], metric: str) -> Fraction:
    """WAR or UAR in %, exactly: from the counts of correct test predictions (UAR: per class present)."""
    table = pd.DataFrame({"label": list(labels), "correct": np.asarray(list(predicted)) == np.asarray(list(labels))})
    if metric == "war":
        return 100 * Fraction(int(table.correct.sum()), len(table))
    recalls = [Fraction(int(c.sum()), len(c)) for _, c in table.groupby("label").correct]
    return 100 * sum(recalls, Fraction(0)) / len(recalls)


def fold_values(tests: dict[tuple, pd.DataFrame], metric: str) -> dict[int, Fraction]:
    """Per fold, the metric of each (seed, fold) unit's test predictions (`label`, `predicted`), seeds averaged."""
    by_fold: dict[int, list[Fraction]] = {}
    for (_, fold), table in sorted(tests.items()):
        by_fold.setdefault(fold, []).append(accuracy(table.label, table.predicted, metric))
    return {fold: sum(values, Fraction(0)) / len(values) for fold, values in sorted(by_fold.items())}


def size_ratio(test_sizes: Iterable[int], train_sizes: Iterable[int]) -> float:
    """The corrected resampled t's n_test/n_train: the mean over folds of each fold's own ratio."""
    return float(np.mean([n_test / n_train for n_test, n_train in zip(test_sizes, train_sizes, strict=True)]))


def t_intervals(values: Sequence[Fraction], ratio: float) -> dict:
    """Mean, and per test (`TESTS`) its 95 % interval and two-sided p against 0, over the folds' `values`; NaN with
    a note where t is undefined (one fold, or no spread: never a p of ~0 from rounding)."""
    from scipy import stats

    k = len(values)
    mean = sum(values, Fraction(0)) / k if k else Fraction(0)
    row = {"mean": float(mean) if k else math.nan, "folds": k, "note": ""}
    row |= {f"{name}_{part}": math.nan for name in TESTS for part in ("ci_low", "ci_high", "p")}
    if k < 2:
        return row | {"note": f"{k} fold(s): no interval"}
    variance = statistics.variance(values)  # exact: a Fraction
    if variance == 0:
        return row | {"note": f"all {k} values equal ({float(values[0]):.4g}): no spread, t and its interval undefined"}
    for name, scale2 in (("t", variance / k), ("corrected_t", (Fraction(1, k) + Fraction(ratio)) * variance)):
        scale = math.sqrt(scale2)
        low, high = stats.t.interval(LEVEL, k - 1, loc=float(mean), scale=scale)
        p = 2 * stats.t.sf(abs(float(mean)) / scale, k - 1)
        row |= {f"{name}_ci_low": float(low), f"{name}_ci_high": float(high), f"{name}_p": float(p)}
    return row


def wilcoxon(diffs: Sequence[Fraction]) -> tuple[float, str]:
    """Wilcoxon's signed-rank two-sided p over exact differences, and how it was computed: the exact null
    distribution without ties; with ties (exact ones, so real ones) every 2^n sign flip of up to 13 differences
    (exact too); a normal approximation beyond."""
    from scipy import stats

    nonzero = [d for d in diffs if d != 0]  # zero_method "wilcox": zeros are dropped
    if not nonzero:
        return 1.0, "none: every difference is zero"
    d = np.array([float(x) for x in nonzero])  # equal fractions give equal floats: ties stay ties
    if len({abs(x) for x in nonzero}) == len(nonzero) and len(d) <= 50:
        method, name = "exact", "exact"
    elif len(d) <= 13:
        method, name = stats.PermutationMethod(n_resamples=2 ** len(d)), "exact (all sign flips: ties)"
    else:
        method, name = "asymptotic", "normal approximation (tie and continuity corrected)"
    return float(stats.wilcoxon(d, zero_method=ZERO_METHOD, method=method).pvalue), name


def paired(a: Sequence[Fraction], b: Sequence[Fraction], ratio: float) -> dict:
    """B − A over paired fold values: the mean difference, the plain and the corrected resampled t (interval and p),
    Wilcoxon's p with its method and zero method, the number of folds and of non-zero differences, and a note.
    All differences zero: p = 1 and intervals [0, 0]."""
    diffs = [vb - va for va, vb in zip(a, b, strict=True)]
    t = t_intervals(diffs, ratio)
    row = {"diff": t.pop("mean"), **t}
    nonzero = sum(d != 0 for d in diffs)
    if diffs and nonzero == 0:
        row |= {f"{name}_{part}": 0.0 for name in TESTS for part in ("ci_low", "ci_high")}
        row |= {f"{name}_p": 1.0 for name in TESTS} | {"note": "every difference is zero"}
    p, method = wilcoxon(diffs) if len(diffs) >= 2 else (math.nan, "none: fewer than 2 folds")
    notes = [row["note"]] if row["note"] else []
    if nonzero < WILCOXON_MIN_NONZERO:
        notes.append(f"{nonzero} non-zero differences: Wilcoxon cannot reach 0.05 (two-sided exact needs 6)")
    row |= {"wilcoxon_p": p, "wilcoxon_method": method, "wilcoxon_zero_method": ZERO_METHOD}
    return row | {"nonzero_diffs": nonzero, "test_train_ratio": ratio, "note": "; ".join(notes)}
