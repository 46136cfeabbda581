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
from timnet.data.splits import make_folds

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
    assert len(folds) == 2 and (folds.n_test > 0).all()
    for column in zero:
        assert (folds[column] == 0).all(), (protocol, column)
    for column in {"shared_speaker", "shared_sentence"} - set(zero):
        assert (folds[column] == folds.n_test).all()  # what the protocol does not separate stays shared
    again = make_folds(protocol, manifest.assign(sentence=sentences(manifest, cfg.dataset)), None, 2, cfg.train.seed)
    first = make_folds(protocol, manifest.assign(sentence=sentences(manifest, cfg.dataset)), None, 2, cfg.train.seed)
    assert all((a[1] == b[1]).all() for a, b in zip(first, again))  # deterministic from the seed


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
        "savee": ("DC_sa03", "sa03"),
        "emovo": ("dis-f1-b1", "b1"),
        "casia": ("liuchanhg_angry_201", "201"),
    }
    for reader, (stem, sentence) in cases.items():
        assert CORPORA[reader].sentence(stem) == sentence, reader
        assert CORPORA[reader].sentence("not-a-name") == "", reader
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


def test_speaker_sentence_folds_test_every_speaker_where_sentences_are_few():
    """RAVDESS has 2 statements: 4 speaker folds take the 2 sentence groups in turn, so every speaker is tested."""
    manifest = grid_manifest().assign(sentence=lambda m: np.where(m.stem.str[2:5] < "a03", "01", "02"))
    folds = make_folds("speaker-sentence", manifest, None, 4, seed=3)
    assert len(folds) == 4
    assert sorted(s for _, te in folds for s in set(manifest.speaker.iloc[te])) == sorted(SPEAKERS)
    for train, test in folds:
        assert not set(manifest.speaker.iloc[train]) & set(manifest.speaker.iloc[test])
        assert not set(manifest.sentence.iloc[train]) & set(manifest.sentence.iloc[test])
