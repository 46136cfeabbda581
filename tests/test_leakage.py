"""The leakage audit and the protocols that keep speakers, sentences or both out of training: counts on corpora
whose overlaps are known, zeros where a protocol promises them, every reader's sentence ids, the CLI."""

from __future__ import annotations

import shutil
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
from conftest import emodb_tree

from timnet import load_config
from timnet.core.errors import TimnetError
from timnet.data.corpora import CORPORA, build_manifest, sentences
from timnet.data.leakage import COLUMNS, audit, audit_corpus, leakage_line, leakage_table
from timnet.data.splits import make_folds, make_splits

SPEAKERS, TEXTS = ("03", "08", "09", "10"), ("a01", "a02", "a04", "a05")


def grid_manifest() -> pd.DataFrame:
    """4 speakers x 4 texts x 2 emotions, as EMO-DB names them: 32 utterances."""
    stems = [f"{s}{t}{e}a" for s in SPEAKERS for t in TEXTS for e in "WN"]
    return pd.DataFrame({"stem": stems, "speaker": [x[:2] for x in stems], "file": [f"{x}.wav" for x in stems]})


def test_leakage_counts_what_is_shared_with_the_training_part():
    manifest = grid_manifest().assign(sentence=lambda m: m.stem.str[2:5])
    test = np.flatnonzero((manifest.speaker == "03") & (manifest.sentence == "a01"))  # 2 utterances
    train_parts = {
        "everything else": np.setdiff1d(np.arange(32), test),  # shares both
        "other speakers, other texts": np.flatnonzero((manifest.speaker != "03") & (manifest.sentence != "a01")),
        "speaker 03's other texts": np.flatnonzero((manifest.speaker == "03") & (manifest.sentence != "a01")),
    }
    prints = np.array([f"audio{i}" for i in range(32)])
    prints[test[0]] = prints[31]  # the first test utterance is a copy of one training utterance
    table = leakage_table(manifest, [(train, test) for train in train_parts.values()], prints)
    assert list(table.columns) == COLUMNS
    rows = table.iloc[:3]
    assert rows.n_test.tolist() == [2, 2, 2]
    assert rows.shared_speaker.tolist() == [2, 0, 2]
    assert rows.shared_sentence.tolist() == [2, 0, 0]
    assert rows.identical_audio.tolist() == [1, 1, 0]  # utterance 31 (speaker 10, text a05) in the first two
    assert table.iloc[-1].fold == "total" and table.iloc[-1].shared_speaker == 4
    assert leakage_line(table).endswith("4/6 share a speaker, 2/6 a sentence, 2/6 identical audio")


def test_unknown_speakers_or_sentences_are_unknown_not_zero():
    manifest = grid_manifest().assign(speaker="", sentence="")
    table = leakage_table(manifest, [(np.arange(16), np.arange(16, 32))], None)
    assert table[["shared_speaker", "shared_sentence", "identical_audio"]].isna().all().all()
    assert "share a speaker unknown" in leakage_line(table)


@pytest.mark.parametrize(
    "protocol, zero",
    [
        ("speaker", ["shared_speaker"]),
        ("sentence", ["shared_sentence"]),
        ("speaker-sentence", ["shared_speaker", "shared_sentence"]),
    ],
)
def test_each_protocol_keeps_what_it_promises_out_of_training(protocol, zero):
    cfg = load_config("EMODB", {"train.protocol": protocol, "train.folds": 2})
    manifest = grid_manifest()
    table = audit(cfg, manifest, None)
    folds = table[table.fold != "total"]
    units = 4 if protocol == "speaker-sentence" else 2  # 2 speaker groups x 2 sentence groups: a unit per cell
    assert len(folds) == units and (folds.n_test > 0).all() and set(folds.fold) == {1, 2}
    assert table.attrs == {"utterances": 32, "tested": 32, "repeated": 0}  # every utterance tested once
    for column in zero:
        assert (folds[column] == 0).all(), (protocol, column)
    for column in {"shared_speaker", "shared_sentence"} - set(zero):
        assert (folds[column] == folds.n_test).all()  # what the protocol does not separate stays shared
    again = make_folds(protocol, manifest.assign(sentence=sentences(manifest, cfg.dataset)), None, 2, cfg.train.seed)
    first = make_folds(protocol, manifest.assign(sentence=sentences(manifest, cfg.dataset)), None, 2, cfg.train.seed)
    assert len(first) == units and all((a[1] == b[1]).all() for a, b in zip(first, again))  # deterministic


