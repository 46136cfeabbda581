"""Corpus readers on synthetic trees that use each corpus's real layout and file-name patterns."""

from __future__ import annotations

import warnings

import pytest
from conftest import write_wav

from timnet import load_config
from timnet.core.errors import TimnetError
from timnet.data.corpora import authors_order, build_manifest, canonical_stems


def manifest(name, root, **kw):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return build_manifest(root, load_config(name).dataset, **kw)


def touch(root, *names):
    for n in names:
        write_wav(root / n, seconds=0.2)


def test_emodb_labels_speakers_and_authors_order(tmp_path):
    touch(
        tmp_path,
        "wav/03a01Wa.wav",
        "wav/16b10Lb.wav",
        "wav/03a05Wa.wav",
        "wav/08a02Nc.wav",
        "wav/10a01Aa.wav",
        "wav/09b02Ea.wav",
    )
    df, skipped = manifest("EMODB", tmp_path)
    assert skipped == []
    # class order angry, boredom, disgust, fear, happy, neutral, sad; natsort inside a class
    assert list(df.stem) == ["03a01Wa", "03a05Wa", "16b10Lb", "09b02Ea", "10a01Aa", "08a02Nc"]
    assert list(df.label) == ["angry", "angry", "boredom", "disgust", "fear", "neutral"]
    assert list(df.class_index) == [0, 0, 1, 2, 3, 5]
    assert list(df.speaker) == ["03", "03", "16", "09", "10", "08"]
    assert list(df.gender) == ["m", "m", "f", "f", "m", "f"]
    assert df.file[0] == "wav/03a01Wa.wav"


def test_natsort_puts_2_before_10():
    import pandas as pd

    df = pd.DataFrame({"stem": ["a10", "a2", "a1"], "label": ["x", "x", "x"]})
    assert list(authors_order(df, ["x"]).stem) == ["a1", "a2", "a10"]


def test_ravdess_speech_only_and_actor_gender(tmp_path):
    touch(
        tmp_path,
        "Actor_01/03-01-05-01-01-01-01.wav",
        "Actor_02/03-01-02-02-01-02-02.wav",
        "Actor_01/03-02-05-01-01-01-01.wav",  # song: not part of the speech task
        "Actor_02/03-01-08-01-02-01-02.wav",
        "Actor_02/03-01-01-01-01-01-02.wav",
    )
    df, skipped = manifest("RAVDESS", tmp_path)
    assert skipped == []
    assert list(df.label) == ["angry", "calm", "neutral", "surprise"]
    assert list(df.speaker) == ["01", "02", "02", "02"]
    assert list(df.gender) == ["m", "f", "f", "f"]


@pytest.mark.parametrize("layout", ["nested", "flat"])
def test_savee_both_layouts_give_the_same_stems(tmp_path, layout):
    names = ["DC/a01.wav", "DC/sa02.wav", "JE/su01.wav", "KL/n30.wav", "JK/d15.wav"]
    touch(tmp_path, *[f"AudioData/{n}" if layout == "nested" else n.replace("/", "_") for n in names])
    df, _ = manifest("SAVEE", tmp_path)
    assert list(df.stem) == ["DC_a01", "JK_d15", "KL_n30", "DC_sa02", "JE_su01"]
    assert list(df.label) == ["angry", "disgust", "neutral", "sad", "surprise"]
    assert list(df.speaker) == ["DC", "JK", "KL", "DC", "JE"]


def test_emovo(tmp_path):
    touch(tmp_path, "f1/dis-f1-b1.wav", "m3/gio-m3-n5.wav", "f2/pau-f2-l4.wav", "m1/rab-m1-d2.wav", "f3/tri-f3-b3.wav")
    df, _ = manifest("EMOVO", tmp_path)
    assert list(df.label) == ["angry", "disgust", "fear", "happy", "sad"]
    assert list(df.speaker) == ["m1", "f1", "f2", "m3", "f3"]
    assert list(df.gender) == ["m", "f", "f", "m", "f"]


