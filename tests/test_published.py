"""The published-number gate: a run stands beside the paper's (or the authors' 2023) numbers only where it is their
setting; otherwise every output says why not. The gate on small synthetic configs and manifests, the facts
`preprocess` records about the source audio, and a tiny run whose summary row holds the reason (and no "nan")."""

from __future__ import annotations

import json
import math
import re

import numpy as np
import openpyxl
import pandas as pd
import pytest
from conftest import train

from timnet import load_config
from timnet.core.published import FeatureFacts, not_comparable, number_text, published_cell, published_numbers, verdict
from timnet.core.report import SUMMARY_NAME, summary_lines
from timnet.data.corpora import canonical_stems
from timnet.data.feature_facts import feature_facts

EMODB = load_config("EMODB")
# The published setting's facts: every utterance of the corpus as distributed (16 kHz, lengths of their own).
AS_PUBLISHED = FeatureFacts(found=535, complete=535, source_rates=(16000,), distributed_rate=16000,
                            source_seconds=(1.2255, 8.97825))  # fmt: skip


def reasons(overrides: dict | None = None, facts: FeatureFacts = AS_PUBLISHED, policy="best-test", **kw) -> list:
    config = EMODB.with_overrides(overrides or {}).to_dict()
    return not_comparable(config, facts, policy, defaults=EMODB, **kw)


def test_the_published_setting_is_comparable():
    assert reasons() == [] and verdict(reasons()) == "comparable"
    assert reasons(policy="last", source="update_2023") == []
    # training seeds repeated on the authors' folds, and how the run computes, change nothing of the setting
    assert reasons({"train.seeds": "46,7", "train.blas": "numpy", "train.compile": "off"}) == []


@pytest.mark.parametrize(
    "overrides, reason",
    [
        ({"train.folds": 5}, "5 folds"),
        ({"train.epochs": 100}, "100 epochs"),
        ({"train.seed": 7}, "seed 7 (the authors': 46)"),
        ({"train.protocol": "speaker"}, "speaker protocol"),
        ({"train.lr": 0.01}, "train.lr 0.01"),
        ({"train.batch_size": 32}, "train.batch_size 32"),
        ({"train.patience": 5}, "early stopping (patience 5)"),
        ({"train.normalize": "speaker"}, "train.normalize speaker"),
        ({"train.time_masks": 2}, "train.time_masks 2"),
        ({"train.coefficient_masks": 2}, "train.coefficient_masks 2"),
        ({"train.mixup": 0.2}, "train.mixup 0.2"),
        ({"train.optimizer": "adamw"}, "train.optimizer adamw"),
        ({"train.lr_schedule": "cosine"}, "train.lr_schedule cosine"),
        ({"train.class_weights": "balanced"}, "train.class_weights balanced"),
        # read at best-test (the speaker study's extra) or last, a best-val unit trained without its validation part
        ({"train.checkpoint": "best-val"}, "validation held out of each training part (train.val_fraction 0.1)"),
        ({"train.calibrate": True}, "validation held out of each training part (train.val_fraction 0.1)"),
        ({"model.gate": False}, "model.gate False"),
        ({"features.signal_length": 16000}, "features.signal_length 16000"),
    ],
)
def test_each_setting_not_the_published_one_is_named(overrides, reason):
    assert reasons(overrides) == [reason]
    assert verdict(reasons(overrides)) == f"not comparable: {reason}"


def test_quick_mode_and_the_checkpoint_policy():
    assert reasons(quick=True) == ["quick study"]
    assert reasons(policy="best-val") == ["checkpoint best-val (the paper's: best-test)"]
    assert reasons(policy="best-test", source="update_2023") == [
        "checkpoint best-test (the authors' 2023 update's: last)"
    ]
    quick = reasons({"train.folds": 2, "train.epochs": 3}, quick=True, policy="last")
    assert quick == ["quick study", "2 folds", "3 epochs", "checkpoint last (the paper's: best-test)"]


