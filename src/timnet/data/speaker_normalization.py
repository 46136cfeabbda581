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


def normalize_by_speaker(x: np.ndarray, speakers: pd.Series | np.ndarray) -> np.ndarray:
    """x [N, T, F] with each speaker's utterances standardised by `speaker_statistics` of that speaker alone."""
    speakers = np.asarray(speakers, dtype=str)
    if len(speakers) != len(x):
        raise TimnetError(f"speaker normalisation: {len(speakers)} speakers for {len(x)} utterances")
    if (speakers == "").any():
        raise TimnetError(
            f"train.normalize = speaker needs the speaker of every utterance; {int((speakers == '').sum())} have "
            "none (your corpus without a speaker in its pattern?) — use train.normalize = none"
        )
    out = np.empty(x.shape, dtype=np.float32)
    for speaker in np.unique(speakers):
        rows = np.flatnonzero(speakers == speaker)
        mean, std = speaker_statistics(x[rows])
        out[rows] = ((np.asarray(x[rows], dtype=np.float64) - mean) / std).astype(np.float32)
    return out


def model_inputs(features: FeatureSet, normalize: str) -> FeatureSet:
    """The features a model of `train.normalize` reads: as computed (none), or normalised per speaker."""
    if normalize == "none":
        return features
    return dataclasses.replace(features, x=normalize_by_speaker(features.x, features.manifest.speaker))
