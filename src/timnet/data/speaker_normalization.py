"""Speaker normalisation (`train.normalize = speaker`): each speaker's MFCCs standardised per coefficient with that
speaker's own mean and standard deviation over all of their frames. The usual practice in speaker-independent SER:
a test speaker's statistics come from their own unlabelled test audio, never from labels or another speaker, so the
features of one speaker do not change when anything about another speaker (or any label) does. Pure functions."""

from __future__ import annotations

import dataclasses

import numpy as np
import pandas as pd

from ..core.errors import TimnetError
from .feature_files import FeatureSet


def speaker_statistics(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(mean [F], std [F]) over every frame of one speaker's utterances x [N, T, F], in float64; a coefficient
    that never varies gets std 1 (it is centred, not scaled)."""
    frames = np.asarray(x, dtype=np.float64).reshape(-1, x.shape[-1])
    mean, std = frames.mean(axis=0), frames.std(axis=0)
    return mean, np.where(std > 0, std, 1.0)


NO_SPEAKER_FIX = "your corpus without a speaker in its pattern? — use train.normalize = none"
ONE_SPEAKER = "given"  # the speaker of utterances normalised together as one (`normalize_as_one_speaker`)


def normalize_by_speaker(x: np.ndarray, speakers: pd.Series | np.ndarray, fix: str = NO_SPEAKER_FIX) -> np.ndarray:
    """x [N, T, F] with each speaker's utterances standardised by `speaker_statistics` of that speaker alone;
    utterances without a speaker are refused in one line that ends with `fix`."""
    speakers = np.asarray(speakers, dtype=str)
    if len(speakers) != len(x):
        raise TimnetError(f"speaker normalisation: {len(speakers)} speakers for {len(x)} utterances")
    if (speakers == "").any():
        raise TimnetError(
            f"train.normalize = speaker needs the speaker of every utterance; {int((speakers == '').sum())} have "
            f"none ({fix})"
        )
    out = np.empty(x.shape, dtype=np.float32)
    for speaker in np.unique(speakers):
        rows = np.flatnonzero(speakers == speaker)
        mean, std = speaker_statistics(x[rows])
        out[rows] = ((np.asarray(x[rows], dtype=np.float64) - mean) / std).astype(np.float32)
    return out


def normalize_as_one_speaker(x: np.ndarray) -> np.ndarray:
    """x [N, T, F] standardised with the statistics of all of its frames: utterances taken as one speaker's (the
    files `timnet predict` is given together, the windows of one recording)."""
    return normalize_by_speaker(x, np.full(len(x), ONE_SPEAKER))


def model_inputs(features: FeatureSet, normalize: str, fix: str = NO_SPEAKER_FIX) -> FeatureSet:
    """The features a model of `train.normalize` reads: as computed (none, the very object), or normalised per
    speaker of `features` (its manifest's `speaker`; none there: one line ending with `fix`)."""
    if normalize == "none":
        return features
    speakers = features.manifest["speaker"] if "speaker" in features.manifest else np.full(len(features), "")
    return dataclasses.replace(features, x=normalize_by_speaker(features.x, speakers, fix))
