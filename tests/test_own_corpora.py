"""CASIA as released and your own corpus in any layout (`reader = "pattern"`), on synthetic audio in exactly those
layouts, names repeating across speakers: manifests, corpus-check, audio read by content, and training under both
protocols with per-speaker folds."""

from __future__ import annotations

import sys
import warnings

import numpy as np
import pandas as pd
import pytest
import soundfile as sf
from conftest import SHORT, train, write_wav

from timnet import load_config
from timnet.cli import main
from timnet.core.config import Config
from timnet.core.errors import TimnetError
from timnet.data.corpora import build_manifest
from timnet.data.corpus_check import config_toml
from timnet.data.mfcc_extraction import load_signal, preprocess

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

CASIA_SPEAKERS = ("liuchanhg", "wangzhe", "zhaoquanyin", "ZhaoZuoxiang")
CASIA_PITCH = {"angry": 150, "fear": 300, "happy": 600, "neutral": 900, "sad": 1300, "surprise": 1800}
PATTERN = r"(?P<speaker>[A-Z]+)_(?P<label>\w+)/"
MINE = {
    "name": "MINE",
    "reader": "pattern",
    "classes": ["angry", "happy", "neutral", "surprise"],
    "pattern": PATTERN,
    "label_map": {"ps": "surprise", "ang": "angry"},
    "drop": ["calm"],
    "expected_count": 0,
}
MINE_PITCH = {"ang": 150, "happy": 1300, "neutral": 2500, "ps": 3300, "calm": 600}


def casia_tree(root, layout="speaker-first", speakers=CASIA_SPEAKERS, names=("201", "202")):
    for si, spk in enumerate(speakers):
        for ei, (emo, pitch) in enumerate(CASIA_PITCH.items()):
            for ni, name in enumerate(names):
                folder = f"{spk}/{emo}" if layout == "speaker-first" else f"{emo}/{spk}"
                write_wav(
                    root / folder / f"{name}.wav", seconds=0.5, freq=pitch * (1 + 0.03 * si), seed=si * 50 + ei * 5 + ni
                )
    return root


def mine_config(tmp_path, **dataset):
    """A pattern corpus' TOML: MINE's [dataset] (with `dataset` changes), the EXAMPLE settings, short signals."""
    data = load_config("EXAMPLE", SHORT).settings()
    data["dataset"] = {**MINE, **dataset}
    path = tmp_path / "mine.toml"
    path.write_text(config_toml(Config.from_dict(data)))
    return path


def mine_tree(root, speakers=("AB", "CD", "EF"), names=("01", "02")):
    """`<SPEAKER>_<code>/<NN>.wav`: the same names in every folder; `calm` is dropped; one stray file."""
    for si, spk in enumerate(speakers):
        for ei, (code, pitch) in enumerate(MINE_PITCH.items()):
            for ni, name in enumerate(names):
                write_wav(
                    root / f"{spk}_{code}" / f"{name}.wav",
                    seconds=0.5,
                    freq=pitch * (1 + 0.03 * si),
                    seed=si * 50 + ei * 5 + ni,
                )
    return root


def quiet_manifest(root, dataset, **kw):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return build_manifest(root, dataset, **kw)


def test_casia_release_layout_either_way_round_gives_the_same_utterances(tmp_path):
    dataset = load_config("CASIA").dataset
    a, _ = quiet_manifest(casia_tree(tmp_path / "a", "speaker-first"), dataset)
    b, _ = quiet_manifest(casia_tree(tmp_path / "b", "emotion-first"), dataset)
    assert len(a) == 4 * 6 * 2 and a.stem.is_unique  # 201.wav repeats in every speaker's folders
    assert list(a.stem) == list(b.stem) and list(a.speaker) == list(b.speaker)
    i = list(a.stem).index("liuchanhg_angry_201")
    assert a.file[i] == "liuchanhg/angry/201.wav" and b.file[i] == "angry/liuchanhg/201.wav"
    assert sorted(a.speaker.unique()) == sorted(CASIA_SPEAKERS)
    assert dict(zip(a.speaker, a.gender))["wangzhe"] == "m"
    with pytest.warns(UserWarning, match="authors' sample order is unknown"):
        build_manifest(tmp_path / "a", dataset)


