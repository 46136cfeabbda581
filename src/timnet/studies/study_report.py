"""A study's report: its tables and figures, as a workbook and one self-contained HTML page (figures embedded, no
network needed to open it).

Per corpus, protocol, variant and checkpoint policy: WAR and UAR as the mean of the per-fold values (the authors'
way; seeds averaged within a fold, n = folds) with two 95 % confidence intervals from `analysis.fold_statistics`:
the corrected resampled t (Nadeau & Bengio 2003), the one to cite, and the plain Student t, anti-conservative over
cross-validation folds (their training parts overlap); and pooled over every test prediction (another number: folds
of different sizes weigh differently); the paper's number (best epoch on the test fold) and the
authors' 2023 update (last epoch) beside the policy they were measured with, with the difference, only where the
run is their setting (`core.published`: corpus, audio, sample order, protocol, folds, epochs, seed, settings;
else the reason). Each variant against the baseline on the same folds: `analysis.compare`'s paired
statistics. Under the grouped protocols (speaker, speaker-sentence: where the spread between speakers is the finding)
WAR and UAR per speaker, pooled over the folds that tested the speaker, seeds averaged (`metrics.speaker_table`),
as a table and a figure, and per corpus the "without shared speakers" table (`speaker_independent`): those runs beside
the random protocol's and the published speaker-held-out references of another model class. A quick study says so
on every table and at the top of the page; best-test is labelled optimistic wherever it is named.
"""

from __future__ import annotations

import base64
import html
import math
from pathlib import Path

import numpy as np
import pandas as pd

from ..analysis.compare import RunUnits, compare_units, read_units
from ..analysis.fold_statistics import fold_values, t_intervals
from ..core.atomic import write_bytes
from ..core.config import Config
from ..core.errors import TimnetError
from ..core.metrics import scores, speaker_table
from ..core.published import NOT_PUBLISHED, PUBLISHED, not_comparable, number_text, published_numbers, verdict
from ..core.report import png_bytes, pyplot, write_workbook
from ..data.feature_facts import feature_facts
from ..training.run_store import Roots, read_run_record, run_dir
from .speaker_independent import (
    GROUPED,
    SHEET,
    console_lines,
    markdown_section,
    section_notes,
    short_label,
    speaker_independent_table,
    speakers_figure,
)

CI_COLUMNS = ("t_ci_low", "t_ci_high", "corrected_t_ci_low", "corrected_t_ci_high")
CI_NOTE = (
    "The 95 % CIs are over folds (seeds averaged within a fold): the corrected resampled t (Nadeau & Bengio 2003), "
    "the one to cite, and in parentheses the plain Student t, anti-conservative over cross-validation folds because "
    "their training parts overlap."
)
SOURCE_OF = {policy: source for source, (_, policy) in PUBLISHED.items()}  # best-test -> paper, last -> 2023
POLICY_LABELS = {
    "best-test": "best-test (epoch picked on the test fold: the paper's, optimistic)",
    "best-val": "best-val (epoch picked on validation carved from training)",
    "last": "last (the last epoch: the authors' 2023 update)",
}


def mode_label(record: dict) -> str:
    """What every table and the page say about how the study was run."""
    if not record.get("quick"):
        return "full"
    quick = record["definition"]["quick"]
    folds, epochs = quick.get("train.folds", "?"), quick.get("train.epochs", "?")
    return f"QUICK ({folds} folds x {epochs} epochs): a first look, not the paper's protocol — do not compare"


def _read(roots: Roots, entry: dict, policy: str) -> RunUnits | str:
    """The run's finished units read at `policy`, or why they cannot be (nothing trained yet, changed features, a
    unit without that policy): its row says so."""
    try:
        return read_units(roots.models / entry["run_id"], roots.models, policy)
    except TimnetError as err:
        return str(err)


def run_records(record: dict, roots: Roots) -> dict[str, dict | None]:
    """Each run's record (`run_store`: its config and units), read once per report; None where it cannot be read."""
    out = {}
    for entry in record["runs"]:
        try:
            run = read_run_record(run_dir(entry["run_id"], roots.models))
            out[entry["run_id"]] = run if {"config", "folds"} <= set(run) else None
        except (OSError, ValueError, TimnetError):
            out[entry["run_id"]] = None
    return out