def test_the_utterances_and_their_audio():
    subset = FeatureFacts(found=361, complete=535, source_rates=(16000,), distributed_rate=16000)
    assert reasons(facts=subset) == ["361 of 535 utterances"]
    resampled = FeatureFacts(found=535, complete=535, source_rates=(22050,), distributed_rate=16000,
                             source_seconds=(2.0, 2.0))  # fmt: skip
    assert reasons(facts=resampled) == [
        "audio resampled to 22050 Hz (distributed at 16000 Hz)",
        "audio trimmed to 2.00 s",
    ]
    older = FeatureFacts(found=535, complete=535, distributed_rate=16000)  # a .json from before rates were recorded
    assert reasons(facts=older) == ["source sample rate unknown"]
    authors = FeatureFacts(found=535, complete=535, authors_features=True, distributed_rate=16000)
    assert reasons(facts=authors) == []  # the authors' own MFCC file: their audio, whatever its rate


def write_record(npy, **record) -> None:
    npy.with_suffix(".json").write_text(json.dumps(record))


def test_facts_of_a_complete_corpus_in_another_order(tmp_path):
    npy = tmp_path / "EMODB.npy"
    write_record(npy, source_sample_rates=[16000], source_seconds=[1.5, 8.2])
    canonical = canonical_stems(EMODB.dataset)
    ordered = canonical.assign(file=[f"wav/{s}.wav" for s in canonical.stem])
    facts = feature_facts(npy, EMODB.dataset, ordered)
    assert facts == FeatureFacts(535, 535, 0, "", False, (16000,), 16000, (1.5, 8.2))
    shuffled = ordered.sample(frac=1, random_state=0).reset_index(drop=True)
    assert feature_facts(npy, EMODB.dataset, shuffled).order == "not the authors' sample order"
    assert feature_facts(npy, EMODB.dataset, ordered.iloc[:361]).found == 361


def test_casia_from_audio_is_not_the_authors_order(tmp_path):
    casia = load_config("CASIA")
    npy = tmp_path / "CASIA.npy"
    write_record(npy, source_sample_rates=[16000], source_seconds=[1.0, 3.0])
    files = [f"{c}/liuchanhg_{c}_{k}.wav" for c in casia.dataset.classes for k in range(201, 401)]
    manifest = pd.DataFrame({"file": files, "stem": [f.split("/")[1][:-4] for f in files]})
    facts = feature_facts(npy, casia.dataset, manifest)
    assert (facts.found, facts.complete) == (1200, 1200)
    got = not_comparable(casia.to_dict(), facts, "best-test", defaults=casia)
    assert got == ["not the authors' sample order (CASIA from audio)"]
    write_record(npy, imported_from_authors_npy=True)  # their MFCC file, imported: their order and audio
    npz = manifest.assign(file=[f"CASIA_{i:05d}" for i in range(1200)])
    assert not_comparable(casia.to_dict(), feature_facts(npy, casia.dataset, npz), "best-test", defaults=casia) == []


def test_preprocess_records_the_source_audio(mfcc):
    record = json.loads(mfcc.with_suffix(".json").read_text())
    assert record["source_sample_rates"] == [16000]  # the synthetic corpus is written at 16 kHz
    low, high = record["source_seconds"]
    assert 0 < low <= high
    facts = feature_facts(mfcc, EMODB.dataset)
    # 20 of its 84 synthetic names are EMO-DB's; every file is as long as the others
    assert (facts.found, facts.complete, facts.extra, facts.order, facts.source_rates) == (20, 535, 64, "", (16000,))
    assert facts.source_seconds == (low, high) and low == high


def test_nothing_published_reads_not_published_never_nan():
    emovo = load_config("EMOVO")
    numbers = published_numbers(emovo.published, "update_2023")
    assert numbers["war"] == 86.56 and math.isnan(numbers["uar"])
    assert published_cell(numbers["uar"], []) == "not published" and published_cell(numbers["war"], []) == 86.56
    assert published_cell(86.56, ["5 folds"]) == "not comparable: 5 folds"
    assert number_text(math.nan) == "not published" and number_text(86.556) == "86.56"
    summary = {"protocol": "random", "checkpoint": "last", **{f"{m}_{s}": 1.0 for m in ("war", "uar", "f1")
                                                               for s in ("mean", "std")}}  # fmt: skip
    summary |= {"paper_war": "not published", "paper_uar": "not published"}
    summary |= {"authors_2023_war": 86.56, "authors_2023_uar": "not published"}
    lines = summary_lines("r", summary)
    assert lines[1] == "authors' 2023 update (last epoch): WAR 86.56 · UAR not published"
    assert "nan" not in " ".join(lines) and "paper" not in lines[1]


