"""The authors' MFCC recipe, bad input handling, and the idempotent MFCC file trio."""

from __future__ import annotations

import json
import os
import warnings

import librosa
import numpy as np
import pandas as pd
import pytest
import soundfile as sf
from conftest import EMODB_16K, needs_shared, tone, write_wav

from timnet import load_config
from timnet.core.config import known_datasets
from timnet.core.errors import BadAudioError, TimnetError
from timnet.data.feature_files import load_features
from timnet.data.mfcc_extraction import extract_file, extract_many, fix_length, preprocess

EMODB = load_config("EMODB")
FACT_FRAMES = {"CASIA": 172, "EMODB": 188, "EMOVO": 188, "IEMOCAP": 606, "RAVDESS": 215, "SAVEE": 254}


def librosa_mfcc(path, length):
    """The authors' recipe written out directly with librosa, as in their preprocessing code."""
    y, sr = librosa.load(path, sr=22050, res_type="soxr_hq")
    if len(y) < length:
        left = (length - len(y)) // 2
        y = np.pad(y, (left, length - len(y) - left))
    else:
        start = (len(y) - length) // 2
        y = y[start : start + length]
    return librosa.feature.mfcc(y=y, sr=sr, n_mfcc=39).T


def test_fix_length_is_centred():
    assert list(fix_length(np.arange(1, 4), 8)) == [0, 0, 1, 2, 3, 0, 0, 0]  # (8-3)//2 = 2 left
    assert list(fix_length(np.arange(10), 4)) == [3, 4, 5, 6]  # start (10-4)//2 = 3
    assert list(fix_length(np.arange(4), 4)) == [0, 1, 2, 3]


@pytest.mark.parametrize("name", sorted(FACT_FRAMES))
def test_frame_count_for_every_corpus_length(name, make_wav):
    cfg = load_config(name).features
    assert cfg.frames == FACT_FRAMES[name]
    feat = extract_file(make_wav("a.wav", seconds=0.5), cfg)
    assert feat.shape == (FACT_FRAMES[name], 39) and feat.dtype == np.float32


def test_all_paper_corpora_are_configured():
    assert sorted(set(known_datasets()) - {"EXAMPLE"}) == sorted(FACT_FRAMES)


@pytest.mark.parametrize("seconds,sr", [(1.2, 16000), (6.0, 16000), (2.0, 22050), (1.0, 48000)])
def test_equals_direct_librosa_on_synthetic_audio(make_wav, seconds, sr):
    path = make_wav("x.wav", seconds=seconds, sr=sr, freq=230.0)
    np.testing.assert_allclose(extract_file(path, EMODB.features), librosa_mfcc(path, 96000), rtol=0, atol=1e-3)


@needs_shared
def test_equals_direct_librosa_on_real_emodb_files():
    files = sorted(EMODB_16K.glob("*.wav"))[::60]
    assert len(files) >= 6
    for f in files:
        np.testing.assert_allclose(extract_file(f, EMODB.features), librosa_mfcc(f, 96000), rtol=0, atol=1e-3)


def test_resampler_is_the_recipe_not_a_default(make_wav):
    """soxr_hq vs kaiser-style resampling changes the features measurably: the setting is honoured."""
    path = make_wav("x.wav", seconds=1.0, sr=16000)
    a = extract_file(path, EMODB.features)
    b = extract_file(path, EMODB.with_overrides({"features.res_type": "polyphase"}).features)
    assert np.abs(a - b).max() > 1e-3


# --- bad input ---------------------------------------------------------------------------
def test_corrupt_file(tmp_path):
    bad = tmp_path / "03a01Wa.wav"
    bad.write_bytes(b"RIFF\x00\x00\x00\x00WAVEjunkjunk")
    with pytest.raises(BadAudioError, match=r"03a01Wa\.wav: cannot be read as audio .*--skip-bad"):
        extract_file(bad, EMODB.features)


def test_text_file_named_wav(tmp_path):
    bad = tmp_path / "notes.wav"
    bad.write_text("not audio at all")
    with pytest.raises(BadAudioError, match="notes.wav: cannot be read as audio"):
        extract_file(bad, EMODB.features)


def test_empty_file(make_wav):
    with pytest.raises(BadAudioError, match="is empty"):
        extract_file(make_wav("e.wav", y=np.zeros(0, np.float32)), EMODB.features)


def test_silent_file(make_wav):
    with pytest.raises(BadAudioError, match="is silent"):
        extract_file(make_wav("s.wav", y=np.zeros(16000, np.float32)), EMODB.features)


def test_very_short_file(make_wav):
    with pytest.raises(BadAudioError, match=r"too short \(0\.010 s"):
        extract_file(make_wav("s.wav", y=tone(0.01)), EMODB.features)