def test_casia_other_layouts_say_what_is_expected(tmp_path):
    write_wav(tmp_path / "x" / "201.wav", seconds=0.3)
    with pytest.raises(TimnetError, match=r"<speaker>/<emotion>/<file>\.wav"):
        quiet_manifest(tmp_path, load_config("CASIA").dataset)


@pytest.mark.slow
def test_casia_from_audio_trains_leave_one_speaker_out_and_says_the_folds_are_not_the_authors(tmp_path):
    cfg = load_config("CASIA", {**SHORT, "train.epochs": 1, "train.protocol": "speaker", "train.folds": 4})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        npy = preprocess(
            cfg, casia_tree(tmp_path / "CASIA", names=("201",)), tmp_path / "MFCC", workers=1, progress=False
        ).npy
    result = train(tmp_path, npy, cfg=cfg)
    assert list(result.folds.fold) == [1, 2, 3, 4]
    per_fold = result.predictions.groupby("fold").speaker.unique()
    assert sorted(s for speakers in per_fold for s in speakers) == sorted(CASIA_SPEAKERS)  # one speaker per fold
    assert all(len(s) == 1 for s in per_fold) and len(result.predictions) == 24
    config = pd.read_excel(result.workbook, sheet_name="config")
    assert config.setting[0] == "caveat" and "not the authors'" in config.value[0]
    random = train(tmp_path, npy, cfg=cfg.with_overrides({"train.protocol": "random", "train.folds": 2}))
    assert len(random.predictions) == 24 and random.predictions.stem.is_unique


def test_timnet_run_on_casia_audio_says_the_fold_caveat_once(tmp_path):
    """Preprocessing alone warns that CASIA read from audio does not give the authors' folds; in `timnet run` the
    training stage says it for the run, and the features stage stays quiet about it (it once said it twice)."""
    from timnet.pipeline import run_pipeline
    from timnet.training.execution import Execution
    from timnet.training.run_store import Roots

    cfg = load_config("CASIA", {**SHORT, "train.epochs": 1, "train.folds": 2})
    data = casia_tree(tmp_path / "CASIA", names=("201",))
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        how = Execution(Roots(*(tmp_path / d for d in "MLR")), device="cpu", workers=1, progress=False)
        run_pipeline(cfg, data, tmp_path / "MFCC", how, say=lambda line: None)
    caveats = [w for w in seen if "not the authors'" in str(w.message)]
    assert len(caveats) == 1, [str(w.message) for w in seen]


def test_pattern_corpus_labels_speakers_codes_drops_and_names_repeating(tmp_path):
    cfg = load_config(mine_config(tmp_path))
    root = mine_tree(tmp_path / "MINE")
    write_wav(root / "notes" / "hello.wav", seconds=0.3)  # no speaker_label folder
    write_wav(root / "AB_bored" / "01.wav", seconds=0.3)  # a label that is not a class
    with pytest.raises(TimnetError, match=r"hello\.wav: path does not match dataset\.pattern .*--skip-bad"):
        quiet_manifest(root, cfg.dataset)
    df, skipped = quiet_manifest(root, cfg.dataset, skip_bad=True)
    assert dict(skipped)["notes/hello.wav"].startswith("path does not match")
    assert "label 'bored' is not a class" in dict(skipped)["AB_bored/01.wav"]
    assert len(df) == 3 * 4 * 2 and df.stem.is_unique and "AB_ps_01" in set(df.stem)
    assert list(df.label.unique()) == ["angry", "happy", "neutral", "surprise"]  # ang, ps mapped; calm dropped
    assert sorted(df.speaker.unique()) == ["AB", "CD", "EF"]


