"""Two runs (or two variants) on the same folds, compared the way a paper should: paired over the units they share.

Per metric (WAR, UAR, in % as in the workbooks): the mean over the shared folds of each run (a fold trained with
several seeds counts once, its seeds averaged), the paired difference B − A with its 95 % confidence interval
(Student's t over folds), the paired t-test and the Wilcoxon signed-rank test over folds, and, for WAR (accuracy),
McNemar's exact test on the pooled test predictions of the first shared seed (the utterances one run got right and
the other wrong; each utterance once). Statistics from scipy. Runs are comparable only when they split the same
corpus the same way: same dataset, protocol and, per shared unit, the same test utterances.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from ..core.errors import TimnetError
from ..core.metrics import scores
from ..data.feature_files import load_features
from ..training.runs import features_unchanged, read_run_record, run_dir

COLUMNS = ["metric", "mean_a", "mean_b", "diff", "ci_low", "ci_high", "t_p", "wilcoxon_p", "mcnemar_p"]
COMPARED = {"WAR": "war", "UAR": "uar"}


@dataclass
class RunUnits:
    """A finished run's units as compare needs them: per unit key, its metrics and its test predictions."""

    run_id: str
    dataset: str
    protocol: str
    seeds: set
    metrics: dict  # key (seed, fold) -> {"war": %, "uar": %, "f1": %}; a fold's cells pooled (speaker-sentence)
    tests: dict  # key -> DataFrame[stem, label, predicted, correct, speaker] (class indices)
    config: dict  # the run's config (as its record holds it)


def read_units(run: str | Path, models_root: Path = Path("Models"), policy: str | None = None) -> RunUnits:
    """The finished units of a run with their test predictions and the labels of its feature file; `policy`: the
    checkpoint policy to read (default: the one the run chose; `last` of a best-val or best-test run too)."""
    import torch

    path = run_dir(run, models_root)
    record = read_run_record(path)
    mfcc = Path(record["mfcc"])
    if not features_unchanged(record):
        raise TimnetError(f"{mfcc}: the features of run {path.name} are missing or changed — compare needs its labels")
    classes = record["config"]["dataset"]["classes"]
    manifest = load_features(mfcc, classes, trust_pickle=True).manifest.set_index("stem")  # the run's own labels
    labels = manifest.class_index
    metrics, tests = {}, {}
    for unit in record["folds"]:
        file = path / f"{unit['unit']}.pt"
        if not file.is_file():
            continue
        saved = torch.load(file, map_location="cpu", weights_only=True)
        chosen = saved if policy in (None, saved["checkpoint"]) else saved.get("also", {}).get(policy)
        if chosen is None:
            raise TimnetError(f"{file}: no {policy} checkpoint in this unit (it was trained for {saved['checkpoint']})")
        key = (unit["seed"], unit["fold"])
        predicted = chosen["test_probs"].numpy().argmax(axis=1)
        stems = list(saved["test_stems"])
        truth = labels.loc[stems].to_numpy()
        table = pd.DataFrame({"stem": stems, "label": truth, "predicted": predicted, "correct": predicted == truth})
        table["speaker"] = manifest.speaker.loc[stems].astype(str).to_numpy()
        if key in tests:  # another cell of the fold (speaker-sentence): the fold's scores are of its cells pooled
            tests[key] = pd.concat([tests[key], table], ignore_index=True)
            metrics[key] = scores(tests[key].label.to_numpy(), tests[key].predicted.to_numpy())
        else:
            tests[key], metrics[key] = table, chosen["metrics"]
    if not metrics:
        raise TimnetError(f"{path}: no finished units — train (or resume) the run first")
    config = record["config"]
    seeds = {k[0] for k in metrics}
    return RunUnits(path.name, config["dataset"]["name"], config["train"]["protocol"], seeds, metrics, tests, config)


def shared_units(a: RunUnits, b: RunUnits) -> list[tuple[tuple, tuple]]:
    """[(A's unit key, B's unit key)] paired by (seed, fold), or by fold when each run has one seed; a line saying
    why not where the runs did not split the same corpus the same way."""
    if a.dataset != b.dataset:
        raise TimnetError(f"cannot compare: {a.run_id} is on {a.dataset}, {b.run_id} on {b.dataset}")
    if a.protocol != b.protocol:
        raise TimnetError(f"cannot compare: {a.run_id} uses protocol {a.protocol}, {b.run_id} {b.protocol}")
    by_fold = len(a.seeds) == 1 and len(b.seeds) == 1
    pick = (lambda key: key[1]) if by_fold else (lambda key: key)
    b_keys = {pick(k): k for k in b.metrics}
    pairs = [(k, b_keys[pick(k)]) for k in sorted(a.metrics) if pick(k) in b_keys]
    if not pairs:
        raise TimnetError(f"cannot compare: {a.run_id} and {b.run_id} share no finished unit (fold, seed)")
    for ka, kb in pairs:
        if list(a.tests[ka].stem) != list(b.tests[kb].stem):
            raise TimnetError(
                f"cannot compare: fold {ka[1]} tests other utterances in {a.run_id} than in {b.run_id} "
                "(another fold assignment: folds, seed or corpus files differ)"
            )
    return pairs