def planned_units(run: dict | None) -> set | None:
    """The (seed, fold) pairs a run trains (its record's units), None where its record cannot be read."""
    return None if run is None else {(unit["seed"], unit["fold"]) for unit in run["folds"]}


def trained_label(units: RunUnits | str, planned: set | None) -> str:
    """complete, or PARTIAL: k of n folds (of fold-seed units where a run has several seeds): a study still
    training, reported with --report-only."""
    if isinstance(units, str):
        return "not trained yet"
    if planned is None:
        return "unknown (the run's record cannot be read)"
    what = "folds" if len({seed for seed, _ in planned}) == 1 else "fold-seed units"
    done = len(set(units.metrics) & planned)
    return "complete" if done == len(planned) else f"PARTIAL: {done} of {len(planned)} {what}"


def result_row(entry: dict, units: RunUnits | str, policy: str, baseline: str, gate, planned=None) -> dict:
    """One run at one checkpoint policy: per-fold mean with CI, pooled, and the published number it compares to
    (`gate`: `study_gate`'s, the reasons it may not); `trained`: whether all `planned` folds are in it."""
    row = {"dataset": entry["dataset"], "protocol": entry["protocol"], "variant": entry["variant"]}
    row |= {"checkpoint": POLICY_LABELS[policy], "run": entry["run_id"], "trained": trained_label(units, planned)}
    if isinstance(units, str):
        return row | {"units": 0, "note": units}
    row["units"], row["folds"] = len(units.metrics), units.folds
    pooled = pd.concat(units.tests.values(), ignore_index=True)
    overall = scores(pooled.label.to_numpy(), pooled.predicted.to_numpy())
    ratio, notes = units.size_ratio(sorted({fold for _, fold in units.tests})), []
    for metric in ("war", "uar"):  # over folds, seeds averaged within a fold: `analysis.fold_statistics`
        over_folds = t_intervals(list(fold_values(units.tests, metric).values()), ratio)
        row[f"{metric}_per_fold_mean"] = over_folds["mean"]
        row |= {f"{metric}_{name}": over_folds[name] for name in CI_COLUMNS}
        row[f"{metric}_pooled"] = overall[metric]
        notes += [f"{metric.upper()}: {over_folds['note']}"] if over_folds["note"] else []
    if notes:
        row["note"] = "; ".join(notes)
    return row | published_columns(row, entry, units.config, policy, baseline, gate)


def published_columns(row: dict, entry: dict, config: dict, policy: str, baseline: str, gate) -> dict:
    """The published number a run read at `policy` stands beside, with the difference, or why none: another
    variant, a policy nothing was published for, or what `gate(config, policy, source)` (the published-number
    gate's reasons) finds not the published setting."""
    if entry["variant"] != baseline:  # the published numbers are the full model's
        return {"published": f"none for {entry['variant']} (see the ablations table: paired against {baseline})"}
    source = SOURCE_OF.get(policy)
    if source is None:
        return {"published": f"none for checkpoint {policy} (published: best-test and last)"}
    name = PUBLISHED[source][0]
    numbers = published_numbers(Config.from_dict(config).published, source)
    if all(math.isnan(v) for v in numbers.values()):
        return {"published": f"{name}: {NOT_PUBLISHED} for {entry['dataset']}"}
    if reasons := gate(config, policy, source):
        return {"published": f"{name}: {verdict(reasons)}"}
    out = {"published": name}
    for metric, value in numbers.items():
        out[f"published_{metric}"] = value
        out[f"{metric}_minus_published"] = row[f"{metric}_per_fold_mean"] - value
    return out


def study_gate(record: dict, roots: Roots, entry: dict):
    """The published-number gate of one run of the study: its feature file's facts, the study's quick mode."""

    def gate(config: dict, policy: str, source: str) -> list[str]:
        mfcc = Path(read_run_record(run_dir(entry["run_id"], roots.models))["mfcc"])
        facts = feature_facts(mfcc, Config.from_dict(config).dataset)
        return not_comparable(config, facts, policy, source, bool(record.get("quick")))

    return gate


SPEAKER_COLUMNS = ["dataset", "protocol", "variant", "checkpoint", "run", "speaker", "n", "war", "uar", "folds"]


