"""Apply the published-number gate (`timnet.core.published`) and the confidence intervals over folds
(`timnet.analysis.fold_statistics`: the plain and the corrected resampled t) to a committed study report whose runs'
unit files were not kept, and write the report again (xlsx, html, md) with `timnet.studies.study_report`.

What the gate needs comes from the committed files and the audio the features were made of: each run's config from
its workbook's `config` sheet, the study's quick mode from its record, and the feature facts (utterances, sample
order, source sample rates and lengths) from the corpus folder's file names and audio headers, read as `timnet
preprocess` reads them. The intervals come from the per-fold values the committed files hold, as exact counts: a
run's predictions (best-test: WAR and UAR) and its epoch logs (last epoch: test accuracy x fold size is the count of
correct predictions; WAR only). Where no per-fold values were kept (UAR at the last epoch), the corrected interval
is the committed plain t interval widened by sqrt(1 + k n_test/n_train), the same variance inflation, exactly. Means
and pooled values are the committed results table's.

    python tools/restate_published.py benchmarks/results/paper_study_emodb_20261207 ../shared/data/emodb-22k-2s
"""

from __future__ import annotations

import ast
import json
import math
import sys
import tempfile
import warnings
from fractions import Fraction
from pathlib import Path

import pandas as pd

from timnet.analysis.fold_statistics import fold_values, size_ratio, t_intervals
from timnet.core.atomic import write_bytes
from timnet.core.config import Config
from timnet.core.published import not_comparable
from timnet.core.report import write_workbook
from timnet.data.corpora import build_manifest
from timnet.data.feature_facts import feature_facts, source_audio
from timnet.studies.study_report import (
    CI_COLUMNS,
    POLICY_LABELS,
    ablations_figure,
    markdown,
    page,
    published_columns,
    results_figure,
)

PUBLISHED_COLUMNS = ["published", "published_war", "war_minus_published", "published_uar", "uar_minus_published"]


def fold_accuracies(folder: Path, run: str, policy: str) -> tuple[dict[str, list[Fraction]], float]:
    """Per metric, the per-fold values (seeds averaged) the committed files hold for `run` at `policy`, and the
    folds' mean n_test / n_train (random folds: a fold trains on every utterance it does not test)."""
    predictions = pd.read_excel(folder / f"{run}.xlsx", sheet_name="predictions")
    tests = {(int(seed), int(fold)): table for (seed, fold), table in predictions.groupby(["seed", "fold"])}
    sizes = {fold: len(table) for (_, fold), table in tests.items()}  # seeds of a fold test the same utterances
    ratio = size_ratio(sizes.values(), [predictions.stem.nunique() - n for n in sizes.values()])
    if policy == "best-test":
        return {metric: list(fold_values(tests, metric).values()) for metric in ("war", "uar")}, ratio
    if len(tests) != len(sizes):
        raise SystemExit(f"{run}: several seeds, and the epoch logs are one seed's: restate by hand")
    last = []  # the epoch logs: one seed's test accuracy per epoch
    for fold, n in sorted(sizes.items()):
        accuracy = pd.read_csv(folder / "epochs" / f"fold_{fold}.csv").test_acc.iloc[-1]
        last.append(100 * Fraction(round(accuracy * n / 100), n))
    return {"war": last}, ratio