def paired_statistics(a: np.ndarray, b: np.ndarray) -> dict:
    """diff (mean of B − A), its 95 % t interval, the paired t-test's and Wilcoxon's two-sided p; NaN with fewer
    than two pairs. Differences all equal have no spread: the interval is the point, and t's p is 1 where they are
    all zero, else undefined (NaN): no spread to test against, not "significant"."""
    from scipy import stats

    d = np.asarray(b, float) - np.asarray(a, float)
    row = {"diff": float(d.mean()), "ci_low": math.nan, "ci_high": math.nan, "t_p": math.nan, "wilcoxon_p": math.nan}
    if len(d) < 2:
        return row
    if np.all(d == 0):
        return row | {"ci_low": 0.0, "ci_high": 0.0, "t_p": 1.0, "wilcoxon_p": 1.0}
    row["wilcoxon_p"] = float(stats.wilcoxon(b, a).pvalue)
    if np.all(d == d[0]):
        return row | {"ci_low": float(d[0]), "ci_high": float(d[0])}
    t = stats.ttest_rel(b, a)
    ci = t.confidence_interval(0.95)
    return row | {"ci_low": float(ci.low), "ci_high": float(ci.high), "t_p": float(t.pvalue)}


def mcnemar_p(correct_a: np.ndarray, correct_b: np.ndarray) -> float:
    """McNemar's exact test: the discordant utterances (one run right, the other wrong) against a fair coin."""
    from scipy.stats import binomtest

    only_a = int(np.sum(correct_a & ~correct_b))
    only_b = int(np.sum(~correct_a & correct_b))
    return 1.0 if only_a + only_b == 0 else float(binomtest(only_b, only_a + only_b, 0.5).pvalue)


def compare_runs(
    run_a: str | Path, run_b: str | Path, models_root: Path = Path("Models"), policy: str | None = None
) -> pd.DataFrame:
    """`COLUMNS`, one row per metric: A and B on the units they share (`shared_units`), each at `policy`'s
    checkpoint (default: the one each run chose)."""
    return compare_units(read_units(run_a, models_root, policy), read_units(run_b, models_root, policy))


def compare_units(a: RunUnits, b: RunUnits) -> pd.DataFrame:
    """`compare_runs` of two runs already read."""
    pairs = shared_units(a, b)
    folds = sorted({ka[1] for ka, _ in pairs})  # the samples of the tests: seeds of one fold are not independent
    first = min(ka[0] for ka, _ in pairs)  # McNemar: each test utterance once, as the first shared seed predicted it
    once = [(ka, kb) for ka, kb in pairs if ka[0] == first]
    pooled_a = np.concatenate([a.tests[ka].correct.to_numpy() for ka, _ in once])
    pooled_b = np.concatenate([b.tests[kb].correct.to_numpy() for _, kb in once])
    rows = []
    for name, key in COMPARED.items():
        va = np.array([np.mean([a.metrics[ka][key] for ka, _ in pairs if ka[1] == f]) for f in folds])
        vb = np.array([np.mean([b.metrics[kb][key] for ka, kb in pairs if ka[1] == f]) for f in folds])
        row = {"metric": name, "mean_a": float(va.mean()), "mean_b": float(vb.mean()), **paired_statistics(va, vb)}
        row["mcnemar_p"] = mcnemar_p(pooled_a, pooled_b) if key == "war" else math.nan
        rows.append(row)
    table = pd.DataFrame(rows, columns=COLUMNS)
    table.attrs |= {"a": a.run_id, "b": b.run_id, "units": len(folds), "utterances": len(pooled_a)}
    return table


def comparison_lines(table: pd.DataFrame) -> list[str]:
    """The comparison as the CLI prints it."""
    t = table.attrs
    lines = [
        f"A = {t['a']}, B = {t['b']}: {t['units']} shared folds, {t['utterances']} test predictions each",
        "diff = B − A (percentage points), 95 % CI over units; p: paired t-test, Wilcoxon signed-rank, McNemar (WAR)",
    ]
    return lines + [table.to_string(index=False, float_format=lambda v: f"{v:.4g}", na_rep="")]