def test_folder_levels_instead_of_a_pattern(tmp_path):
    cfg = load_config(mine_config(tmp_path, pattern="", label_level=-1, speaker_level=0))
    for spk in ("s1", "s2"):
        for code in ("ang", "happy", "ps"):
            write_wav(tmp_path / "c" / spk / code / "take.wav", seconds=0.3)
    df, _ = quiet_manifest(tmp_path / "c", cfg.dataset)
    assert list(df.stem) == ["s1_ang_take", "s2_ang_take", "s1_happy_take", "s2_happy_take", "s1_ps_take", "s2_ps_take"]
    assert list(df.speaker) == ["s1", "s2"] * 3 and list(df.label) == ["angry"] * 2 + ["happy"] * 2 + ["surprise"] * 2


@pytest.mark.parametrize(
    "change,message",
    [
        ({"label_level": 0}, "dataset.label_level: must be set, or else dataset.pattern has a"),
        ({"label_map": {"x": "joy"}}, "dataset.label_map.x: must be one of the classes"),
        ({"drop": ["angry"]}, "dataset.drop: must be labels that are not classes"),
    ],
)
def test_layout_keys_are_checked_at_the_boundary(change, message):
    with pytest.raises(TimnetError, match=message):
        Config.from_dict({**load_config("EXAMPLE").to_dict(), "dataset": {**MINE, **change}})


def test_layout_keys_only_with_the_pattern_reader_and_old_configs_still_load(tmp_path):
    with pytest.raises(
        TimnetError, match=r'dataset.pattern: must be left out: it is read only with reader = "pattern"'
    ):
        load_config("EMODB", {"dataset.pattern": "x"})
    with pytest.raises(TimnetError, match=r"dataset.pattern: must be a valid regular expression"):
        Config.from_dict({**load_config("EXAMPLE").to_dict(), "dataset": {**MINE, "pattern": "(?P<label>"}})
    saved = load_config("EMODB").to_dict()
    for key in ("pattern", "label_level", "speaker_level", "label_map", "drop"):
        del saved["dataset"][key]  # a run saved before these keys existed
    assert Config.from_dict(saved).dataset.label_map == {}


def test_corpus_check_shows_what_it_found_and_the_toml_to_use(tmp_path, capsys):
    root = mine_tree(tmp_path / "MINE")
    write_wav(root / "notes" / "hello.wav", seconds=0.3)
    write_wav(root / "AB_bored" / "01.wav", seconds=0.3)
    assert main(["corpus-check", "--config", str(mine_config(tmp_path)), "--data", str(root)]) == 0
    out = capsys.readouterr().out
    assert "24 files labelled" in out and "dropped (dataset.drop): calm 6" in out
    assert "labels that are not classes (add to classes, label_map or drop): bored 1" in out
    assert "notes/hello.wav: path does not match dataset.pattern" in out
    table = out.split("files labelled\n")[1].split("\n")
    assert table[0].split() == ["label", "angry", "happy", "neutral", "surprise", "total"]
    assert [line.split() for line in table[2:6]] == [
        ["AB", "2", "2", "2", "2", "8"],
        ["CD", "2", "2", "2", "2", "8"],
        ["EF", "2", "2", "2", "2", "8"],
        ["total", "6", "6", "6", "6", "24"],
    ]
    toml = out.split("--config it\n")[1]
    suggested = Config.from_dict(tomllib.loads(toml))
    assert suggested.dataset.classes == ["angry", "happy", "neutral", "surprise", "bored"]
    assert suggested.dataset.pattern == PATTERN and suggested.dataset.expected_count == 25
    assert suggested.features == load_config(mine_config(tmp_path)).features


@pytest.mark.parametrize(
    "fmt,subtype,sr,channels",
    [("AIFF", "PCM_24", 44100, 1), ("WAV", "FLOAT", 8000, 2), ("WAV", "PCM_U8", 22050, 1), ("WAV", "PCM_32", 48000, 2)],
)
def test_audio_is_read_by_content_whatever_its_name(tmp_path, fmt, subtype, sr, channels):
    from conftest import tone

    path = tmp_path / "take.wav"  # AIFF or float audio named .wav
    sf.write(path, tone(seconds=0.5, sr=sr, channels=channels), sr, format=fmt, subtype=subtype)
    settings = load_config("EXAMPLE").features
    y = load_signal(path, settings)
    assert y.ndim == 1 and abs(len(y) - 0.5 * settings.sample_rate) <= 2 and np.max(np.abs(y)) > 0.05