def intervals(row: dict, values: dict[str, list[Fraction]], ratio: float) -> dict:
    """One results row with the fold-level CI columns (`study_report.CI_COLUMNS`), its folds and notes in the
    order `study_report.result_row` writes them, the old unit-level CI columns dropped."""
    k = len(values["war"])
    out = {c: row[c] for c in ("dataset", "protocol", "variant", "checkpoint", "run", "units")} | {"folds": k}
    notes = []
    for metric in ("war", "uar"):
        mean = row[f"{metric}_per_fold_mean"]
        out[f"{metric}_per_fold_mean"] = mean
        if metric in values:
            got = t_intervals(values[metric], ratio)
            assert math.isclose(got["mean"], mean) and got["folds"] == k, (metric, got["mean"], mean)
            out |= {f"{metric}_{name}": got[name] for name in CI_COLUMNS}
        else:  # one seed: the committed interval is the plain t over folds
            low, high = row[f"{metric}_ci_low"], row[f"{metric}_ci_high"]
            half = (high - low) / 2 * math.sqrt(1 + k * ratio)
            out |= {f"{metric}_t_ci_low": low, f"{metric}_t_ci_high": high}
            out |= {f"{metric}_corrected_t_ci_low": mean - half, f"{metric}_corrected_t_ci_high": mean + half}
            notes.append(f"{metric.upper()}: corrected interval from the committed plain t (per-fold values not kept)")
        out[f"{metric}_pooled"] = row[f"{metric}_pooled"]
    return out | {"note": "; ".join(notes)}


def saved_config(workbook: Path) -> dict:
    """A run's config as its record held it, from the `section.key` rows of its workbook's config sheet."""
    sheet = pd.read_excel(workbook, sheet_name="config")
    data: dict = {}
    for setting, value in zip(sheet.setting, sheet.value):
        if "." not in str(setting):
            continue  # run, checkpoint policy, ...: the sheet's own notes
        section, key = setting.split(".", 1)
        if pd.isna(value):
            value = "" if key == "pattern" else None
        elif isinstance(value, str):
            try:
                value = ast.literal_eval(value)
            except (ValueError, SyntaxError):
                pass  # a plain string setting
        data.setdefault(section, {})[key] = value
    return Config.from_dict(data).to_dict()


def restate(folder: Path, audio: Path) -> list[str]:
    (record_path,) = folder.glob("*.json")  # the study's record
    record = json.loads(record_path.read_text())
    study = record["study"]
    sheets = pd.read_excel(folder / f"{study}.xlsx", sheet_name=None)
    results = sheets["results"]
    baseline = record["definition"]["baseline"]
    policy_of = {label: policy for policy, label in POLICY_LABELS.items()}
    rows = []
    for row in results.drop(columns=[c for c in PUBLISHED_COLUMNS if c in results]).to_dict("records"):
        entry = next(e for e in record["runs"] if e["run_id"] == row["run"])
        policy = policy_of[row["checkpoint"]]
        if "war_ci_low" in row:  # a report written before the intervals over folds: restate them too
            row = intervals(row, *fold_accuracies(folder, row["run"], policy)) | {"mode": row["mode"]}
        config = saved_config(folder / f"{row['run']}.xlsx")
        dataset = Config.from_dict(config).dataset
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            manifest, _ = build_manifest(audio, dataset)
        with tempfile.TemporaryDirectory() as tmp:  # the .json `timnet preprocess` writes now
            npy = Path(tmp) / f"{dataset.name}.npy"
            npy.with_suffix(".json").write_text(json.dumps(source_audio(list(manifest.path))))
            facts = feature_facts(npy, dataset, manifest)

        def gate(config, policy, source, facts=facts):
            return not_comparable(config, facts, policy, source, bool(record.get("quick")))

        mode = row.pop("mode")
        rows.append(row | published_columns(row, entry, config, policy, baseline, gate))
        rows[-1]["mode"] = mode
    sheets["results"] = pd.DataFrame(rows)
    figures = {
        "results": results_figure(sheets["results"], baseline),
        "ablations": ablations_figure(sheets["ablations"]),
    }
    write_workbook(folder / f"{study}.xlsx", sheets, overwrite=True)
    write_bytes(folder / f"{study}.html", page(record, sheets, figures).encode("utf-8"))
    write_bytes(folder / f"{study}.md", markdown(record, sheets["results"]).encode("utf-8"))
    return [f"{r['checkpoint'].split(' (')[0]}: {r['published']}" for r in rows]


if __name__ == "__main__":
    print("\n".join(restate(Path(sys.argv[1]), Path(sys.argv[2]))))
