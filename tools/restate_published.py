"""Apply the published-number gate (`timnet.core.published`) to a committed study report whose runs' unit files were
not kept, and write the report again (xlsx, html, md) with `timnet.studies.study_report`.

What the gate needs comes from the committed files and the audio the features were made of: each run's config from
its workbook's `config` sheet, the study's quick mode from its record, and the feature facts (utterances, sample
order, source sample rates and lengths) from the corpus folder's file names and audio headers, read as `timnet
preprocess` reads them. Every measured number is the committed results table's; only the published columns change.

    python tools/restate_published.py benchmarks/results/paper_study_emodb_20261207 ../shared/data/emodb-22k-2s
"""

from __future__ import annotations

import ast
import json
import sys
import tempfile
import warnings
from pathlib import Path

import pandas as pd

from timnet.core.atomic import write_bytes
from timnet.core.config import Config
from timnet.core.published import not_comparable
from timnet.core.report import write_workbook
from timnet.data.corpora import build_manifest
from timnet.data.feature_facts import feature_facts, source_audio
from timnet.studies.study_report import (
    POLICY_LABELS,
    ablations_figure,
    markdown,
    page,
    published_columns,
    results_figure,
)

PUBLISHED_COLUMNS = ["published", "published_war", "war_minus_published", "published_uar", "uar_minus_published"]


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
        rows.append(row | published_columns(row, entry, config, policy_of[row["checkpoint"]], baseline, gate))
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