def test_missing_file(tmp_path):
    with pytest.raises(BadAudioError, match="file not found"):
        extract_file(tmp_path / "gone.wav", EMODB.features)


def test_stereo_is_averaged_to_mono_like_librosa(make_wav):
    stereo = tone(1.0, channels=2)
    a = extract_file(make_wav("st.wav", y=stereo, subtype="FLOAT"), EMODB.features)
    b = extract_file(make_wav("mo.wav", y=stereo.mean(axis=1), subtype="FLOAT"), EMODB.features)
    np.testing.assert_allclose(a, b, atol=1e-3)


@pytest.mark.parametrize("subtype", ["PCM_U8", "PCM_24", "PCM_32", "FLOAT"])
def test_other_bit_depths_read_as_float(make_wav, subtype):
    y = tone(1.0)
    ref = extract_file(make_wav("ref.wav", y=y, subtype="PCM_24"), EMODB.features)
    out = extract_file(make_wav(f"{subtype}.wav", y=y, subtype=subtype), EMODB.features)
    # 8-bit quantisation noise only shows in quiet bins; the spectral envelope (c0..c12) stays close
    tol = 6.0 if subtype == "PCM_U8" else 1e-2
    assert np.abs(out[:, :13] - ref[:, :13]).mean() < tol


def test_other_sample_rates_are_resampled_to_22050(make_wav):
    y = tone(1.0, sr=44100, freq=300.0)
    assert sf.info(make_wav("hi.wav", y=y, sr=44100, subtype="FLOAT")).samplerate == 44100
    a = extract_file(make_wav("hi.wav", y=y, sr=44100, subtype="FLOAT"), EMODB.features)
    b = extract_file(
        make_wav(
            "lo.wav",
            y=librosa.resample(y, orig_sr=44100, target_sr=22050, res_type="soxr_hq"),
            sr=22050,
            subtype="FLOAT",
        ),
        EMODB.features,
    )
    np.testing.assert_allclose(a, b, atol=1e-3)


def test_extract_many_reports_failures_by_index(make_wav, tmp_path):
    good = make_wav("good.wav")
    bad = tmp_path / "bad.wav"
    bad.write_bytes(b"junk")
    x, failed = extract_many([good, bad, good], EMODB.features, workers=1, progress=False)
    assert set(failed) == {1} and "cannot be read" in failed[1]
    np.testing.assert_allclose(x[0], x[2], rtol=0, atol=1e-4)  # float32 round-off only
    assert not x[1].any()


def test_parallel_equals_serial(emodb_root):
    paths = sorted((emodb_root / "wav").glob("*.wav"))
    serial, _ = extract_many(paths, EMODB.features, workers=1, progress=False)
    parallel, _ = extract_many(paths, EMODB.features, workers=2, progress=False)
    np.testing.assert_allclose(serial, parallel, rtol=0, atol=1e-4)


# --- the MFCC trio -------------------------------------------------------------------------
def run_preprocess(root, out, **kw):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return preprocess(EMODB, root, out, workers=kw.pop("workers", 1), progress=False, **kw)


def test_preprocess_writes_authors_format_and_manifest(emodb_root, tmp_path):
    out = tmp_path / "MFCC"
    res = run_preprocess(emodb_root, out)
    assert res.count == 4 * 3 * 7 and not res.up_to_date
    data = np.load(out / "EMODB.npy", allow_pickle=True).item()
    assert data["x"].shape == (84, 188, 39) and data["x"].dtype == np.float32
    assert data["y"].shape == (84, 7) and np.all(data["y"].sum(1) == 1)
    manifest = pd.read_csv(out / "EMODB.csv", dtype=str, keep_default_na=False)
    assert list(manifest.columns[:4]) == ["file", "stem", "label", "class_index"]
    assert manifest.file[0] == "wav/03a01Wa.wav" and set(manifest.status) == {"ok"}
    assert [int(i) for i in manifest.class_index] == list(data["y"].argmax(1))
    # features are in manifest order: row 0 is exactly that file's features
    np.testing.assert_allclose(
        data["x"][0], extract_file(emodb_root / "wav/03a01Wa.wav", EMODB.features), rtol=0, atol=1e-4
    )
    record = json.loads((out / "EMODB.json").read_text())
    assert record["settings"]["res_type"] == "soxr_hq" and record["settings"]["pad_mode"] == "constant"
    assert record["count"] == 84
    assert not list(out.glob(".*tmp*")), "temporary files left behind"


def test_rerun_with_nothing_changed_is_a_noop(emodb_root, tmp_path):
    out = tmp_path / "MFCC"
    run_preprocess(emodb_root, out)
    stamp = (out / "EMODB.npy").stat().st_mtime_ns
    again = run_preprocess(emodb_root, out)
    assert again.up_to_date and again.count == 84
    assert (out / "EMODB.npy").stat().st_mtime_ns == stamp