def speaker_rows(entry: dict, units: RunUnits | str, policy: str) -> list[dict]:
    """One run at one policy, per speaker (`metrics.speaker_table` of its test predictions), under the grouped
    protocols; none elsewhere or before it is trained."""
    if isinstance(units, str) or entry["protocol"] not in GROUPED:
        return []
    predictions = pd.concat([t.assign(seed=k[0], fold=k[1]) for k, t in units.tests.items()], ignore_index=True)
    where = {k: entry[k] for k in ("dataset", "protocol", "variant")}
    where |= {"checkpoint": POLICY_LABELS[policy], "run": entry["run_id"]}
    return [where | row for row in speaker_table(predictions).to_dict("records")]


def run_normalize(runs: dict[str, dict | None]) -> dict[str, str]:
    """Run id -> its train.normalize, as its saved config says ("" where its record cannot be read)."""
    return {
        run_id: "" if run is None else run["config"]["train"].get("normalize", "none") for run_id, run in runs.items()
    }


def tables(record: dict, roots: Roots) -> dict[str, pd.DataFrame]:
    """results (one row per run x policy), without shared speakers (`speaker_independent`, where a run holds
    speakers out), ablations (each variant against the baseline), speakers (per speaker, where a run of a grouped
    protocol is trained), missing, runs."""
    definition = record["definition"]
    policies, baseline = definition["checkpoints"], definition["baseline"]
    results, ablations, speakers, runs = [], [], [], run_records(record, roots)
    for policy in policies:
        read = {e["run_id"]: _read(roots, e, policy) for e in record["runs"]}
        results += [
            result_row(
                e, read[e["run_id"]], policy, baseline, study_gate(record, roots, e), planned_units(runs[e["run_id"]])
            )
            for e in record["runs"]
        ]
        speakers += [row for e in record["runs"] for row in speaker_rows(e, read[e["run_id"]], policy)]
        for entry in record["runs"]:
            base = next(
                (b for b in record["runs"] if b["variant"] == baseline and b["dataset"] == entry["dataset"]
                 and b["protocol"] == entry["protocol"]), None,
            )  # fmt: skip
            if (
                entry["variant"] == baseline
                or base is None
                or any(isinstance(read[e["run_id"]], str) for e in (base, entry))
            ):
                continue
            compared = compare_units(read[base["run_id"]], read[entry["run_id"]])
            where = {k: entry[k] for k in ("dataset", "protocol")} | {"checkpoint": POLICY_LABELS[policy]}
            for row in compared.to_dict("records"):
                ablations.append({**where, "variant": entry["variant"], "against": baseline, **row})
    mode, speakers = mode_label(record), pd.DataFrame(speakers, columns=SPEAKER_COLUMNS)
    held_out = speaker_independent_table(pd.DataFrame(results), speakers, run_normalize(runs))
    out = {
        "results": pd.DataFrame(results),
        **({SHEET: held_out} if len(held_out) else {}),
        "ablations": pd.DataFrame(ablations),
        **({"speakers": speakers} if len(speakers) else {}),
        "missing": pd.DataFrame(record["missing"], columns=["dataset", "reason"]),
        "runs": pd.DataFrame(record["runs"]),
    }
    return {name: t.assign(mode=mode) for name, t in out.items()}


def _panels(table: pd.DataFrame, width: float):
    """(figure, [(axis, (protocol, policy label), rows)]): one panel per protocol x checkpoint policy."""
    groups = list(table.groupby(["protocol", "checkpoint"], sort=False))
    fig, axes = pyplot().subplots(1, len(groups), figsize=(width * len(groups), 3.6), squeeze=False)
    for ax, ((protocol, checkpoint), _) in zip(axes[0], groups):
        ax.set_title(f"{protocol} · {short_label(checkpoint)}", fontsize=9)
    return fig, [(ax, key, group) for ax, (key, group) in zip(axes[0], groups)]  # noqa: B905 (same length)


