"""Portable models: export a run or the authors' weights, load it with torch or onnxruntime, predict, timelines."""

from __future__ import annotations

import json
import warnings
from collections import Counter
from pathlib import Path

import numpy as np
import onnx
import pandas as pd
import pytest
import soundfile as sf
import torch
from conftest import EMODB_16K, SHORT, WEIGHTS, needs_shared, pixels_of
from torch import nn

import timnet
from timnet import load_config
from timnet.core.errors import TimnetError
from timnet.data.feature_files import load_features
from timnet.serving.export import export_run, export_weights
from timnet.serving.onnx_export import ONNX_OPSET, ONNX_TOLERANCE
from timnet.serving.timeline import SILENT, window_starts, write_timeline


@pytest.fixture(scope="module")
def learned(mfcc, tmp_path_factory):
    """A run that has learned the synthetic emotions (2 folds x 20 epochs, batch 8) and its export:
    (root, corpus folder, run id, exported folder)."""
    from timnet.training.execution import Execution
    from timnet.training.run import run_training
    from timnet.training.run_store import Roots

    root = tmp_path_factory.mktemp("learned")
    cfg = load_config("EMODB", {**SHORT, "train.folds": 2, "train.epochs": 20, "train.batch_size": 8})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        how = Execution(Roots(root / "Models", root / "logs", root / "Results"), workers=1, progress=False)
        result = run_training(cfg, mfcc, how)
    out = export_run(result.run_id, root / "exported", root / "Models")
    return root, mfcc.parent.parent / "EMODB", result, out


def run_mfcc(root, result):
    """The MFCC file the run trained on."""
    from timnet.training.run_store import read_run_record

    return read_run_record(root / "Models" / result.run_id)["mfcc"]


@pytest.mark.slow
def test_export_writes_a_self_contained_folder(learned):
    root, _, result, out = learned
    assert sorted(p.name for p in out.iterdir()) == ["README.md", "config.json", "model.safetensors", "onnx"]
    assert sorted(p.name for p in (out / "onnx").iterdir()) == ["fold_1.onnx", "fold_2.onnx"]
    card = json.loads((out / "config.json").read_text())
    assert card["classes"] == load_config("EMODB").dataset.classes and card["units"] == ["fold_1", "fold_2"]
    assert card["features"]["signal_length"] == 16000 and card["features"]["res_type"] == "soxr_hq"
    assert card["protocol"] == "random" and card["provenance"]["run_id"] == result.run_id
    folds = result.folds.sort_values("fold")
    assert [f["war"] for f in card["folds"]] == pytest.approx(folds.war.tolist())
    assert card["metrics"]["war_mean"] == pytest.approx(folds.war.mean())
    assert card["metrics"]["war_std"] == pytest.approx(folds.war.std(ddof=1))
    assert card["onnx"]["max_abs_diff"] <= ONNX_TOLERANCE
    graph = onnx.load(out / "onnx" / "fold_1.onnx")
    onnx.checker.check_model(graph, full_check=True)
    assert [(o.domain, o.version) for o in graph.opset_import] == [("", ONNX_OPSET)]  # standard operators only
    ops = Counter(node.op_type for node in graph.graph.node)
    levels = card["architecture"]["levels"]
    assert ops["Conv"] == 2 + 2 * 2 * levels and "Pad" not in ops, ops  # causal padding folded into the convs
    assert ops["Transpose"] <= 8 and "BatchNormalization" not in ops, ops
    readme = (out / "README.md").read_text()
    assert f"WAR {folds.war.mean():.2f} ± {folds.war.std(ddof=1):.2f} %" in readme
    assert "random k-fold splits" in readme and "domain shift" in readme
    with pytest.raises(TimnetError, match="never overwritten"):
        export_run(result.run_id, out, root / "Models")


@pytest.mark.slow
@pytest.mark.parametrize("engine", ["torch", "onnx"])
def test_exported_model_gives_the_runs_own_predictions(learned, engine):
    root, tree, result, out = learned
    model = timnet.load_model(out, engine=engine)
    assert model.engine == engine
    data = load_features(run_mfcc(root, result))
    for k in (1, 2):
        saved = torch.load(root / "Models" / result.run_id / f"fold_{k}.pt", weights_only=True)
        probs = model.predict_proba(data.x[saved["test_index"]], fold=k)
        np.testing.assert_allclose(probs, saved["test_probs"].numpy(), atol=1e-4)
    files = sorted((tree / "wav").glob("*.wav"))[:5]
    ours = model.predict(files)
    theirs = timnet.predict(files, run=result.run_id, models_root=root / "Models")
    classes = model.classes
    np.testing.assert_allclose(ours[classes].to_numpy(), theirs[classes].to_numpy(), atol=1e-4)
    assert list(ours.predicted) == list(theirs.predicted)
    emb = model.embed(data.x[:4])
    assert emb.shape == (4, 39) and np.isfinite(emb).all()
    two = timnet.load_model(out, engine=engine, fold=2, seed=result.folds.seed.iloc[0])  # chosen when loading
    assert two.units == ["fold_2"] and two.fold_of == {"fold_2": 2}
    np.testing.assert_allclose(two.predict_proba(data.x[:4]), model.predict_proba(data.x[:4], fold=2), atol=1e-6)
    np.testing.assert_allclose(two.embed(data.x[:4]), model.embed(data.x[:4], fold=2), atol=1e-6)
    with pytest.raises(TimnetError, match=r"expected MFCCs shaped \[N, T, 39\]"):
        model.predict_proba(data.x[:4, :, :20])