def test_changed_data_or_settings_are_detected_and_never_silently_overwritten(emodb_root, tmp_path):
    out = tmp_path / "MFCC"
    run_preprocess(emodb_root, out)
    touched = emodb_root / "wav" / "03a01Fa.wav"
    os.utime(touched, ns=(touched.stat().st_atime_ns, touched.stat().st_mtime_ns + 10**9))
    with pytest.raises(TimnetError, match=r"differs \(an input file's size or modification time changed"):
        run_preprocess(emodb_root, out)
    assert run_preprocess(emodb_root, out, overwrite=True).count == 84
    write_wav(emodb_root / "wav" / "11a01Wa.wav", seconds=0.5)
    with pytest.raises(TimnetError, match=r"already exists and differs \(1 file\(s\) added, 0 removed\).*--overwrite"):
        run_preprocess(emodb_root, out)
    global EMODB
    saved, EMODB = EMODB, EMODB.with_overrides({"features.n_mels": 64})
    try:
        with pytest.raises(TimnetError, match="n_mels 128 -> 64"):
            run_preprocess(emodb_root, out)
        assert run_preprocess(emodb_root, out, overwrite=True).count == 85
    finally:
        EMODB = saved


def test_skip_bad_lists_the_files_in_the_manifest(emodb_root, tmp_path):
    (emodb_root / "wav" / "03a09Wa.wav").write_bytes(b"junk")
    write_wav(emodb_root / "wav" / "03a08Wa.wav", y=np.zeros(8000, np.float32))
    write_wav(emodb_root / "wav" / "hello.wav")
    with pytest.raises(TimnetError, match="hello.wav: name does not follow"):
        run_preprocess(emodb_root, tmp_path / "a")
    (emodb_root / "wav" / "hello.wav").unlink()
    with pytest.raises(BadAudioError, match=r"03a08Wa\.wav: is silent .*\(and 1 more bad file\(s\)\)"):
        run_preprocess(emodb_root, tmp_path / "a")
    assert not (tmp_path / "a" / "EMODB.npy").exists(), "nothing may be written when a file is bad"
    write_wav(emodb_root / "wav" / "hello.wav")
    res = run_preprocess(emodb_root, tmp_path / "b", skip_bad=True)
    assert res.count == 84 and len(res.skipped) == 3
    manifest = pd.read_csv(tmp_path / "b" / "EMODB.csv", dtype=str, keep_default_na=False)
    status = dict(zip(manifest.file, manifest.status))
    assert status["wav/03a09Wa.wav"].startswith("skipped: cannot be read")
    assert status["wav/03a08Wa.wav"] == "skipped: is silent (peak below -80 dBFS)"
    assert status["wav/hello.wav"].startswith("skipped: name does not follow")
    fs = load_features(tmp_path / "b" / "EMODB.npy", EMODB.dataset.classes)
    assert len(fs) == 84 and "03a09Wa" not in set(fs.manifest.stem)


def test_foreign_pickle_needs_trust(tmp_path):
    rng = np.random.default_rng(0)
    npy = tmp_path / "CASIA.npy"
    np.save(npy, {"x": rng.normal(size=(12, 172, 39)).astype(np.float32), "y": np.eye(6)[np.arange(12) % 6]})
    casia = load_config("CASIA")
    with pytest.raises(TimnetError, match="pass --trust-pickle"):
        load_features(npy, casia.dataset.classes)
    fs = load_features(npy, casia.dataset.classes, trust_pickle=True)
    assert fs.x.shape == (12, 172, 39) and list(fs.y[:6]) == [0, 1, 2, 3, 4, 5]
    with pytest.raises(TimnetError, match="y has 6 classes but the config lists 7"):
        load_features(npy, EMODB.dataset.classes, trust_pickle=True)
    # importing the authors' CASIA npy adopts it; our copy then loads without the flag
    res = preprocess(casia, npy, tmp_path / "MFCC", trust_pickle=True, progress=False)
    assert res.count == 12
    assert len(load_features(tmp_path / "MFCC" / "CASIA.npy", casia.dataset.classes)) == 12
    assert preprocess(casia, npy, tmp_path / "MFCC", trust_pickle=True).up_to_date


def test_wrong_shapes_are_clear_errors(tmp_path):
    npy = tmp_path / "x.npy"
    np.save(npy, {"x": np.zeros((3, 39)), "y": np.eye(7)[:3]})
    with pytest.raises(TimnetError, match=r"wrong shapes x \(3, 39\)"):
        load_features(npy, trust_pickle=True)
    (tmp_path / "y.npy").write_bytes(b"garbage")
    with pytest.raises(TimnetError, match="not a readable NumPy file"):
        load_features(tmp_path / "y.npy", trust_pickle=True)