def test_iemocap_release_tree(tmp_path):
    evaluation = tmp_path / "Session1" / "dialog" / "EmoEvaluation"
    evaluation.mkdir(parents=True)
    (evaluation / "Categorical").mkdir()  # real releases have sub-folders here
    (evaluation / "Ses01F_impro01.txt").write_text(
        "% [START_TIME - END_TIME] TURN_NAME EMOTION [V, A, D]\n\n"
        "[6.2901 - 8.2357]\tSes01F_impro01_F000\tneu\t[2.5000, 2.5000, 2.5000]\n"
        "C-E2:\tNeutral;\t()\n"
        "[10.0 - 11.5]\tSes01F_impro01_M001\texc\t[3.0, 3.0, 3.0]\n"
        "[12.0 - 13.5]\tSes01F_impro01_F002\tfru\t[3.0, 3.0, 3.0]\n"
        "[14.0 - 15.5]\tSes01F_impro01_M003\tang\t[3.0, 3.0, 3.0]\n"
    )
    wav = tmp_path / "Session1" / "sentences" / "wav" / "Ses01F_impro01"
    for utt in ("F000", "M001", "F002", "M003"):
        write_wav(wav / f"Ses01F_impro01_{utt}.wav", seconds=0.2)
    df, skipped = manifest("IEMOCAP", tmp_path)
    assert list(df.stem) == ["Ses01F_impro01_M003", "Ses01F_impro01_M001", "Ses01F_impro01_F000"]
    assert list(df.label) == ["angry", "happy", "neutral"]  # excited -> happy, frustrated dropped
    assert list(df.session) == ["Session1"] * 3
    assert list(df.speaker) == ["Ses01M", "Ses01M", "Ses01F"]


def test_folder_per_class_for_casia_or_new_corpora(tmp_path):
    touch(tmp_path, "sad/liuchanhg/201.wav", "angry/wangzhe/2.wav", "angry/wangzhe/10.wav")
    df, _ = manifest("CASIA", tmp_path)
    assert list(df.label) == ["angry", "angry", "sad"]
    assert list(df.stem) == ["wangzhe_angry_2", "wangzhe_angry_10", "liuchanhg_sad_201"]  # names repeat per speaker
    assert list(df.speaker) == ["wangzhe", "wangzhe", "liuchanhg"]


def test_unknown_file_name_is_one_clear_error_or_skipped(tmp_path):
    touch(tmp_path, "wav/03a01Wa.wav", "wav/recording 7.wav")
    with pytest.raises(TimnetError, match=r"recording 7\.wav: name does not follow the EMODB pattern.*--skip-bad"):
        manifest("EMODB", tmp_path)
    df, skipped = manifest("EMODB", tmp_path, skip_bad=True)
    assert list(df.stem) == ["03a01Wa"]
    assert skipped[0][0] == "wav/recording 7.wav"


def test_missing_folder_and_empty_folder(tmp_path):
    with pytest.raises(TimnetError, match="corpus folder not found"):
        manifest("EMODB", tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(TimnetError, match="no EMODB audio files found"):
        manifest("EMODB", tmp_path / "empty")


def test_count_different_from_complete_corpus_is_reported(tmp_path):
    touch(tmp_path, "wav/03a01Wa.wav")
    with pytest.warns(UserWarning, match=r"found 1 utterances .* complete corpus has 535 \(-534\)"):
        build_manifest(tmp_path, load_config("EMODB").dataset)


@pytest.mark.parametrize("name,count", [("EMODB", 535), ("RAVDESS", 1440), ("EMOVO", 588), ("SAVEE", 480)])
def test_canonical_lists_have_the_complete_counts(name, count):
    cfg = load_config(name)
    df = canonical_stems(cfg.dataset)
    assert len(df) == count == cfg.dataset.expected_count
    assert df.stem.is_unique
    # class blocks in class order
    ranks = [cfg.dataset.classes.index(lab) for lab in df.label]
    assert ranks == sorted(ranks)