@pytest.mark.slow
def test_engines_agree_and_hub_ids_load_through_huggingface_hub(learned, monkeypatch):
    import huggingface_hub

    root, _, result, out = learned
    x = load_features(run_mfcc(root, result)).x
    fast, exact = timnet.load_model(out), timnet.load_model(out, engine="torch")
    assert fast.engine == "onnx"  # the default: the faster engine when the folder has a graph
    np.testing.assert_allclose(fast.predict_proba(x), exact.predict_proba(x), atol=1e-5)
    np.testing.assert_allclose(fast.embed(x, fold=2), exact.embed(x, fold=2), rtol=1e-5, atol=1e-4)
    asked = []
    monkeypatch.setattr(huggingface_hub, "snapshot_download", lambda repo_id, **kw: asked.append(repo_id) or str(out))
    hub = timnet.load_model("someone/timnet-emodb", engine="torch")
    assert asked == ["someone/timnet-emodb"] and hub.units == exact.units
    assert list(exact.fold_models) == exact.units and exact.kfold_seed is None
    with pytest.raises(TimnetError, match="loaded with engine onnx; load with engine='torch'"):
        assert fast.fold_models is None
    with pytest.raises(TimnetError, match=r"no model of fold 5 \(it has folds 1, 2"):
        timnet.load_model(out, fold=5)
    with pytest.raises(TimnetError, match="no such model folder"):
        timnet.load_model(root / "nowhere")
    with pytest.raises(TimnetError, match="not a model folder"):
        timnet.load_model(root / "Models")


@pytest.mark.slow
def test_export_never_writes_a_graph_that_disagrees_with_torch(learned, monkeypatch):
    """A wrong graph (here BatchNorm dropped instead of folded into the conv before it) is caught by the check."""
    import copy

    import timnet.serving.onnx_export

    root, _, result, _ = learned

    def dropped(model):
        wrong = copy.deepcopy(model).eval()
        for block in [*wrong.forward_blocks, *wrong.backward_blocks]:
            block.bn1, block.bn2 = nn.Identity(), nn.Identity()
        return wrong

    monkeypatch.setattr(timnet.serving.onnx_export, "absorb_batchnorm", dropped)
    out = root / "wrong"
    with pytest.raises(TimnetError, match="disagrees with the torch model"):
        export_run(result.run_id, out, root / "Models")
    assert not out.exists() and not list(root.glob(".wrong*")), "nothing of a failed export may stay"


