"""Shared fixtures: synthetic audio written by the tests, and ../shared when it is there."""

from __future__ import annotations

import os
import sys
import warnings
from pathlib import Path

import pytest
import torch

from timnet.example import EMOTION_PITCH, tone, write_example_corpus, write_wav  # noqa: F401  (re-exported for tests)

# Tiny tensors: one thread is as fast, and far faster when another process holds the second core.
torch.set_num_threads(1)

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("TIMNET_SHARED", REPO.parent / "shared"))
EMODB_16K = SHARED / "data" / "emodb-16k-subset"
EMODB_22K = SHARED / "data" / "emodb-22k-2s"
WEIGHTS = SHARED / "data" / "timnet-weights"

needs_shared = pytest.mark.skipif(
    not (EMODB_16K.is_dir() and WEIGHTS.is_dir()),
    reason=f"needs ../shared (real EMO-DB audio and the authors' weights), not found at {SHARED}",
)


@pytest.fixture
def make_wav(tmp_path):
    return lambda name, **kw: write_wav(tmp_path / name, **kw)


def emodb_tree(root: Path, **kw) -> Path:
    """A small EMO-DB in its distributed layout (wav/03a01Wa.wav), class-separable audio."""
    return write_example_corpus(root, **kw)


@pytest.fixture
def emodb_root(tmp_path) -> Path:
    return emodb_tree(tmp_path / "EMODB")


# Short signals (16000 samples -> 32 frames) keep training tests fast; the model is the same.
SHORT = {"features.signal_length": 16000}


@pytest.fixture(scope="session")
def mfcc(tmp_path_factory) -> Path:
    """MFCC/EMODB.npy of a small synthetic EMO-DB (4 speakers x 3 texts x 7 emotions = 84), short signals;
    the audio lies in the folder EMODB beside the MFCC folder."""
    from timnet import load_config
    from timnet.features import preprocess

    root = tmp_path_factory.mktemp("corpus")
    tree = emodb_tree(root / "EMODB", speakers=("03", "08", "09", "10"), texts=("a01", "a02", "a04"))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        preprocess(load_config("EMODB", SHORT), tree, root / "MFCC", progress=False)
    return root / "MFCC" / "EMODB.npy"


@pytest.fixture(scope="session")
def trained_run(mfcc, tmp_path_factory):
    """One tiny finished run (2 folds x 3 epochs) on `mfcc`, shared by the tests that read a run:
    (root with Models/ logs/ Results/, the corpus folder, the RunResult)."""
    from timnet import load_config
    from timnet.train import run_training

    root = tmp_path_factory.mktemp("run")
    cfg = load_config("EMODB", {**SHORT, "train.folds": 2, "train.epochs": 3})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        result = run_training(cfg, mfcc, root / "Models", root / "logs", root / "Results", progress=False)
    return root, mfcc.parent.parent / "EMODB", result


def train_cli(*args: str) -> list[str]:
    """argv of `timnet train` on the short-signal EMO-DB config (or of a --resume), quiet, on CPU, one thread
    per unit (the same arithmetic whatever the number of workers, so runs compare bit for bit)."""
    config = [] if "--resume" in args else ["--dataset", "EMODB", "--set", "features.signal_length=16000"]
    return [sys.executable, "-m", "timnet.cli", "train", *config, "--device", "cpu", "--threads", "1", "--quiet", *args]


def run_dirs(tmp_path: Path, name: str) -> list[str]:
    """`--models/--logs/--results` of one training under tmp_path/name."""
    return [
        "--models",
        str(tmp_path / name / "M"),
        "--logs",
        str(tmp_path / name / "L"),
        "--results",
        str(tmp_path / name / "R"),
    ]


def model_config(**changes):
    """EMO-DB's architecture from its TOML (the one place defaults live), with `changes`."""
    import dataclasses

    from timnet import load_config
    from timnet.model import TIMNetConfig

    return dataclasses.replace(TIMNetConfig.from_config(load_config("EMODB")), **changes)
