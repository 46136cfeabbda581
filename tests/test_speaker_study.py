"""Speaker studies (studies/speaker.toml, studies/speaker-ablations.toml): per-corpus protocol settings checked and
reaching only their runs, RAVDESS's contiguous actor groups, the report's "without shared speakers" table built
from synthetic results (the spread per speaker, the random protocol beside, the references of another model class,
never subtracted), the speaker study end to end through the CLI, and the ablations pairing speaker normalisation
against the plain model at each checkpoint policy."""

from __future__ import annotations

import html
import subprocess
import sys
import warnings

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import REPO

from timnet import load_config
from timnet.analysis.compare import compare_runs
from timnet.core.errors import TimnetError
from timnet.core.speaker_references import ANOTHER_CLASS, EMOBOX, SPEAKER_HELD_OUT
from timnet.data.splits import group_chunks, make_folds
from timnet.studies.speaker_independent import (
    NORMALIZE_NOTE,
    NORMALIZED,
    RANDOM,
    SHEET,
    console_lines,
    markdown_section,
    short_label,
    speaker_independent_table,
)
from timnet.studies.study import load_study, plan_study, run_study, start_study
from timnet.studies.study_report import POLICY_LABELS
from timnet.training.execution import Execution
from timnet.training.run_store import Roots

SPEAKER, ABLATIONS = REPO / "studies" / "speaker.toml", REPO / "studies" / "speaker-ablations.toml"


def test_per_corpus_settings_are_checked_in_one_line(tmp_path):
    head = 'datasets = ["EMODB"]\nprotocols = ["speaker", "random"]\n'
    for text, message in [
        (
            '[per_corpus.EMDB.speaker]\n"train.folds" = 3',
            "[per_corpus.EMDB]: 'EMDB' is not one of the datasets (EMODB)",
        ),
        (
            '[per_corpus.EMODB.sentence]\n"train.folds" = 3',
            "per_corpus.EMODB: 'sentence' is not one of speaker, random",
        ),
        ('[per_corpus.EMODB]\n"train.folds" = 3', "[per_corpus.EMODB] must hold tables such as"),
        ("per_corpus = 3", "[per_corpus] must hold tables such as [per_corpus.EMODB.speaker]"),
    ]:
        bad = tmp_path / "bad.toml"
        bad.write_text(head + text)
        with pytest.raises(TimnetError) as caught:
            load_study(bad)
        assert message in str(caught.value) and "\n" not in str(caught.value)
    bad.write_text(head + '[per_corpus.EMODB.speaker]\n"train.speaker_groups" = "sorted"\n')
    roots = Roots(tmp_path / "Models", tmp_path / "logs", tmp_path / "Results")
    with pytest.raises(TimnetError, match=r"train\.speaker_groups.*shuffled, contiguous") as caught:
        start_study(bad, roots, "cpu", quick=True)  # every config checked before any run exists
    assert "\n" not in str(caught.value) and not roots.models.exists() and not roots.results.exists()


def test_per_corpus_settings_reach_their_corpus_and_protocol_only():
    study = load_study(SPEAKER)
    specs = {(s["dataset"], s["protocol"]): s["overrides"] for s in plan_study(study, quick=False)}
    assert len(specs) == 12 and {s["train.checkpoint"] for s in specs.values()} == {"best-val"}
    assert all(s["train.test_every"] == 1 for s in specs.values())  # best-test's predictions from the same training
    folds = {"CASIA": 4, "EMODB": 10, "EMOVO": 6, "IEMOCAP": 5, "RAVDESS": 6, "SAVEE": 4}
    for dataset, count in folds.items():
        assert specs[dataset, "speaker"]["train.folds"] == count
        assert "train.folds" not in specs[dataset, "random"]  # the random protocol keeps the corpus's own folds
        assert "train.speaker_groups" not in specs[dataset, "random"]
    grouped = {d for d in folds if specs[d, "speaker"].get("train.speaker_groups") == "contiguous"}
    assert grouped == {"RAVDESS"}
    ravdess = load_config("RAVDESS", specs["RAVDESS", "speaker"]).train
    assert (ravdess.folds, ravdess.speaker_groups, ravdess.protocol) == (6, "contiguous", "speaker")
    assert load_config("RAVDESS", specs["RAVDESS", "random"]).train.speaker_groups == "shuffled"
    assert all(
        s["overrides"]["train.folds"] == 2 for s in plan_study(study, quick=True)
    )  # --quick on top of the corpus's
    ablations = load_study(ABLATIONS)
    assert ablations["per_corpus"] == study["per_corpus"] and ablations["protocols"] == ["speaker"]
    assert ablations["checkpoints"] == study["checkpoints"] == ["last", "best-val", "best-test"]
    assert ablations["variants"]["TIM-Net"] == {} and ablations["baseline"] == "TIM-Net"
    assert ablations["variants"]["speaker norm"] == {"train.normalize": "speaker"}
    for spec in plan_study(ablations, quick=True):
        load_config(spec["dataset"], spec["overrides"])  # every variant's settings exist