@pytest.mark.slow
def test_predict_command_on_a_model_folder_a_folder_and_a_csv_list(learned, tmp_path, capsys):
    from timnet.cli import main

    root, tree, _, out = learned
    files = sorted((tree / "wav").glob("*.wav"))[:3]
    folder = tmp_path / "mine"
    folder.mkdir()
    for f in files:
        (folder / f.name).write_bytes(f.read_bytes())
    listing = tmp_path / "list.csv"
    pd.DataFrame({"path": [f"mine/{f.name}" for f in files]}).to_csv(listing, index=False)
    tables = {}
    for engine, source in (("onnx", folder), ("torch", listing)):
        csv = tmp_path / f"{engine}.csv"
        argv = ["predict", "--model", str(out), "--engine", engine, str(source), "--csv", str(csv), "--quiet"]
        assert main(argv) == 0
        tables[engine] = pd.read_csv(csv)
    classes = load_config("EMODB").dataset.classes
    assert [p.split("/")[-1] for p in tables["onnx"].file] == [f.name for f in files]
    np.testing.assert_allclose(tables["onnx"][classes], tables["torch"][classes], atol=1e-3)  # CSV keeps 6 digits
    (folder / "zz_broken.wav").write_bytes(b"RIFFjunk")
    assert main(["predict", "--model", str(out), str(folder), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "zz_broken.wav: cannot be read as audio" in err and "--skip-bad" in err and len(err.splitlines()) == 1
    with pytest.warns(UserWarning, match="skipped .*zz_broken.wav"):
        table = timnet.predict([folder], model=out, skip_bad=True)
    assert len(table) == 3
    assert main(["predict", "--run", "x", "--model", str(out), str(folder)]) == 2
    assert "give one source of models" in capsys.readouterr().err


def test_window_starts_cover_the_audio():
    assert window_starts(100, 40, 25) == [0, 25, 50, 60]
    assert window_starts(30, 40, 25) == [0]
    assert window_starts(90, 40, 25) == [0, 25, 50]


@pytest.mark.slow
def test_timeline_follows_the_emotions_of_a_long_recording(learned, tmp_path):
    """Per emotion, four utterances in a row (2.4 s, longer than the 0.73 s window), then a silent gap: the
    windows inside a segment mostly get its emotion, and the silent windows are marked, not classified."""
    _, tree, _, out = learned
    model = timnet.load_model(out)
    parts, segments, t = [], [], 0.0
    for name, letter in (("angry", "W"), ("disgust", "E"), ("sad", "T"), ("happy", "F")):
        for speaker in ("03", "08", "09", "10"):
            y, sr = sf.read(tree / "wav" / f"{speaker}a01{letter}a.wav")
            parts.append(y)
        end = sum(map(len, parts)) / sr
        segments.append((name, t, end))
        t = end
    parts.append(np.zeros(2 * sr))  # 2 s of silence at the end
    long = tmp_path / "long.wav"
    sf.write(long, np.concatenate(parts), sr)
    table, csv, png = write_timeline(model, long, tmp_path / "timelines", hop=0.25)
    assert list(table.columns[:5]) == ["file", "start", "end", "emotion", "probability"]
    assert pd.read_csv(csv).shape == table.shape
    from matplotlib import colormaps

    for c, name in enumerate(model.classes):  # every class's probability curve is drawn in its colour
        assert pixels_of(png, colormaps["tab10"](c)) > 100, f"timeline: no curve for {name}"
    for name, start, end in segments:
        inside = table[(table.start >= start) & (table.end <= end)]
        assert len(inside) >= 4
        assert (inside.emotion == name).mean() >= 0.75, (name, inside.emotion.tolist())
    quiet = table[table.start >= segments[-1][2]]
    assert len(quiet) >= 3 and (quiet.emotion == SILENT).all() and quiet[model.classes].isna().all().all()
    np.testing.assert_allclose(table.loc[table.emotion != SILENT, model.classes].sum(axis=1), 1, atol=1e-5)
    _, csv2, _ = write_timeline(model, long, tmp_path / "timelines", hop=0.25)
    assert csv2 != csv and csv.exists(), "an earlier timeline must not be overwritten"


@pytest.mark.slow
def test_timeline_command(learned, tmp_path, capsys):
    from timnet.cli import main

    _, tree, _, out = learned
    wav = tree / "wav" / "03a01Wa.wav"
    assert (
        main(["predict", "--model", str(out), "--timeline", "--hop", "0.2", str(wav), "--out-dir", str(tmp_path)]) == 0
    )
    assert "03a01Wa_timeline.csv" in capsys.readouterr().out
    table = pd.read_csv(tmp_path / "03a01Wa_timeline.csv")
    assert len(table) == 1 and table.emotion[0] == "angry"  # shorter than a window; W: Wut, anger
    sad = tree / "wav" / "03a01Ta.wav"
    both = tmp_path / "both.csv"  # --csv: every file's windows in one table, beside the per-file ones
    argv = ["predict", "--model", str(out), "--timeline", str(wav), str(sad), "--out-dir", str(tmp_path / "t")]
    assert main([*argv, "--csv", str(both)]) == 0
    combined = pd.read_csv(both)
    assert list(combined.file.map(lambda f: Path(f).name)) == ["03a01Wa.wav", "03a01Ta.wav"]
    per_file = [pd.read_csv(tmp_path / "t" / f"{name}_timeline.csv") for name in ("03a01Wa", "03a01Ta")]
    assert combined.drop(columns="file").equals(pd.concat(per_file).drop(columns="file").reset_index(drop=True))
    assert combined.emotion[0] == "angry" and combined.sad[1] > 5 * combined.angry[1]  # T: Trauer, sadness
    assert main([*argv, "--csv", str(both)]) == 2, "an existing CSV is never overwritten"
    assert main(["predict", "--model", str(out), "--timeline", "--hop", "0", str(wav)]) == 2


@needs_shared
@pytest.mark.slow
def test_authors_weights_exported_still_give_their_accuracy(tmp_path):
    """EMODB_46 exported to a folder, loaded with both engines, on the authors' test folds: 94.46 % (361 files)."""
    from timnet.analysis.evaluate import authors_test_folds
    from timnet.core.metrics import scores
    from timnet.data.mfcc_extraction import features_from_audio

    out = export_weights(WEIGHTS / "EMODB_46.zip", "EMODB", tmp_path / "EMODB_46")
    cfg = load_config("EMODB")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        features, _ = features_from_audio(cfg, EMODB_16K, progress=False)
    tests, _ = authors_test_folds(cfg, features, 10, 46)
    card = json.loads((out / "config.json").read_text())
    assert card["provenance"]["kind"] == "authors-weights" and card["onnx"]["max_abs_diff"] <= ONNX_TOLERANCE
    assert "not measured by this export" in (out / "README.md").read_text()
    for engine in ("torch", "onnx"):
        model = timnet.load_model(out, engine=engine)
        y_true = np.concatenate([features.y[idx] for idx in tests])
        y_pred = np.concatenate(
            [model.predict_proba(features.x[idx], fold=k).argmax(1) for k, idx in enumerate(tests, 1)]
        )
        assert len(y_true) == 361 and round(scores(y_true, y_pred)["war"], 2) == 94.46, engine
