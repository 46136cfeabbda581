"""Two runs (or two variants) on the same folds, compared the way a paper should: paired over the units they share.

Per metric (WAR, UAR, in % as in the workbooks), from the counts of correct test predictions (`fold_statistics`:
exact differences, seeds averaged within a fold, n = folds): the mean over the shared folds of each run, the paired
difference B − A with its 95 % confidence interval and p by the plain paired t and by the corrected resampled t
(Nadeau & Bengio 2003: the one to cite over CV folds), Wilcoxon's signed-rank test (its method and zero method
named), and, for WAR (accuracy), McNemar's exact test on the pooled test predictions of the first shared seed (the
utterances one run got right and the other wrong; each utterance once). Runs are comparable only when they split the
same corpus the same way (same dataset, protocol and, per shared unit, the same test utterances) and are read at the
same checkpoint policy (`allow_mixed_policies` says otherwise); every table names each side's policy, protocol and
folds.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from ..core.config import Config
from ..core.errors import TimnetError
from ..core.metrics import scores
from ..data.feature_files import load_features
from ..data.splits import protocol_splits
from ..training.run_store import features_unchanged, read_run_record, run_dir
from .fold_statistics import fold_values, paired, size_ratio

TESTED = ["t_ci_low", "t_ci_high", "t_p", "corrected_t_ci_low", "corrected_t_ci_high", "corrected_t_p"]
TESTED += ["wilcoxon_p", "wilcoxon_method", "wilcoxon_zero_method", "mcnemar_p"]
SIDES = ["policy_a", "policy_b", "protocol_a", "protocol_b", "folds_a", "folds_b"]
COLUMNS = ["metric", "mean_a", "mean_b", "diff", *TESTED, "folds", "nonzero_diffs", "test_train_ratio", "note"]
COLUMNS += SIDES
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
    policy: str = ""  # the checkpoint policy read
    train_sizes: dict | None = None  # fold -> utterances in its training part (the corrected resampled t's n_train)

    @property
    def folds(self) -> int:
        return len({fold for _, fold in self.metrics})

    def size_ratio(self, folds: list[int]) -> float:
        """Mean over `folds` of n_test / n_train (`fold_statistics.size_ratio`)."""
        tested = {fold: len(table) for (_, fold), table in self.tests.items()}
        return size_ratio([tested[f] for f in folds], [self.train_sizes[f] for f in folds])


def training_sizes(config: dict, manifest: pd.DataFrame, tested: dict[int, list[list[str]]]) -> dict[int, float]:
    """Per fold, the utterances of its training part (validation carved from it included) as the run's protocol
    builds it, from `tested`: per fold, the test stems of each of its units (one, or its cells under
    speaker-sentence). A fold of cells trains one model per cell, each on its own part (the other speakers' other
    sentences), so its n_train is the mean of its cells' training sizes (beside n_test, the fold's cells pooled).
    Where the parts built now are not the run's (made by an older version), each unit's training part is what its
    test part leaves (`_left_out`)."""
    protocol = config["train"]["protocol"]
    try:
        manifest, splits = protocol_splits(Config.from_dict(config), manifest)
    except TimnetError:
        splits = []
    built: dict[int, list] = {}
    for split in splits:
        built.setdefault(split.fold, []).append(split)
    sizes = {}
    for fold, cells in tested.items():
        rebuilt = built.get(fold, [])
        same = sorted(map(sorted, cells)) == sorted(sorted(manifest.stem.iloc[s.test]) for s in rebuilt)
        trains = [len(s.train) for s in rebuilt] if same else [_left_out(manifest, stems, protocol) for stems in cells]
        sizes[fold] = float(np.mean(trains))
    return sizes


def _left_out(manifest: pd.DataFrame, stems: list[str], protocol: str) -> int:
    """The utterances a unit testing `stems` trained on: the rest of the corpus (under speaker or sentence folds,
    the rest shares no group with them), less, under speaker-sentence, those sharing a speaker or a text with them."""
    tested = manifest.stem.isin(stems)
    if protocol != "speaker-sentence" or "sentence" not in manifest:
        return int((~tested).sum())
    test = manifest[tested]
    return int((~manifest.speaker.isin(test.speaker) & ~manifest.sentence.isin(test.sentence)).sum())


def read_units(run: str | Path, models_root: Path = Path("Models"), policy: str | None = None) -> RunUnits:
    """The finished units of a run with their test predictions and the labels of its feature file; `policy`: the
    checkpoint policy to read (default: the one the run chose; `last` of a best-val or best-test run too)."""
    import torch

    path = run_dir(run, models_root)
    record = read_run_record(path)
    mfcc = Path(record["mfcc"])
    if not features_unchanged(record):
        raise TimnetError(f"{mfcc}: the features of run {path.name} are missing or changed — compare needs its labels")
    config = record["config"]
    manifest = load_features(mfcc, config["dataset"]["classes"], trust_pickle=True).manifest  # the run's own
    by_stem = manifest.set_index("stem")
    labels = by_stem.class_index
    metrics, tests, cells = {}, {}, {}
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
        table["speaker"] = by_stem.speaker.loc[stems].astype(str).to_numpy()
        cells.setdefault(key, []).append(stems)
        if key in tests:  # another cell of the fold (speaker-sentence): the fold's scores are of its cells pooled
            tests[key] = pd.concat([tests[key], table], ignore_index=True)
            metrics[key] = scores(tests[key].label.to_numpy(), tests[key].predicted.to_numpy())
        else:
            tests[key], metrics[key] = table, chosen["metrics"]
    if not metrics:
        raise TimnetError(f"{path}: no finished units — train (or resume) the run first")
    seeds = {k[0] for k in metrics}
    sizes = training_sizes(config, manifest, {fold: cells[seed, fold] for seed, fold in sorted(tests, reverse=True)})
    dataset, protocol = config["dataset"]["name"], config["train"]["protocol"]
    used = policy or config["train"]["checkpoint"]
    return RunUnits(path.name, dataset, protocol, seeds, metrics, tests, config, used, sizes)


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


def mcnemar_p(correct_a: np.ndarray, correct_b: np.ndarray) -> float:
    """McNemar's exact test: the discordant utterances (one run right, the other wrong) against a fair coin."""
    from scipy.stats import binomtest

    only_a = int(np.sum(correct_a & ~correct_b))
    only_b = int(np.sum(~correct_a & correct_b))
    return 1.0 if only_a + only_b == 0 else float(binomtest(only_b, only_a + only_b, 0.5).pvalue)