def test_ravdess_actors_make_six_contiguous_groups_of_four():
    actors = pd.Series([f"{a:02d}" for a in range(1, 25) for _ in range(3)])
    chunks = group_chunks(actors, 6, seed=7, what="speaker", contiguous=True)
    assert chunks == [[f"{a:02d}" for a in range(k, k + 4)] for k in (1, 5, 9, 13, 17, 21)]
    assert group_chunks(actors, 6, seed=8, what="speaker", contiguous=True) == chunks  # no seed in it
    shuffled = group_chunks(actors, 6, seed=7, what="speaker")
    assert shuffled != chunks and sorted(sum(shuffled, [])) == sorted(sum(chunks, []))
    manifest = pd.DataFrame({"stem": [f"u{i}" for i in range(len(actors))], "speaker": actors})
    folds = make_folds("speaker", manifest, None, 6, 7, contiguous=True)
    for (train, test), chunk in zip(folds, chunks, strict=True):
        assert set(actors[test]) == set(chunk) and not set(actors[train]) & set(chunk)
        assert len(train) + len(test) == len(actors)


def synthetic_results(normalize: str = "none") -> tuple[pd.DataFrame, pd.DataFrame, dict]:
    """A study's results and per-speaker tables for EMOVO (speaker and random protocols, two policies), made up."""
    results, speakers = [], []
    for protocol, war in (("speaker", 30.0), ("random", 80.0)):
        for policy in ("best-val", "best-test"):
            run = f"EMOVO_{protocol}"
            row = {"dataset": "EMOVO", "protocol": protocol, "variant": "TIM-Net", "checkpoint": POLICY_LABELS[policy]}
            row |= {"run": run, "units": 6, "folds": 6, "war_per_fold_mean": war, "uar_per_fold_mean": war - 2}
            for metric, mean in (("war", war), ("uar", war - 2)):
                row |= {f"{metric}_corrected_t_ci_low": mean - 10, f"{metric}_corrected_t_ci_high": mean + 10}
            results.append(row)
            if protocol == "speaker":
                for k, (w, u) in enumerate([(14.3, 14.0), (33.7, 30.0), (20.0, 21.0), (25.0, 20.0)]):
                    speakers.append({**{c: row[c] for c in ("dataset", "protocol", "variant", "checkpoint", "run")},
                                     "speaker": f"s{k}", "n": 98, "war": w, "uar": u, "folds": str(k + 1)})  # fmt: skip
    return pd.DataFrame(results), pd.DataFrame(speakers), {"EMOVO_speaker": normalize, "EMOVO_random": normalize}


def test_the_table_without_shared_speakers_puts_the_random_protocol_and_another_model_class_beside():
    results, speakers, normalize = synthetic_results()
    table = speaker_independent_table(results, speakers, normalize)
    assert table.setting.tolist() == ["speakers held out (speaker protocol)"] * 2 + [RANDOM] * 2 + [ANOTHER_CLASS]
    held = table.iloc[0]
    assert (held.war_per_fold_mean, held.war_corrected_t_ci_low, held.uar_per_fold_mean) == (30.0, 20.0, 28.0)
    assert (held.speakers, held.war_speaker_min, held.war_speaker_max) == (4, 14.3, 33.7)
    assert held.war_speaker_median == pytest.approx(np.median([14.3, 33.7, 20.0, 25.0]))
    assert held.uar_speaker_median == pytest.approx(20.5) and held.protocol == "speaker (6 folds)"
    assert table.iloc[2].war_per_fold_mean == 80.0 and pd.isna(table.iloc[2].speakers)  # random: no speaker rows
    reference = table.iloc[-1]
    assert reference.reference_uar == 57.82 and "Whisper-large-v3" in reference.model and reference.source == EMOBOX
    assert "ANOTHER MODEL CLASS" in reference.setting and "frozen self-supervised encoder" in reference.model
    assert pd.isna(reference.war_per_fold_mean) and reference.protocol == "leave one speaker out (6 folds)"
    assert not [c for c in table if "minus" in c or "diff" in c]  # context, never a difference to TIM-Net
    text = "\n".join(markdown_section(table))
    assert "| EMOVO | speakers held out (speaker protocol) |" in text and "| best-test (optimistic) |" in text
    assert "| 30.00 [20.00, 40.00] | 28.00 [18.00, 38.00] | 14.30 / 22.50 / 33.70 |" in text
    assert "| 57.82 |" in text and NORMALIZE_NOTE not in text and "no difference is taken" in text
    printed = "\n".join(console_lines(table))
    assert "ANOTHER MODEL CLASS" in printed and "57.82" in printed and "best-test (optimistic)" in printed
    normalized = speaker_independent_table(*synthetic_results("speaker"))
    assert (normalized.normalisation.dropna() == NORMALIZED).sum() == 4
    assert NORMALIZE_NOTE in "\n".join(markdown_section(normalized))
    assert short_label(POLICY_LABELS["best-test"]) == "best-test (optimistic)" and short_label("last (x)") == "last"


