"""The `timnet` command: real runs on synthetic corpora, one-line errors with exit code 2."""

from __future__ import annotations

import argparse
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
from conftest import WEIGHTS, needs_shared

import timnet
from timnet import load_config
from timnet.cli import build_parser, main


def preprocess_cli(root, out, *extra) -> int:
    return main(["preprocess", "--dataset", "EMODB", "--data", str(root), "--out", str(out), "--quiet", *extra])


def test_preprocess_then_noop(emodb_root, tmp_path, capsys):
    out = tmp_path / "MFCC"
    assert preprocess_cli(emodb_root, out, "--workers", "2") == 0
    assert "84 utterances, written" in capsys.readouterr().out
    assert np.load(out / "EMODB.npy", allow_pickle=True).item()["x"].shape == (84, 188, 39)
    assert main(["preprocess", "--dataset", "EMODB", "--data", str(emodb_root), "--out", str(out), "--quiet"]) == 0
    assert "up to date" in capsys.readouterr().out


@pytest.mark.slow
def test_bad_file_is_one_line_and_exit_2(emodb_root, tmp_path):
    (emodb_root / "wav" / "03a07Wa.wav").write_bytes(b"\x00" * 10)
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "timnet.cli",
            "preprocess",
            "--dataset",
            "EMODB",
            "--data",
            str(emodb_root),
            "--out",
            str(tmp_path / "o"),
            "--quiet",
        ],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 2
    err = [line for line in proc.stderr.splitlines() if line.startswith("timnet: error")]
    assert len(err) == 1 and "03a07Wa.wav: cannot be read as audio" in err[0] and "--skip-bad" in err[0]
    assert "Traceback" not in proc.stderr


def test_set_overrides_and_unknown_setting(emodb_root, tmp_path, capsys):
    out = tmp_path / "o"
    assert preprocess_cli(emodb_root, out, "--set", "features.signal_length=48000") == 0
    assert np.load(out / "EMODB.npy", allow_pickle=True).item()["x"].shape[1] == 94
    assert main(["preprocess", "--dataset", "EMODB", "--data", str(emodb_root), "--set", "features.nope=1"]) == 2
    assert "unknown setting 'features.nope'" in capsys.readouterr().err
    assert main(["preprocess", "--dataset", "NOPE", "--data", str(emodb_root)]) == 2
    assert "unknown dataset 'NOPE'" in capsys.readouterr().err
    for setting, message in (
        ("train.epochs=ten", "train.epochs: 'ten' is not an integer"),
        ("train.seeds=46,x", "train.seeds[1]: 'x' is not an integer"),
        ("train.lr=fast", "train.lr: 'fast' is not a number"),
        ("features.center=maybe", "features.center: 'maybe' is not true or false"),
        ("train.compile=sometimes", "train.compile: must be one of auto, on, off (got 'sometimes')"),
        ("train.batch_size=0", "train.batch_size: must be ≥ 1 (got 0)"),
        ("model.n_classes=3", "model.n_classes: must be left out: it is derived from dataset.classes (got '3')"),
    ):
        assert main(["train", "--dataset", "EMODB", "--set", setting]) == 2
        err = capsys.readouterr().err
        assert err.startswith(f"timnet: error: {message}") and err.count("\n") == 1, err
    assert load_config("EMODB", {"train.seeds": "46, 7", "dataset.classes": "a,b"}).train.seeds == [46, 7]


@needs_shared
def test_evaluate_wrong_dataset_for_weights(emodb_root, tmp_path, capsys):
    out = tmp_path / "MFCC"
    main(["preprocess", "--dataset", "EMODB", "--data", str(emodb_root), "--out", str(out), "--quiet"])
    code = main(
        ["evaluate", "--dataset", "EMODB", "--weights", str(WEIGHTS / "RAVDE_46.zip"), "--data", str(out / "EMODB.npy")]
    )
    assert code == 2
    assert "trained for 8 classes" in capsys.readouterr().err


@pytest.mark.slow
@needs_shared
def test_evaluate_command_on_real_audio_then_on_its_npy(tmp_path, capsys):
    import pandas as pd
    from conftest import EMODB_16K

    out = tmp_path / "MFCC"
    assert main(["preprocess", "--dataset", "EMODB", "--data", str(EMODB_16K), "--out", str(out), "--quiet"]) == 0
    capsys.readouterr()
    args = [
        "evaluate",
        "--dataset",
        "EMODB",
        "--weights",
        str(WEIGHTS / "EMODB_46.zip"),
        "--data",
        str(out / "EMODB.npy"),
    ]
    assert main([*args, "--out", str(tmp_path / "eval.xlsx")]) == 0
    printed = capsys.readouterr().out
    assert "overall on 361 test files (174 of the authors' test files missing): WAR 94.46 %  UAR 93.74 %" in printed
    folds = pd.read_excel(tmp_path / "eval.xlsx", sheet_name="folds")
    assert folds.fold.tolist()[-1] == "overall" and folds.n_test.iloc[-1] == 361
    assert len(pd.read_excel(tmp_path / "eval.xlsx", sheet_name="predictions")) == 361
    assert main([*args, "--out", str(tmp_path / "eval.xlsx")]) == 2  # never overwrites
    assert "already exists" in capsys.readouterr().err