def test_sentence_folds_put_every_sentence_in_one_test_part():
    cfg = load_config("EMODB")
    manifest = grid_manifest().assign(sentence=lambda m: sentences(m, cfg.dataset))
    folds = make_folds("sentence", manifest, None, 2, seed=7)
    tested = [set(manifest.sentence.iloc[te]) for _, te in folds]
    assert sorted(s for part in tested for s in part) == sorted(TEXTS) and not (tested[0] & tested[1])
    assert sum(len(te) for _, te in folds) == 32
    leave_one_out = make_folds("sentence", manifest, None, 10, seed=7)  # more folds than texts: one text each
    assert len(leave_one_out) == 4


def test_sentence_protocols_refuse_a_corpus_without_sentences_in_one_line():
    manifest = grid_manifest().assign(sentence="")
    with pytest.raises(TimnetError, match=r"sentence-independent folds need a sentence .* --protocol random"):
        make_folds("sentence", manifest, None, 2, 0)


def test_every_reader_knows_its_corpus_sentences():
    cases = {
        "emodb": ("03a01Wa", "a01"),
        "ravdess": ("03-01-05-01-02-01-12", "02"),
        "emovo": ("dis-f1-b1", "b1"),
        "casia": ("liuchanhg_angry_201", "201"),
    }
    for reader, (stem, sentence) in cases.items():
        assert CORPORA[reader].sentence(stem) == sentence, reader
        assert CORPORA[reader].sentence("not-a-name") == "", reader
    assert CORPORA["savee"].sentence("DC_sa03") == ""  # per-emotion numbers, not texts: unknown (test below)
    iemocap = CORPORA["iemocap"].sentence
    assert iemocap("Ses01F_script01_1_F000") == iemocap("Ses03F_script01_1_F000") == "script01_1_F000"
    assert iemocap("Ses01F_impro01_M002") == "Ses01F_impro01_M002"  # improvised: words of its own


def test_own_corpus_sentences_from_the_pattern(tmp_path, make_wav):
    for i, (spk, text) in enumerate([("s1", "t1"), ("s1", "t2"), ("s2", "t1"), ("s2", "t2")]):
        make_wav(f"mine/{spk}/happy_{text}.wav", seconds=0.3, seed=i)
    toml = tmp_path / "mine.toml"
    toml.write_text(
        '[dataset]\nname = "MINE"\nclasses = ["happy", "sad"]\nreader = "pattern"\n'
        'pattern = "(?P<speaker>s\\\\d)/(?P<label>[a-z]+)_(?P<sentence>t\\\\d)"\n'
    )
    cfg = load_config(toml)
    manifest, _ = build_manifest(tmp_path / "mine", cfg.dataset)
    assert sorted(manifest.sentence) == ["t1", "t1", "t2", "t2"]
    assert sorted(sentences(manifest, cfg.dataset)) == ["t1", "t1", "t2", "t2"]


def test_audit_of_a_corpus_folder_finds_copied_audio(tmp_path):
    tree = emodb_tree(tmp_path / "EMODB", speakers=("03", "08", "09"), texts=("a01", "a02"))
    first = sorted((tree / "wav").glob("03a01*.wav"))[0]
    shutil.copy(sorted((tree / "wav").glob("08a02*.wav"))[0], first)  # the same audio under two names
    cfg = load_config("EMODB", {"train.protocol": "speaker", "train.folds": 3})
    table, source = audit_corpus(cfg, data=tree)
    assert "files" in source and table.iloc[-1].n_test == len(list((tree / "wav").glob("*.wav")))
    assert table.iloc[-1].identical_audio == 2  # each copy is in the other's training part
    assert table.iloc[-1].shared_speaker == 0 and table.iloc[-1].shared_sentence == table.iloc[-1].n_test