def test_the_references_are_the_issues_numbers_with_their_protocols():
    uar = {r.dataset: r.uar for r in SPEAKER_HELD_OUT}
    assert uar == {"CASIA": 59.58, "EMOVO": 57.82, "IEMOCAP": 73.54, "RAVDESS": 75.32, "SAVEE": 75.75}
    protocols = {r.dataset: r.protocol for r in SPEAKER_HELD_OUT}
    assert protocols["RAVDESS"] == "6 folds of 4 consecutive actors" and "session" in protocols["IEMOCAP"]
    models = {r.dataset: r.model for r in SPEAKER_HELD_OUT}
    assert models["SAVEE"] == "data2vec 2.0" and models["CASIA"] == models["EMOVO"] == "Whisper-large-v3"
    results, speakers, normalize = synthetic_results()
    emodb = speaker_independent_table(results.assign(dataset="EMODB"), speakers.assign(dataset="EMODB"), normalize)
    assert emodb.iloc[-1].setting == ANOTHER_CLASS and emodb.iloc[-1].note == "none recorded for EMODB"
    assert f"| EMODB | {ANOTHER_CLASS} | none recorded for EMODB |" in "\n".join(markdown_section(emodb))


@pytest.mark.slow
def test_the_speaker_study_end_to_end_through_the_cli(mfcc, tmp_path):
    """The shipped study file, quick, on the small EMO-DB (its signals short: a [set] line, its features: [mfcc])."""
    root = tmp_path
    study = root / "speaker.toml"
    study.write_text(SPEAKER.read_text() + f'\n[set]\n"features.signal_length" = 16000\n[mfcc]\nEMODB = "{mfcc}"\n')
    command = [
        sys.executable,
        "-m",
        "timnet.cli",
        "study",
        str(study),
        "--quick",
        "--datasets",
        "EMODB",
        "--workers",
        "1",
    ]
    done = subprocess.run(command, capture_output=True, text=True, cwd=root)
    assert done.returncode == 0, done.stderr[-2000:]
    printed = done.stdout.split("without shared speakers")[1]
    assert "best-test (optimistic)" in printed and "random protocol (speakers shared)" in printed
    assert "ANOTHER MODEL CLASS" in printed
    (xlsx,) = (root / "Results" / "studies").glob("speaker_quick_*.xlsx")
    sheets = pd.read_excel(xlsx, sheet_name=None)
    assert list(sheets)[:2] == ["results", SHEET] and "speakers" in sheets
    table, results, speakers = sheets[SHEET], sheets["results"], sheets["speakers"]
    assert table.setting.tolist() == ["speakers held out (speaker protocol)"] * 3 + [RANDOM] * 3 + [ANOTHER_CLASS]
    assert table.checkpoint.iloc[:3].tolist() == [POLICY_LABELS[p] for p in ("last", "best-val", "best-test")]
    assert (
        table["mode"].str.startswith("QUICK (2 folds x 3 epochs)").all()
        and (table.normalisation.iloc[:6] == "none").all()
    )
    for _, row in table.iloc[:6].iterrows():  # the per-fold means are the runs' own units' at that policy
        policy = next(p for p, label in POLICY_LABELS.items() if label == row.checkpoint)
        units = [torch.load(p, weights_only=True) for p in sorted((root / "Models" / row.run).glob("fold_*.pt"))]
        chosen = [u["metrics"] if policy == "best-val" else u["also"][policy]["metrics"] for u in units]
        assert row.war_per_fold_mean == pytest.approx(np.mean([m["war"] for m in chosen]))
        same = results[(results.run == row.run) & (results.checkpoint == row.checkpoint)].iloc[0]
        assert row.uar_corrected_t_ci_low == same.uar_corrected_t_ci_low or np.isnan(same.uar_corrected_t_ci_low)
    for _, row in table.iloc[:3].iterrows():  # the spread is of the per-speaker rows
        mine = speakers[(speakers.run == row.run) & (speakers.checkpoint == row.checkpoint)]
        assert row.speakers == len(mine) == 4
        assert (row.war_speaker_min, row.war_speaker_max) == pytest.approx((mine.war.min(), mine.war.max()))
    page = next(xlsx.parent.glob("*.html")).read_text()
    assert "id='without-shared-speakers'" in page and page.count("id='figure-speakers'") == 1
    assert "random protocol (speakers shared)" in page and "ANOTHER MODEL CLASS" in page and "optimistic" in page
    text = next(xlsx.parent.glob("*.md")).read_text()
    section = text.split("## Without shared speakers")[1]
    assert "| best-test (optimistic) |" in section and "| EMODB | random protocol (speakers shared) |" in section
    assert "ANOTHER MODEL CLASS" in section and NORMALIZE_NOTE not in text