def results_figure(results: pd.DataFrame, baseline: str) -> bytes | None:
    """WAR per corpus (baseline variant) with its corrected resampled t 95 % CI, one panel per protocol x policy;
    published: x."""
    if "war_per_fold_mean" not in results:  # nothing trained yet
        return None
    shown = results[(results.variant == baseline) & results.war_per_fold_mean.notna()]
    if shown.empty:
        return None
    fig, panels = _panels(shown, 4.5)
    for ax, _, group in panels:
        x = np.arange(len(group))
        mean = group.war_per_fold_mean.to_numpy()
        low, high = group.war_corrected_t_ci_low.to_numpy(), group.war_corrected_t_ci_high.to_numpy()
        err = np.vstack([mean - low, high - mean])
        ax.bar(x, mean, yerr=np.nan_to_num(err), capsize=4, color="C0", label="ours (95 % CI: corrected t)")
        if "published_war" in group:
            ax.plot(x, group.published_war, "x", color="C3", markersize=9, label="published")
        ax.set_xticks(x, group.dataset, rotation=30)
        ax.set_ylim(0, 100)
        ax.set_ylabel("WAR % (per-fold mean)")
        ax.legend(fontsize=7)
    fig.tight_layout()
    return png_bytes(fig)


def ablations_figure(ablations: pd.DataFrame) -> bytes | None:
    """Each variant's WAR minus the baseline's, with its paired 95 % CI (corrected resampled t), per corpus; one panel
    per protocol x policy."""
    war = ablations[ablations.metric == "WAR"] if len(ablations) else ablations
    if war.empty:
        return None
    fig, panels = _panels(war, 5)
    for ax, _, group in panels:
        labels = [f"{d}\n{v}" for d, v in zip(group.dataset, group.variant)]
        err = np.vstack([group["diff"] - group.corrected_t_ci_low, group.corrected_t_ci_high - group["diff"]])
        ax.bar(range(len(group)), group["diff"], yerr=np.nan_to_num(err), capsize=4, color="C1")
        ax.axhline(0, color="grey", linewidth=0.8)
        ax.set_xticks(range(len(group)), labels, fontsize=7)
        ax.set_ylabel("WAR difference, points")
    fig.tight_layout()
    return png_bytes(fig)


