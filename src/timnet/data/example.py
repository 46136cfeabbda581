"""A small synthetic corpus in EMO-DB's layout, for the quickstart and the tests.

Each emotion is a harmonic tone at its own pitch under a vowel-like envelope, so a model can learn it
in seconds; speakers shift the pitch slightly. Not speech: it only exercises the pipeline end to end.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import soundfile as sf

# EMO-DB emotion letter -> base frequency (Hz)
EMOTION_PITCH = {"W": 150.0, "L": 300.0, "E": 600.0, "A": 900.0, "F": 1300.0, "T": 1800.0, "N": 2500.0}


def tone(seconds: float = 1.0, sr: int = 16000, freq: float = 440.0, seed: int = 0, channels: int = 1) -> np.ndarray:
    """Harmonics of `freq` under a Hann envelope plus a little noise; float32, stereo if channels=2."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * sr)) / sr
    y = sum(np.sin(2 * np.pi * freq * h * t + rng.uniform(0, 6)) / h for h in range(1, 5))
    y = 0.3 * y * np.hanning(len(t)) + 0.01 * rng.standard_normal(len(t))
    y = y.astype(np.float32)
    return np.stack([y, 0.5 * y], axis=1) if channels == 2 else y


def write_wav(path: Path, y: np.ndarray | None = None, sr: int = 16000, subtype: str = "PCM_16", **tone_kw) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(path, tone(sr=sr, **tone_kw) if y is None else y, sr, subtype=subtype)
    return path


def write_example_corpus(
    root: Path,
    speakers=("03", "08", "09", "10"),
    texts=("a01", "a02", "b01"),
    emotions: str = "WLEAFTN",
    seconds: float = 0.6,
    sr: int = 16000,
) -> Path:
    """`root/wav/<speaker><text><emotion>a.wav`, EMO-DB names: 4 speakers x 3 texts x 7 emotions = 84 files."""
    for si, spk in enumerate(speakers):
        for ti, text in enumerate(texts):
            for ei, emo in enumerate(emotions):
                write_wav(
                    Path(root) / "wav" / f"{spk}{text}{emo}a.wav",
                    sr=sr,
                    seconds=seconds,
                    freq=EMOTION_PITCH[emo] * (1 + 0.03 * si),
                    seed=si * 100 + ti * 10 + ei,
                )
    return Path(root)