def compare_runs(
    run_a: str | Path,
    run_b: str | Path,
    models_root: Path = Path("Models"),
    policy: str | None = None,
    allow_mixed_policies: bool = False,
) -> pd.DataFrame:
    """`COLUMNS`, one row per metric: A and B on the units they share (`shared_units`), each at `policy`'s
    checkpoint (default: the one each run chose)."""
    a, b = read_units(run_a, models_root, policy), read_units(run_b, models_root, policy)
    return compare_units(a, b, allow_mixed_policies)


def compare_units(a: RunUnits, b: RunUnits, allow_mixed_policies: bool = False) -> pd.DataFrame:
    """`compare_runs` of two runs already read; refused in one line where they were read at other policies."""
    if a.policy != b.policy and not allow_mixed_policies:
        raise TimnetError(
            f"cannot compare: {a.run_id} is read at checkpoint policy {a.policy}, {b.run_id} at {b.policy} "
            "(--policy P reads both at P; --allow-mixed-policies compares them anyway)"
        )
    pairs = shared_units(a, b)
    folds = sorted({ka[1] for ka, _ in pairs})  # the samples of the tests: seeds of one fold are not independent
    first = min(ka[0] for ka, _ in pairs)  # McNemar: each test utterance once, as the first shared seed predicted it
    once = [(ka, kb) for ka, kb in pairs if ka[0] == first]
    pooled_a = np.concatenate([a.tests[ka].correct.to_numpy() for ka, _ in once])
    pooled_b = np.concatenate([b.tests[kb].correct.to_numpy() for _, kb in once])
    tests_a, tests_b = {ka: a.tests[ka] for ka, _ in pairs}, {kb: b.tests[kb] for _, kb in pairs}
    ratio = a.size_ratio(folds)  # B tests the same utterances per fold
    sides = {"policy_a": a.policy, "policy_b": b.policy, "protocol_a": a.protocol, "protocol_b": b.protocol}
    sides |= {"folds_a": a.folds, "folds_b": b.folds}
    rows = []
    for name, key in COMPARED.items():
        va, vb = list(fold_values(tests_a, key).values()), list(fold_values(tests_b, key).values())
        row = {"metric": name, "mean_a": float(sum(va) / len(va)), "mean_b": float(sum(vb) / len(vb))}
        row |= paired(va, vb, ratio) | sides
        row["mcnemar_p"] = mcnemar_p(pooled_a, pooled_b) if key == "war" else math.nan
        rows.append(row)
    table = pd.DataFrame(rows, columns=COLUMNS)
    table.attrs |= {"a": a.run_id, "b": b.run_id, "units": len(folds), "utterances": len(pooled_a), "ratio": ratio}
    return table


def _interval(row: pd.Series, name: str) -> str:
    low, high, p = row[f"{name}_ci_low"], row[f"{name}_ci_high"], row[f"{name}_p"]
    return "undefined" if pd.isna(low) else f"[{low:.2f}, {high:.2f}] p={p:.3g}"


def comparison_lines(table: pd.DataFrame) -> list[str]:
    """The comparison as the CLI prints it: each side's policy, protocol and folds, the tests named, a note per
    metric where a test is undefined or cannot reach 0.05."""
    t, first = table.attrs, table.iloc[0]
    side = "{} (policy {}, protocol {}, {} folds)"
    lines = [
        f"A = {side.format(t['a'], first.policy_a, first.protocol_a, first.folds_a)}",
        f"B = {side.format(t['b'], first.policy_b, first.protocol_b, first.folds_b)}",
        f"{t['units']} shared folds used (seeds averaged within a fold), {t['utterances']} test predictions each; "
        "differences exact from the counts of correct predictions",
        "diff = B − A (percentage points); 95 % CI and p over folds: paired t (anti-conservative: the folds' training "
        f"parts overlap) and corrected resampled t (Nadeau & Bengio 2003, n_test/n_train {t['ratio']:.3f}: cite this "
        f"one); Wilcoxon signed-rank (zero_method={first.wilcoxon_zero_method}); McNemar exact (WAR, pooled)",
    ]
    shown = pd.DataFrame(
        {
            "metric": table.metric,
            "A": table.mean_a.map("{:.2f}".format),
            "B": table.mean_b.map("{:.2f}".format),
            "diff": table["diff"].map("{:+.2f}".format),
            "paired t": [_interval(r, "t") for _, r in table.iterrows()],
            "corrected resampled t": [_interval(r, "corrected_t") for _, r in table.iterrows()],
            "Wilcoxon p (method)": [f"{r.wilcoxon_p:.3g} ({r.wilcoxon_method})" for _, r in table.iterrows()],
            "McNemar p": table.mcnemar_p.map(lambda v: "" if pd.isna(v) else f"{v:.3g}"),
        }
    )
    lines.append(shown.to_string(index=False))
    return lines + [f"{r.metric}: {r.note}" for _, r in table.iterrows() if r.note]
