"""A study's "without shared speakers" table and figure: per corpus, TIM-Net with its test speakers held out of
training (speaker-independent WAR/UAR per checkpoint policy, the corrected resampled t 95 % CI over folds, the spread
between speakers), the same study's random-protocol result beside it (labelled: there the test speakers are heard in
training), and the published speaker-held-out references (`core.speaker_references`) for context, marked as another
model class and never subtracted. Pure functions of the study report's results and per-speaker tables.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from ..core.report import png_bytes, pyplot
from ..core.speaker_references import ANOTHER_CLASS, speaker_held_out

GROUPED = ("speaker", "speaker-sentence")  # the protocols whose folds are groups of speakers
SHEET = "without shared speakers"
RANDOM = "random protocol (speakers shared)"
TIMNET = "TIM-Net (trained from scratch on MFCCs)"
NORMALIZED = "per speaker (a test speaker's statistics from their own unlabelled test audio)"
METRICS = ("war", "uar")
KEPT = ("folds", "trained")  # columns of a results row the table keeps as they are
COLUMNS = ["dataset", "setting", "model", "variant", "checkpoint", "normalisation", "folds", "trained"]
COLUMNS += [f"{m}_{c}" for m in METRICS for c in ("per_fold_mean", "corrected_t_ci_low", "corrected_t_ci_high")]
COLUMNS += ["speakers"] + [f"{m}_speaker_{s}" for m in METRICS for s in ("min", "median", "max")]
COLUMNS += ["reference_uar", "protocol", "source", "run", "note"]
NORMALIZE_NOTE = (
    "Speaker normalisation (train.normalize = speaker): each speaker's MFCCs are standardised per coefficient with "
    "that speaker's own mean and standard deviation over all of their frames. A test speaker's statistics come from "
    "their own unlabelled test audio (all of their test utterances together), the usual practice in "
    "speaker-independent SER; never from labels, never from another speaker."
)
NOTES = (
    "Speakers held out: each fold's test speakers are heard by no model that tests them (validation for best-val "
    "holds out other training speakers). best-test picks its epoch on the test fold itself: optimistic, an upper "
    f"bound, never the number to cite. The {RANDOM} rows are the same study's random folds, in which every test "
    "speaker is also in training. The references are published results of another model class (frozen "
    "self-supervised encoders with a small head), for context only: no difference is taken."
)


def short_label(checkpoint: str) -> str:
    """A policy label as tables and figure titles print it: its name, and `optimistic` for best-test."""
    name = checkpoint.split(" (")[0]
    return f"{name} (optimistic)" if "optimistic" in checkpoint else name


def speaker_spread(speakers: pd.DataFrame) -> pd.DataFrame:
    """Per run and policy (dataset, protocol, variant, checkpoint, run): the number of speakers and the min, median
    and max of their WAR and UAR (`study_report.speaker_rows`)."""
    keys = ["dataset", "protocol", "variant", "checkpoint", "run"]
    if speakers is None or speakers.empty:
        return pd.DataFrame(columns=[*keys, "speakers"])
    grouped = speakers.groupby(keys, sort=False)
    out = grouped.speaker.nunique().rename("speakers").to_frame()
    for metric in METRICS:
        for stat in ("min", "median", "max"):
            out[f"{metric}_speaker_{stat}"] = grouped[metric].agg(stat)
    return out.reset_index()


def _timnet_row(row: pd.Series, setting: str, spread: pd.DataFrame, normalize: dict) -> dict:
    out = {"dataset": row.dataset, "setting": setting, "model": TIMNET, "variant": row.variant}
    folds = row.get("folds")
    out |= {"checkpoint": row.checkpoint, "protocol": row.protocol + ("" if pd.isna(folds) else f" ({folds:g} folds)")}
    out["normalisation"] = NORMALIZED if normalize.get(row.run) == "speaker" else normalize.get(row.run, "")
    out |= {c: row.get(c) for c in COLUMNS if c.endswith(("per_fold_mean", "_ci_low", "_ci_high")) or c in KEPT}
    mine = spread[(spread.run == row.run) & (spread.checkpoint == row.checkpoint)] if len(spread) else spread
    if len(mine):
        out |= mine.iloc[0].drop(["dataset", "protocol", "variant", "checkpoint", "run"]).to_dict()
    note = row.get("note")
    return out | {"source": "this study", "run": row.run, "note": "" if pd.isna(note) else note}


def speaker_independent_table(results: pd.DataFrame, speakers: pd.DataFrame, normalize: dict) -> pd.DataFrame:
    """The table (`COLUMNS`), per corpus with a speaker-held-out run: its rows (every variant and policy), the
    random-protocol rows (or a row saying the study has none), then the references; empty when no run holds
    speakers out. `normalize`: run id -> its train.normalize."""
    rows, spread = [], speaker_spread(speakers)
    if "war_per_fold_mean" not in results:  # nothing trained yet
        return pd.DataFrame(columns=COLUMNS)
    for dataset in results.dataset.unique():
        mine = results[results.dataset == dataset]
        held = mine[mine.protocol.isin(GROUPED)]
        if held.empty:
            continue
        for _, row in held.iterrows():
            rows.append(_timnet_row(row, f"speakers held out ({row.protocol} protocol)", spread, normalize))
        random = mine[mine.protocol == "random"]
        for _, row in random.iterrows():
            rows.append(_timnet_row(row, RANDOM, spread, normalize))
        if random.empty:
            rows.append({"dataset": dataset, "setting": RANDOM, "note": "not in this study (studies/speaker.toml)"})
        if not speaker_held_out(dataset):
            rows.append({"dataset": dataset, "setting": ANOTHER_CLASS, "note": f"none recorded for {dataset}"})
        for ref in speaker_held_out(dataset):
            rows.append(
                {"dataset": dataset, "setting": ANOTHER_CLASS, "model": f"{ref.model} ({ref.model_class})",
                 "reference_uar": ref.uar, "protocol": ref.protocol, "source": ref.source,
                 "note": "unweighted accuracy as published; no WAR, no CI recorded"}
            )  # fmt: skip
    return pd.DataFrame(rows, columns=COLUMNS)


def _number(value, fmt: str = ".2f") -> str:
    return "" if value is None or pd.isna(value) else format(value, fmt)


def _interval(row: pd.Series, metric: str) -> str:
    mean = row[f"{metric}_per_fold_mean"]
    if pd.isna(mean):
        return ""
    low, high = row[f"{metric}_corrected_t_ci_low"], row[f"{metric}_corrected_t_ci_high"]
    return f"{mean:.2f}" + ("" if pd.isna(low) else f" [{low:.2f}, {high:.2f}]")


def markdown_section(table: pd.DataFrame) -> list[str]:
    """The table as Markdown lines, its notes below (the normalisation's where a row uses it)."""
    head = ["corpus", "setting", "model", "variant", "checkpoint", "WAR % [95 % CI, corrected t]", "UAR %"]
    head += ["per speaker WAR min / median / max", "protocol", "source"]
    lines = ["## Without shared speakers", "", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for _, row in table.iterrows():
        uar = _interval(row, "uar") or _number(row.reference_uar)
        spread = "" if pd.isna(row.war_speaker_min) else " / ".join(
            _number(row[f"war_speaker_{s}"]) for s in ("min", "median", "max")
        )  # fmt: skip
        checkpoint = "" if pd.isna(row.checkpoint) else short_label(row.checkpoint)
        model = row.note if pd.isna(row.model) else row.model  # a row with nothing but its note: the note
        cells = [row.dataset, row.setting, model, row.variant, checkpoint, _interval(row, "war"), uar, spread]
        cells += [row.protocol, row.source]
        lines.append("| " + " | ".join("" if pd.isna(c) else str(c) for c in cells) + " |")
    for note in section_notes(table):
        lines += ["", note]
    return lines


def console_lines(table: pd.DataFrame) -> list[str]:
    """The table as the CLI prints it: WAR and UAR (per-fold means; a reference's UAR as published) per row."""
    shown = pd.DataFrame(
        {
            "dataset": table.dataset,
            "setting": table.setting.replace(ANOTHER_CLASS, "ANOTHER MODEL CLASS"),
            "variant": table.variant.fillna(""),
            "checkpoint": table.checkpoint.map(lambda c: "" if pd.isna(c) else short_label(c)),
            "WAR": table.war_per_fold_mean.map(_number),
            "UAR": table.uar_per_fold_mean.fillna(table.reference_uar).map(_number),
            "model": table.model.fillna(table.note).fillna(""),  # what a row without a model says instead
            "trained": table.trained.astype(object).fillna(""),
        }
    )
    return ["without shared speakers (references: another model class, for context):", shown.to_string(index=False)]


def section_notes(table: pd.DataFrame) -> list[str]:
    """What the table says under its title: the labels, and how speaker normalisation finds a test speaker's
    statistics where a row uses it."""
    return [NOTES] + ([NORMALIZE_NOTE] if (table.normalisation == NORMALIZED).any() else [])


def speakers_figure(speakers: pd.DataFrame, baseline: str, results: pd.DataFrame | None = None) -> bytes | None:
    """WAR (bars) and UAR (dots) per speaker of the baseline variant: one row of panels per corpus x grouped
    protocol, one column per checkpoint policy, the n of each speaker under its bar; a dashed line at the same
    study's random-protocol WAR (speakers shared) where it has one."""
    shown = speakers[speakers.variant == baseline] if len(speakers) else speakers
    if shown.empty:
        return None
    corpora = list(dict.fromkeys(zip(shown.dataset, shown.protocol)))
    policies = list(dict.fromkeys(shown.checkpoint))
    width = max(3.0, 0.45 * shown.groupby(["dataset", "protocol", "checkpoint"]).size().max())
    fig, axes = pyplot().subplots(len(corpora), len(policies), figsize=(width * len(policies), 3.4 * len(corpora)),
                                  squeeze=False)  # fmt: skip
    for (i, (dataset, protocol)), (j, policy) in ((a, b) for a in enumerate(corpora) for b in enumerate(policies)):
        ax, group = axes[i][j], shown[(shown.dataset == dataset) & (shown.protocol == protocol)]
        group = group[group.checkpoint == policy]
        x = np.arange(len(group))
        ax.bar(x, group.war, color="C0", label="WAR")
        ax.plot(x, group.uar, "o", color="C1", label="UAR")
        if results is not None and "war_per_fold_mean" in results:
            random = results[(results.dataset == dataset) & (results.protocol == "random")]
            random = random[(random.variant == baseline) & (random.checkpoint == policy)].war_per_fold_mean.dropna()
            if len(random):
                ax.axhline(random.iloc[0], color="C3", linestyle="--", linewidth=1, label=f"WAR, {RANDOM}")
        ax.set_xticks(x, [f"{s}\nn={n:g}" for s, n in zip(group.speaker, group.n)], fontsize=7)
        ax.set_ylim(0, 100)
        ax.set_ylabel("% per speaker")
        ax.set_title(f"{dataset} · {protocol} · {short_label(policy)}", fontsize=9)
        ax.legend(fontsize=7)
    fig.tight_layout()
    return png_bytes(fig)
