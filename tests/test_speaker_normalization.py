"""Speaker normalisation (`train.normalize = speaker`): each speaker's MFCCs standardised per coefficient by their
own frames, never by labels or another speaker; it makes unseen speakers recognisable where each speaker shifts and
scales the MFCCs; and every path that runs such a model (predict, timeline, export, ONNX, t-SNE, cross-corpus) feeds
it what it trained on."""

from __future__ import annotations

import dataclasses
import json
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import SHORT, train
from test_own_corpora import MINE

from timnet import load_config, load_model
from timnet.analysis.cross_corpus import evaluate_cross_corpus
from timnet.analysis.tsne import run_embeddings
from timnet.cli import main
from timnet.core.config import Config
from timnet.core.errors import TimnetError
from timnet.data.feature_files import FeatureSet, load_features, read_feature_record, write_feature_files
from timnet.data.speaker_normalization import model_inputs, normalize_as_one_speaker, normalize_by_speaker
from timnet.model.inference import infer
from timnet.serving.export import export_run
from timnet.serving.timeline import timeline

SPEAKERS = np.repeat(["a", "b", "c"], [5, 7, 4])


def shifted_features(rng: np.random.Generator, speakers: np.ndarray = SPEAKERS, frames: int = 6, n_mfcc: int = 5):
    """MFCC-like [N, T, F] with a large offset and scale of each speaker's own."""
    x = rng.standard_normal((len(speakers), frames, n_mfcc))
    for s in np.unique(speakers):
        rows = speakers == s
        x[rows] = x[rows] * rng.uniform(0.3, 3.0, n_mfcc) + rng.normal(0, 20, n_mfcc)
    return x.astype(np.float32)


def feature_set(x: np.ndarray, speakers, y=None) -> FeatureSet:
    y = np.arange(len(x)) % 3 if y is None else y
    manifest = pd.DataFrame({"stem": [f"u{i}" for i in range(len(x))], "speaker": list(speakers)})
    manifest["label"] = [str(c) for c in y]
    return FeatureSet(x, np.asarray(y), manifest, ["0", "1", "2"])


def test_each_speaker_is_standardised_per_coefficient_by_their_own_frames():
    x = shifted_features(np.random.default_rng(0))
    x[SPEAKERS == "b", :, 2] = 7.5  # a coefficient that never varies for speaker b: centred, not scaled
    out = normalize_by_speaker(x, SPEAKERS)
    assert out.dtype == np.float32 and out.shape == x.shape
    for s in np.unique(SPEAKERS):
        frames = out[SPEAKERS == s].reshape(-1, x.shape[2]).astype(np.float64)
        np.testing.assert_allclose(frames.mean(0), 0, atol=1e-5)
        std = frames.std(0)
        if s == "b":
            assert np.all(frames[:, 2] == 0) and np.isfinite(out).all()
            std = np.delete(std, 2)
        np.testing.assert_allclose(std, 1, atol=1e-5)
    # as one speaker: the statistics of all the frames together
    together = normalize_as_one_speaker(x).reshape(-1, x.shape[2]).astype(np.float64)
    np.testing.assert_allclose(together.mean(0), 0, atol=1e-5)


def test_a_speakers_features_ignore_labels_and_every_other_speaker():
    rng = np.random.default_rng(1)
    x = shifted_features(rng)
    fs = feature_set(x, SPEAKERS)
    base = model_inputs(fs, "speaker").x
    shuffled = feature_set(x.copy(), SPEAKERS, rng.permutation(fs.y))
    assert np.array_equal(model_inputs(shuffled, "speaker").x, base)  # labels: never read
    other = x.copy()
    other[SPEAKERS == "b"] = other[SPEAKERS == "b"] * 5 - 100  # another speaker's features change
    changed = model_inputs(feature_set(other, SPEAKERS), "speaker").x
    for s in ("a", "c"):
        assert np.array_equal(changed[SPEAKERS == s], base[SPEAKERS == s])  # bit for bit
    assert not np.array_equal(changed[SPEAKERS == "b"], base[SPEAKERS == "b"])
    # and a speaker's features alone give the same as among the others
    assert np.array_equal(normalize_by_speaker(x[SPEAKERS == "c"], SPEAKERS[SPEAKERS == "c"]), base[SPEAKERS == "c"])


