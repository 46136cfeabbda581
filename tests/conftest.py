"""Shared fixtures: synthetic audio written by the tests, and ../shared when it is there."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

# Tiny tensors: one thread is as fast, and far faster when another process holds the second core.
torch.set_num_threads(1)

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("TIMNET_SHARED", REPO.parent / "shared"))
EMODB_16K = SHARED / "data" / "emodb-16k-subset"
EMODB_22K = SHARED / "data" / "emodb-22k-2s"
WEIGHTS = SHARED / "data" / "timnet-weights"

needs_shared = pytest.mark.skipif(not (EMODB_16K.is_dir() and WEIGHTS.is_dir()),
                                  reason=f"needs ../shared (real EMO-DB audio and the authors' weights), not found at {SHARED}")


def tone(seconds: float = 1.0, sr: int = 16000, freq: float = 440.0, seed: int = 0, channels: int = 1) -> np.ndarray:
    """A vowel-like test signal: harmonics of `freq` under an envelope, plus a little noise."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * sr)) / sr
    y = sum(np.sin(2 * np.pi * freq * h * t + rng.uniform(0, 6)) / h for h in range(1, 5))
    y = 0.3 * y * np.hanning(len(t)) + 0.01 * rng.standard_normal(len(t))
    y = y.astype(np.float32)
    return np.stack([y, 0.5 * y], axis=1) if channels == 2 else y


def write_wav(path: Path, y: np.ndarray | None = None, sr: int = 16000, subtype: str = "PCM_16", **tone_kw) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(path, tone(sr=sr, **tone_kw) if y is None else y, sr, subtype=subtype)
    return path


@pytest.fixture
def make_wav(tmp_path):
    return lambda name, **kw: write_wav(tmp_path / name, **kw)


# Class -> base frequency: classes that a small model can tell apart.
EMODB_FREQ = {"W": 150.0, "L": 300.0, "E": 600.0, "A": 900.0, "F": 1300.0, "T": 1800.0, "N": 2500.0}


def emodb_tree(root: Path, speakers=("03", "08", "09", "10"), texts=("a01", "a02", "b01"), emotions="WLEAFTN",
               seconds: float = 0.6, sr: int = 16000) -> Path:
    """A small EMO-DB in its distributed layout (wav/03a01Wa.wav), class-separable audio."""
    for si, spk in enumerate(speakers):
        for ti, text in enumerate(texts):
            for ei, emo in enumerate(emotions):
                write_wav(root / "wav" / f"{spk}{text}{emo}a.wav", sr=sr, seconds=seconds, freq=EMODB_FREQ[emo] * (1 + 0.03 * si),
                          seed=si * 100 + ti * 10 + ei)
    return root


@pytest.fixture
def emodb_root(tmp_path) -> Path:
    return emodb_tree(tmp_path / "EMODB")