def page(record: dict, sheets: dict[str, pd.DataFrame], figures: dict[str, bytes | None]) -> str:
    """The HTML report: the mode at the top and on every section, tables, figures inline."""
    mode = mode_label(record)
    banner = f'<p class="mode {"quick" if record.get("quick") else ""}">{html.escape(mode)}</p>'
    style = (
        "body{font-family:sans-serif;margin:2em;max-width:1200px} table{border-collapse:collapse;font-size:12px}"
        "td,th{border:1px solid #ccc;padding:3px 6px} .mode{font-weight:bold} .quick{color:#b00;font-size:1.2em}"
    )
    parts = [f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>study {record['study']}</title>"]
    parts += [f"<style>{style}</style></head><body><h1>Study {html.escape(record['study'])}</h1>", banner]
    parts.append(
        f"<p>WAR/UAR: mean of the per-fold values (the authors' way) with 95 % confidence intervals. {CI_NOTE} "
        "Pooled: over every test prediction at once. Published numbers only beside a run of the setting they "
        "were measured with (the complete corpus as distributed, the authors' sample order, random folds, their "
        "folds, epochs, seed and settings, the same checkpoint policy); otherwise the column says why not.</p>"
    )
    sections = [
        ("Results", "results", "results"),
        ("Without shared speakers: TIM-Net with its test speakers held out, per corpus", SHEET, "speakers"),
        ("Ablations against the baseline (paired: B − A)", "ablations", "ablations"),
        ("Per speaker (speaker and speaker-sentence protocols)", "speakers", None),  # its figure: above
        ("Corpora missing on this machine", "missing", None),
        ("Runs", "runs", None),
    ]
    for title, sheet, figure in [s for s in sections if s[1] in sheets]:
        parts += [f"<h2 id='{sheet.replace(' ', '-')}'>{title}</h2>", banner]
        notes = [CI_NOTE, *section_notes(sheets[sheet])] if sheet == SHEET else []
        parts += [f"<p>{html.escape(note)}</p>" for note in notes]
        if figure and figures.get(figure):
            data = base64.b64encode(figures[figure]).decode()
            parts.append(f"<img id='figure-{figure}' alt='{title}' src='data:image/png;base64,{data}'>")
        table = sheets[sheet].drop(columns="mode")
        table_id = sheet.replace(" ", "-")
        parts.append(table.to_html(index=False, float_format=lambda v: f"{v:.2f}", na_rep="", table_id=table_id))
    return "\n".join(parts + ["</body></html>"])


def _cell(row: pd.Series, metric: str) -> str:
    """mean [corrected t CI] (t: [plain t CI]; folds) · pooled"""
    mean = row.get(f"{metric}_per_fold_mean")
    if mean is None or pd.isna(mean):
        return ""
    low, high, t_low, t_high = (row[f"{metric}_{name}"] for name in CI_COLUMNS[2:] + CI_COLUMNS[:2])
    folds = int(row["folds"])
    interval = f" [{low:.2f}, {high:.2f}] (t: [{t_low:.2f}, {t_high:.2f}]; {folds} folds)"
    interval = f" ({folds} folds: no interval)" if pd.isna(low) else interval
    return f"{mean:.2f}{interval} · pooled {row[f'{metric}_pooled']:.2f}"


def _signed(value: float) -> str:
    return "—" if pd.isna(value) else f"{value:+.2f}"


def markdown(record: dict, results: pd.DataFrame, held_out: pd.DataFrame | None = None) -> str:
    """The results table as Markdown, to paste beside a paper's (a README, a lab note), with the mode above it; then
    the "without shared speakers" table where the study has one."""
    head = ["dataset", "protocol", "variant", "checkpoint", "WAR % per-fold mean [95 % CI] (plain t) · pooled"]
    head += ["UAR %"]
    head += ["published WAR / UAR", "difference"]
    lines = [f"Study `{record['study']}` ({mode_label(record)})", ""]
    if "trained" in results and (partial := results[results.trained.str.startswith("PARTIAL")]).size:
        lines += [
            f"**Not complete** (resume the study): {', '.join(sorted(set(partial.run + ' ' + partial.trained)))}",
            "",
        ]
    lines += ["| " + " | ".join(head) + " |"]
    lines.append("|" + "---|" * len(head))
    for _, row in results.iterrows():
        published, diff = row.get("published", ""), ""
        published = "" if pd.isna(published) else published
        if not pd.isna(row.get("published_war", math.nan)):
            published = f"{row['published']}: {number_text(row['published_war'])} / {number_text(row['published_uar'])}"
            diff = " / ".join(_signed(row[f"{m}_minus_published"]) for m in ("war", "uar"))
        cells = [row.dataset, row.protocol, row.variant, short_label(row.checkpoint)]
        cells += [_cell(row, "war") or row.get("note", ""), _cell(row, "uar"), published, diff]
        lines.append("| " + " | ".join(str(c) for c in cells) + " |")
    lines += ["", CI_NOTE]
    if held_out is not None and len(held_out):
        lines += ["", *markdown_section(held_out)]
    return "\n".join(lines) + "\n"


def write_report(record: dict, roots: Roots) -> dict:
    """Results/studies/<id>.xlsx, <id>.html and <id>.md, rewritten whole (a resumed study refreshes its report)."""
    sheets = tables(record, roots)
    baseline = record["definition"]["baseline"]
    figures = {
        "results": results_figure(sheets["results"], baseline),
        "ablations": ablations_figure(sheets["ablations"]),
        "speakers": speakers_figure(sheets["speakers"], baseline, sheets["results"]) if "speakers" in sheets else None,
    }
    folder = roots.results / "studies"
    xlsx = write_workbook(folder / f"{record['study']}.xlsx", sheets, overwrite=True)
    html_path = folder / f"{record['study']}.html"
    write_bytes(html_path, page(record, sheets, figures).encode("utf-8"))
    md_path = folder / f"{record['study']}.md"
    write_bytes(md_path, markdown(record, sheets["results"], sheets.get(SHEET)).encode("utf-8"))
    return {"xlsx": xlsx, "html": html_path, "md": md_path, "tables": sheets}


def study_lines(record: dict, report: dict) -> list[str]:
    """The study as the CLI prints it: the numbers per run and policy, what is missing, where the report is."""
    results = report["tables"]["results"]
    shown = ("dataset", "protocol", "variant", "checkpoint", "trained", "war_per_fold_mean", "uar_per_fold_mean")
    lines = [results[[c for c in shown if c in results]].to_string(index=False, float_format=lambda v: f"{v:.2f}")]
    lines += console_lines(report["tables"][SHEET]) if SHEET in report["tables"] else []
    lines += [f"missing: {m['dataset']}: {m['reason']}" for m in record["missing"]]
    wrote = f"{report['xlsx']}, {report['html']} and {report['md']}"
    return lines + [f"study {record['study']} ({mode_label(record)}): wrote {wrote}"]