def test_none_is_the_very_features_and_a_speakerless_utterance_is_one_line():
    fs = feature_set(shifted_features(np.random.default_rng(2)), SPEAKERS)
    assert model_inputs(fs, "none") is fs
    speakers = SPEAKERS.copy()
    speakers[3] = ""
    with pytest.raises(
        TimnetError, match=r"^train.normalize = speaker needs the speaker of every utterance; 1 have"
    ) as e:
        model_inputs(feature_set(fs.x, speakers), "speaker")
    assert "\n" not in str(e.value) and "train.normalize = none" in str(e.value)
    with pytest.raises(TimnetError, match="the authors' weights read MFCCs as computed"):
        load_model("EMODB_46.zip", dataset=load_config("EMODB", {"train.normalize": "speaker"}))


def speaker_shifted_file(mfcc: Path, out: Path) -> Path:
    """The synthetic EMO-DB's manifest (4 speakers x 21 utterances) with features of a clear emotion pattern that
    each speaker shifts (by up to ~ 24 std) and scales per coefficient: without normalisation an unseen speaker's
    features lie where no training speaker's did."""
    fs = load_features(mfcc)
    rng = np.random.default_rng(0)
    n, frames, n_mfcc = fs.x.shape
    classes = int(fs.y.max()) + 1
    pattern = 2 * rng.standard_normal((classes, n_mfcc))
    x = pattern[fs.y][:, None, :] + 0.5 * rng.standard_normal((n, frames, n_mfcc))
    for s in np.unique(fs.manifest.speaker):
        rows = (fs.manifest.speaker == s).to_numpy()
        x[rows] = x[rows] * rng.uniform(0.5, 2.0, n_mfcc) + rng.normal(0, 8, n_mfcc)
    record = {k: v for k, v in read_feature_record(mfcc).items() if k not in ("npy_sha256", "count", "created")}
    manifest = pd.read_csv(mfcc.with_suffix(".csv"), dtype=str, keep_default_na=False)
    out.parent.mkdir(parents=True)
    write_feature_files(out, x.astype(np.float32), fs.y, classes, manifest, record)
    return out


@pytest.mark.slow
def test_normalisation_makes_unseen_speakers_recognisable(mfcc, tmp_path):
    shifted = speaker_shifted_file(mfcc, tmp_path / "MFCC" / "EMODB.npy")
    uar = {}
    for normalize in ("none", "speaker"):
        run = train(
            tmp_path / normalize, shifted, protocol="speaker", folds=2, epochs=6, batch_size=8, normalize=normalize
        )
        assert len(run.folds) == 2
        uar[normalize] = run.summary["uar_mean"]
    # 7 classes: chance is 14.3; the speaker offsets leave the plain model near it
    assert uar["speaker"] >= 90 and uar["none"] <= 50 and uar["speaker"] - uar["none"] >= 40, uar


@pytest.fixture(scope="module")
def normalised(mfcc, tmp_path_factory):
    """A run trained with train.normalize = speaker on the synthetic EMO-DB (2 folds x 2 epochs):
    (models root, run id, corpus wav folder, MFCC file)."""
    root = tmp_path_factory.mktemp("normalised")
    run = train(root, mfcc, folds=2, epochs=2, batch_size=8, normalize="speaker")
    return root / "Models", run.run_id, mfcc.parent.parent / "EMODB" / "wav", mfcc


def by_hand(model, x: np.ndarray) -> np.ndarray:
    """The mean over the fold models of `infer` on MFCCs normalised by hand as one speaker."""
    return np.mean([infer(m, normalize_as_one_speaker(x), device="cpu")[0] for m in model.fold_models.values()], 0)


def test_predict_normalises_the_files_given_together_as_one_speaker_and_says_so(normalised, capsys):
    models, run_id, wav, _ = normalised
    model = load_model(models / run_id, device="cpu")
    assert model.normalize == "speaker"
    files = sorted(wav.glob("03*.wav"))[:5]
    table = model.predict(files, workers=1)
    assert table.attrs["note"].startswith("speaker-normalised model: the 5 files given are normalised together")
    x, _ = model.features(files, workers=1)
    np.testing.assert_allclose(table[model.classes].to_numpy(), by_hand(model, x), atol=1e-6)
    with pytest.warns(UserWarning, match="the statistics of one file alone are weak"):
        alone = model.predict(files[:1], workers=1)
    assert "the 1 files given" in alone.attrs["note"]
    np.testing.assert_allclose(alone[model.classes].to_numpy(), by_hand(model, x[:1]), atol=1e-6)
    argv = ["predict", "--run", run_id, "--models", str(models), "--device", "cpu", "--workers", "1", "--quiet"]
    capsys.readouterr()
    assert main([*argv, *map(str, files[:3])]) == 0
    out = capsys.readouterr().out
    assert out.splitlines()[0].startswith("speaker-normalised model: the 3 files given are normalised together")