@pytest.mark.slow
def test_a_tiny_run_says_why_its_numbers_are_not_the_papers(tmp_path, mfcc):
    run = train(tmp_path, mfcc, epochs=1, protocol="speaker")  # 10 folds asked, 4 speakers
    book = openpyxl.load_workbook(tmp_path / "Results" / SUMMARY_NAME)
    cells = [c.value for row in book["runs"].iter_rows() for c in row]
    assert not [c for c in cells if isinstance(c, str) and re.search(r"\bnan\b", c, re.IGNORECASE)], cells
    assert not [c for c in cells if isinstance(c, float) and np.isnan(c)]
    summary = pd.read_excel(tmp_path / "Results" / SUMMARY_NAME)
    row = summary.iloc[0]
    assert row.folds == 4  # the folds the protocol made: one per speaker
    paper = "not comparable: speaker protocol, 1 epoch, checkpoint last (the paper's: best-test), "
    paper += "features.signal_length 16000, 20 of 535 utterances, 64 utterances not in the corpus, "
    assert row.paper_war == row.paper_uar == paper + "audio trimmed to 0.60 s"
    assert row.authors_2023_war.startswith("not comparable: speaker protocol, 1 epoch, features.")
    assert f"paper (best epoch on the test fold): {paper}audio trimmed" in summary_lines(run.run_id, run.summary)[1]


def test_a_comparable_study_row_shows_the_number_and_not_published_where_none_was():
    from timnet.studies.study_report import CI_COLUMNS, markdown, published_columns

    emovo = load_config("EMOVO").to_dict()
    entry = {"dataset": "EMOVO", "protocol": "random", "variant": "TIM-Net"}
    row = {**entry, "checkpoint": "last (the last epoch: the authors' 2023 update)", "run": "r"}
    row |= {"war_per_fold_mean": 87.0, "uar_per_fold_mean": 86.0, "war_pooled": 87.0, "uar_pooled": 86.0}
    row |= {"folds": 10} | {f"war_{name}": v for name, v in zip(CI_COLUMNS, (85.0, 89.0, 84.0, 90.0), strict=True)}
    row |= {f"uar_{name}": v for name, v in zip(CI_COLUMNS, (84.0, 88.0, 83.0, 89.0), strict=True)}
    row |= published_columns(row, entry, emovo, "last", "TIM-Net", lambda config, policy, source: [])
    assert row["published"] == "authors' 2023 update" and row["war_minus_published"] == pytest.approx(0.44)
    refused = published_columns(row, entry, emovo, "last", "TIM-Net", lambda config, policy, source: ["5 folds"])
    assert refused == {"published": "authors' 2023 update: not comparable: 5 folds"}
    best_val = published_columns(row, entry, emovo, "best-val", "TIM-Net", lambda *a: [])
    assert best_val == {"published": "none for checkpoint best-val (published: best-test and last)"}
    text = markdown({"study": "s", "quick": False}, pd.DataFrame([row]))
    (line,) = [line for line in text.splitlines() if line.startswith("| EMOVO")]
    cells = [c.strip() for c in line.strip("|").split("|")]
    assert cells[6:] == ["authors' 2023 update: 86.56 / not published", "+0.44 / —"]
    assert "nan" not in text


@pytest.mark.filterwarnings("ignore:EMODB. found 7 utterances")
def test_an_older_feature_file_gains_its_source_audio_facts_on_the_next_preprocess(tmp_path):
    from conftest import SHORT, emodb_tree

    from timnet.data.mfcc_extraction import preprocess

    tree = emodb_tree(tmp_path / "EMODB", speakers=("03",), texts=("a01",))
    cfg = load_config("EMODB", SHORT)
    first = preprocess(cfg, tree, tmp_path / "MFCC", progress=False, workers=1)
    js = first.npy.with_suffix(".json")
    older = {k: v for k, v in json.loads(js.read_text()).items() if not k.startswith("source_")}
    js.write_text(json.dumps(older))  # as written before the source audio was recorded
    assert feature_facts(first.npy, cfg.dataset).source_rates is None
    assert "source sample rate unknown" in not_comparable(cfg.to_dict(), feature_facts(first.npy, cfg.dataset), "last")
    again = preprocess(cfg, tree, tmp_path / "MFCC", progress=False, workers=1)
    assert again.up_to_date and json.loads(js.read_text())["source_sample_rates"] == [16000]
    assert feature_facts(first.npy, cfg.dataset).source_rates == (16000,)