@pytest.mark.slow
def test_audit_cli_prints_the_table_writes_the_csv_and_never_overwrites(tmp_path, mfcc):
    csv = tmp_path / "audit.csv"
    argv = [sys.executable, "-m", "timnet.cli", "audit", "--dataset", "EMODB", "--mfcc", str(mfcc)]
    argv += ["--set", "features.signal_length=16000", "--protocol", "sentence", "--folds", "3", "--csv", str(csv)]
    done = subprocess.run(argv, capture_output=True, text=True, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert "protocol sentence, 3 folds" in done.stdout and "0/84 a sentence" in done.stdout
    table = pd.read_csv(csv)
    assert list(table.columns) == COLUMNS and table.iloc[-1].n_test == 84 and table.iloc[-1].shared_sentence == 0
    again = subprocess.run(argv, capture_output=True, text=True, cwd=tmp_path)
    assert again.returncode == 2 and again.stderr.count("\n") == 1 and "already exists" in again.stderr


def test_speaker_sentence_cells_test_every_utterance_once_where_sentences_are_few():
    """RAVDESS has 2 statements: 4 speaker groups x 2 sentence groups = 8 cells; each cell's training part has
    neither its speakers nor its sentences, and every utterance is in exactly one test part."""
    manifest = grid_manifest().assign(sentence=lambda m: np.where(m.stem.str[2:5] < "a03", "01", "02"))
    splits = make_splits("speaker-sentence", manifest, None, 4, seed=3)
    assert [(s.fold, s.cell) for s in splits] == [(i, j) for i in range(1, 5) for j in (1, 2)]
    for s in splits:
        assert not set(manifest.speaker.iloc[s.train]) & set(manifest.speaker.iloc[s.test])
        assert not set(manifest.sentence.iloc[s.train]) & set(manifest.sentence.iloc[s.test])
        heard = manifest.speaker.isin(manifest.speaker.iloc[s.test]) | manifest.sentence.isin(
            manifest.sentence.iloc[s.test]
        )
        assert sorted(s.train) == list(np.flatnonzero(~heard))  # trained on every other speaker's other sentences
    tested = np.sort(np.concatenate([s.test for s in splits]))
    assert list(tested) == list(range(32))  # each utterance once
    assert [len(te) for _, te in make_folds("speaker-sentence", manifest, None, 4, seed=3)] == [4] * 8


def test_speaker_sentence_groups_are_drawn_from_the_seed_and_capped_by_the_groups():
    """10 speakers x 10 texts, 3 folds: 3 speaker groups x 3 sentence groups, the grouping changed by the seed; with
    as many folds as speakers and texts each cell is one speaker's one text (the seed then changes nothing)."""
    stems = [f"{s:02d}t{t:02d}" for s in range(10) for t in range(10)]
    manifest = pd.DataFrame({"stem": stems, "speaker": [x[:2] for x in stems], "sentence": [x[2:] for x in stems]})
    groupings = {}
    for seed in (0, 1):
        splits = make_splits("speaker-sentence", manifest, None, 3, seed)
        assert len(splits) == 9 and sorted(np.concatenate([s.test for s in splits])) == list(range(100))
        groupings[seed] = [tuple(sorted(set(manifest.speaker.iloc[s.test]))) for s in splits if s.cell == 1]
    assert groupings[0] != groupings[1]
    assert sorted(sum(groupings[0], ())) == sorted(set(manifest.speaker))  # the groups deal out every speaker
    every = make_splits("speaker-sentence", manifest, None, 10, 0)
    assert len(every) == 100 and all(len(s.test) == 1 for s in every)
    assert [(s.fold, s.cell) for s in every] == [
        (s.fold, s.cell) for s in make_splits("speaker-sentence", manifest, None, 10, 5)
    ]
    two_texts = manifest.assign(sentence=np.where(manifest.sentence < "t05", "x", "y"))
    capped = make_splits("speaker-sentence", two_texts, None, 3, 0)
    assert max(s.cell for s in capped) == 2  # K_t = min(K_s, sentences): 2 texts make 2 sentence groups


def test_sentence_protocols_refuse_savee_whose_texts_are_not_known(tmp_path):
    stems = [f"{spk}_{e}{i:02d}" for spk in ("DC", "JE") for e in ("a", "n") for i in (1, 2)]
    manifest = pd.DataFrame({"stem": stems, "speaker": [x[:2] for x in stems], "file": [f"{x}.wav" for x in stems]})
    for protocol in ("sentence", "speaker-sentence"):
        cfg = load_config("SAVEE", {"train.protocol": protocol, "train.folds": 2})
        with pytest.raises(TimnetError, match=r"^SAVEE: protocol .* numbers its sentences per emotion") as err:
            audit(cfg, manifest, None)
        assert "\n" not in str(err.value)
    table = audit(load_config("SAVEE", {"train.protocol": "speaker", "train.folds": 2}), manifest, None)
    assert table.shared_sentence.isna().all()  # the audit says unknown, not 0


def test_audit_cli_shows_every_utterance_tested_once_under_speaker_sentence(tmp_path, mfcc):
    argv = [sys.executable, "-m", "timnet.cli", "audit", "--dataset", "EMODB", "--mfcc", str(mfcc)]
    argv += ["--set", "features.signal_length=16000", "--protocol", "speaker-sentence", "--folds", "2"]
    argv += ["--csv", str(tmp_path / "audit.csv")]
    done = subprocess.run(argv, capture_output=True, text=True, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    table = pd.read_csv(tmp_path / "audit.csv")
    cells = table[table.fold != "total"]
    assert list(table.columns) == ["fold", "cell", *COLUMNS[1:]] and len(cells) == 4
    assert cells.n_test.sum() == 84 and (cells[["shared_speaker", "shared_sentence"]] == 0).all().all()
    assert "0/84 share a speaker, 0/84 a sentence" in done.stdout
    assert "coverage: 84 of 84 utterances tested, each once" in done.stdout