@pytest.fixture(scope="module")
def ablations_study(mfcc, tmp_path_factory):
    """The shipped speaker-ablations study on the small EMO-DB (short signals), quick, trained once."""
    root = tmp_path_factory.mktemp("speaker-ablations")
    study = root / "speaker-ablations.toml"
    study.write_text(ABLATIONS.read_text() + f'\n[set]\n"features.signal_length" = 16000\n[mfcc]\nEMODB = "{mfcc}"\n')
    roots = Roots(root / "Models", root / "logs", root / "Results")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        how = Execution(roots, device="cpu", workers=1, threads=1, progress=False)
        record, report = run_study(study, quick=True, only={"datasets": ["EMODB"]}, how=how)
    return roots, record, report


@pytest.mark.slow
def test_the_speaker_ablations_pair_speaker_normalisation_with_the_plain_model(ablations_study):
    roots, record, report = ablations_study
    runs = {r["variant"]: r["run_id"] for r in record["runs"]}
    assert set(runs) == {"TIM-Net", "speaker norm", "SpecAugment", "mixup"}
    assert {r["protocol"] for r in record["runs"]} == {"speaker"}
    ablations = report["tables"]["ablations"]
    assert len(ablations) == 3 * 2 * 3 and set(ablations.against) == {"TIM-Net"}
    assert set(ablations.variant) == {"speaker norm", "SpecAugment", "mixup"}
    for policy in ("last", "best-val", "best-test"):
        mine = ablations[ablations.checkpoint == POLICY_LABELS[policy]]
        assert set(mine.policy_a) == set(mine.policy_b) == {policy}  # the same policy on both sides
        direct = compare_runs(roots.models / runs["TIM-Net"], roots.models / runs["speaker norm"], roots.models, policy)
        for metric in ("WAR", "UAR"):
            got, want = mine[mine.metric == metric].iloc[0], direct[direct.metric == metric].iloc[0]
            assert (got["diff"], got.mean_a, got.mean_b) == pytest.approx((want["diff"], want.mean_a, want.mean_b))
    table = report["tables"][SHEET]
    held = table[table.setting == "speakers held out (speaker protocol)"]
    assert len(held) == 4 * 3 and set(held[held.variant == "speaker norm"].normalisation) == {NORMALIZED}
    assert set(held[held.variant != "speaker norm"].normalisation) == {"none"}
    random = table[table.setting == RANDOM]
    assert len(random) == 1 and random.note.iat[0].startswith("not in this study")
    assert f"| EMODB | {RANDOM} | not in this study (studies/speaker.toml) |" in report["md"].read_text()
    assert NORMALIZE_NOTE in report["md"].read_text() and html.escape(NORMALIZE_NOTE) in report["html"].read_text()


@pytest.mark.slow
def test_runs_trained_apart_are_reported_as_the_study_they_are(ablations_study):
    roots, record, _ = ablations_study
    runs = {r["variant"]: r["run_id"] for r in record["runs"]}
    pair = {"TIM-Net": runs["TIM-Net"], "speaker norm": runs["speaker norm"]}
    how = Execution(roots, device="cpu", workers=1, threads=1, progress=False)
    adopted, report = run_study(ABLATIONS, how=how, report_only=True, adopt=pair)
    assert adopted["adopted"] and adopted["quick"] and adopted["study"].startswith("speaker-ablations_quick_")
    assert {r["run_id"] for r in adopted["runs"]} == set(pair.values())
    assert list(adopted["definition"]["variants"]) == ["TIM-Net", "speaker norm"]
    ablations = report["tables"]["ablations"]
    assert set(ablations.variant) == {"speaker norm"} and len(ablations) == 3 * 2
    with pytest.raises(TimnetError, match=r"^run .*: train.normalize = 'none', but .* sets 'speaker' for speaker norm"):
        run_study(ABLATIONS, how=how, report_only=True, adopt={"speaker norm": runs["TIM-Net"]})
    with pytest.raises(TimnetError, match=r"^--run w/o TAB=\.\.\.: not a variant of"):
        run_study(ABLATIONS, how=how, report_only=True, adopt={"w/o TAB": runs["TIM-Net"]})