@pytest.mark.slow
def test_run_does_the_three_notebooks_work_on_generated_data_in_an_empty_folder(tmp_path):
    # one thread: a tiny model, and far faster when other work holds the second core
    argv = [sys.executable, "-m", "timnet.cli", "run", "--folds", "2", "--epochs", "2", "--workers", "1"]
    argv += ["--threads", "1", "--quiet"]
    done = subprocess.run(argv, cwd=tmp_path, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert len(list((tmp_path / "Datasets" / "EXAMPLE" / "wav").glob("*.wav"))) == 84
    assert np.load(tmp_path / "MFCC" / "EXAMPLE.npy", allow_pickle=True).item()["x"].shape[0] == 84
    (run_dir,) = (tmp_path / "Models").iterdir()
    assert sorted(p.name for p in run_dir.glob("fold_*.pt")) == ["fold_1.pt", "fold_2.pt"]
    folds = pd.read_excel(tmp_path / "Results" / f"{run_dir.name}.xlsx", sheet_name="folds")
    preds = pd.read_excel(tmp_path / "Results" / f"{run_dir.name}.xlsx", sheet_name="predictions")
    assert folds.n_test[:2].sum() == 84 == len(preds)
    recomputed = preds.assign(hit=preds.label == preds.predicted).groupby("fold").hit.mean() * 100
    np.testing.assert_allclose(folds.war[:2].astype(float), recomputed.loc[[1, 2]], atol=0.01)
    (png,) = (tmp_path / "Results" / run_dir.name).glob("tsne_*.png")
    from matplotlib.image import imread

    rgb = imread(png)[..., :3]
    assert (rgb.max(-1) - rgb.min(-1) > 0.3).sum() > 500, "no coloured points: the t-SNE figure is blank"
    listed = [
        f"Models/{run_dir.name}/",
        f"Results/{run_dir.name}.xlsx",
        f"Results/{run_dir.name}/confusion.png",  # the heatmap, the curves grid, the t-SNE and its JSON too
        f"logs/{run_dir.name}/curves.png",
        str(png.relative_to(tmp_path)),
        str(png.with_suffix(".json").relative_to(tmp_path)),
        f"timnet predict --run {run_dir.name}",
    ]
    for shown in listed:
        assert shown in done.stdout, done.stdout
    assert all((tmp_path / p).exists() for p in listed[:-1]), "every listed output exists"
    assert not (tmp_path / "Models" / run_dir.name / "in_progress").exists()
    again = subprocess.run(argv, cwd=tmp_path, capture_output=True, text=True)
    assert again.returncode == 0 and "up to date" in again.stdout and len(list((tmp_path / "Models").iterdir())) == 2


def test_version(capsys):
    with pytest.raises(SystemExit) as done:
        main(["--version"])
    assert done.value.code == 0 and capsys.readouterr().out == f"timnet {timnet.__version__}\n"


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--epochs", "-3"], "train.epochs: must be ≥ 1 (got -3)"),
        (["--folds", "1"], "train.folds: must be ≥ 2 (got 1)"),
        (["--set", "train.batch_size=0"], "train.batch_size: must be ≥ 1 (got 0)"),
        (["--set", "train.lr=0"], "train.lr: must be > 0 (got 0.0)"),
        (["--set", "model.dropout=1"], "model.dropout: must be < 1 (got 1.0)"),
        (["--set", "features.n_mfcc=0"], "features.n_mfcc: must be ≥ 1 (got 0)"),
    ],
)
def test_a_bad_value_is_one_line_naming_the_setting_and_exit_2(argv, message, capsys):
    assert main(["train", "--dataset", "EMODB", *argv]) == 2
    assert capsys.readouterr().err == f"timnet: error: {message}\n"


def _options():
    """(command, action) for every option of every subcommand."""
    (commands,) = [a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction)]
    return [(name, action) for name, sub in commands.choices.items() for action in sub._actions]


def test_every_option_says_what_it_does():
    missing = [f"{name} {action.option_strings or action.dest}" for name, action in _options() if not action.help]
    assert not missing, missing


def test_choices_and_defaults_come_from_the_library():
    from timnet.analysis.tsne import ALIGNMENTS
    from timnet.core.config import TrainSettings
    from timnet.serving.loading import ENGINES
    from timnet.serving.timeline import HOP_SECONDS, SILENCE_DB
    from timnet.training.compiling import COMPILE_MIN_EPOCHS
    from timnet.training.run import BACKENDS

    expected = {
        "--protocol": (TrainSettings.PROTOCOLS, None),
        "--checkpoint": (TrainSettings.CHECKPOINTS, None),
        "--compile": (TrainSettings.SWITCHES, None),
        "--align": (ALIGNMENTS, ALIGNMENTS[0]),
        "--engine": (ENGINES, ENGINES[0]),
        "--backend": (tuple(BACKENDS), "local"),
        "--hop": (None, HOP_SECONDS),
        "--silence-db": (None, SILENCE_DB),
    }
    seen = {}
    for _, action in _options():
        for flag in set(action.option_strings) & set(expected):
            seen[flag] = (tuple(action.choices) if action.choices else None, action.default)
    assert seen == expected
    helps = {a.option_strings[0]: a.help for name, a in _options() if name == "train" and a.option_strings}
    emodb, example = load_config("EMODB").train, load_config("EXAMPLE").train
    assert f"EMODB: {emodb.folds}, EXAMPLE: {example.folds}" in helps["--folds"]
    assert f"EMODB: {emodb.epochs}, EXAMPLE: {example.epochs}" in helps["--epochs"]
    assert f"EMODB: {emodb.batch_size}, EXAMPLE: {example.batch_size}" in helps["--batch-size"]
    assert all(f">= {n} epochs" in helps["--compile"] for n in COMPILE_MIN_EPOCHS.values())