def test_timeline_normalises_the_windows_of_one_recording_together(normalised, tmp_path):
    import soundfile as sf

    models, run_id, wav, _ = normalised
    model = load_model(models / run_id, device="cpu")
    parts = [sf.read(f)[0] for f in sorted(wav.glob("08*.wav"))[:3]]
    long = tmp_path / "long.wav"
    sf.write(long, np.concatenate(parts), model.config.features.sample_rate)
    table, _ = timeline(model, long, hop=0.5)
    assert f"windows of {long.name} are normalised together as one speaker" in table.attrs["note"]
    classified = table[table.emotion != "silent"][model.classes].to_numpy()
    assert len(classified) >= 3 and np.allclose(classified.sum(1), 1, atol=1e-5)


def test_t_sne_embeds_what_the_models_read(normalised):
    models, run_id, _, mfcc = normalised
    _, features, embeddings, _ = run_embeddings(run_id, models, fold=1)
    raw = load_features(mfcc)
    expected = normalize_by_speaker(raw.x, raw.manifest.speaker)
    assert np.array_equal(features.x, expected)
    model = load_model(models / run_id, fold=1, device="cpu")
    np.testing.assert_allclose(embeddings, model.embed(expected), atol=1e-6)


def test_cross_corpus_normalises_per_speaker_of_the_target_corpus(normalised, tmp_path):
    models, run_id, _, _ = normalised
    model = load_model(models / run_id, device="cpu")
    settings = load_config("EXAMPLE", SHORT).settings()
    target = Config.from_dict({**settings, "dataset": dict(MINE)})  # angry, happy, neutral, surprise
    classes = list(target.dataset.classes)
    rng = np.random.default_rng(3)
    speakers = np.repeat(["s1", "s2", "s3"], 8)
    y = np.arange(len(speakers)) % len(classes)
    x = shifted_features(rng, speakers, model.config.features.frames, model.config.features.n_mfcc)
    manifest = pd.DataFrame(
        {"file": [f"f{i}.wav" for i in range(len(x))], "stem": [f"f{i}" for i in range(len(x))], "speaker": speakers}
    )
    manifest["label"] = [classes[c] for c in y]
    record = {"settings": dataclasses.asdict(model.config.features)}
    npy = tmp_path / "MINE.npy"
    write_feature_files(npy, x, y, len(classes), manifest, record)
    result = evaluate_cross_corpus(model, target, npy)
    keep = np.isin(manifest.label, [t for t in classes if t in ("angry", "happy", "neutral")])
    probs, _ = model.fold_outputs(normalize_by_speaker(x, speakers)[keep])
    kept = probs.mean(1)[:, [model.classes.index(c) for c in result.shared]]
    kept /= kept.sum(1, keepdims=True)
    np.testing.assert_allclose(result.predictions[[f"p_{c}" for c in result.shared]].to_numpy(), kept, atol=1e-6)
    manifest["speaker"] = ""
    speakerless = tmp_path / "NOSPEAKER.npy"
    write_feature_files(speakerless, x, y, len(classes), manifest, record)
    with pytest.raises(TimnetError, match="give MINE with a speaker in its pattern"):
        evaluate_cross_corpus(model, target, speakerless)


@pytest.mark.slow
def test_export_records_the_normalisation_and_onnx_agrees_on_normalised_input(normalised, tmp_path):
    models, run_id, wav, _ = normalised
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        folder = export_run(run_id, tmp_path / "exported", models)
    card = json.loads((folder / "config.json").read_text())
    assert card["config"]["train"]["normalize"] == "speaker" and card["inputs"]["normalize"] == "speaker"
    assert "speaker-normalised MFCCs" in card["inputs"]["mfcc"]
    readme = (folder / "README.md").read_text()
    assert "Model inputs (the ONNX graphs' `mfcc` too): speaker-normalised MFCCs" in readme
    onnx, torch = (load_model(folder, engine=e, device="cpu") for e in ("onnx", "torch"))
    assert onnx.engine == "onnx" and onnx.normalize == torch.normalize == "speaker"
    files = sorted(wav.glob("09*.wav"))[:4]
    x, _ = torch.features(files, workers=1)
    inputs = torch.inputs(x)
    np.testing.assert_allclose(onnx.predict_proba(inputs), torch.predict_proba(inputs), atol=1e-5)
    run = load_model(models / run_id, device="cpu")
    np.testing.assert_allclose(torch.predict_proba(inputs), by_hand(run, x), atol=1e-6)
    table = onnx.predict(files, workers=1)
    assert table.attrs["note"].startswith("speaker-normalised model: the 4 files given")
    np.testing.assert_allclose(table[onnx.classes].to_numpy(), by_hand(run, x), atol=1e-5)
