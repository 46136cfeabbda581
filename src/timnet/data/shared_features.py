"""Features as the units of a run read them: once per process, not once per unit, and — for pool workers —
memory-mapped from one copy the parent wrote, so workers share its pages instead of holding a copy each."""

from __future__ import annotations

import dataclasses
import functools
import pickle
from pathlib import Path

import numpy as np

from .feature_files import FeatureSet, load_features


def without_samples(features: FeatureSet) -> FeatureSet:
    """The features' labels and manifest without the MFCC array (x keeps its frame and coefficient shape)."""
    digests = features.fingerprints()  # while the samples are here: the run's leakage audit compares them
    return dataclasses.replace(features, x=np.empty((0, *features.x.shape[1:]), np.float32), digests=digests)


def share_features(runs: list, folder: Path) -> dict[str, str]:
    """Write each run's features where workers can memory-map them: {MFCC path: folder}. The MFCC file itself is a
    pickled dict (the authors' format), which cannot be mapped."""
    shared: dict[str, str] = {}
    for run in runs:
        for mfcc_file in {j.mfcc_file for j in run.jobs} - set(shared):
            where = Path(folder) / str(len(shared))
            where.mkdir(parents=True)
            np.save(where / "x.npy", run.features.x)
            with open(where / "features.pkl", "wb") as f:
                pickle.dump(without_samples(run.features), f)
            shared[mfcc_file] = str(where)
    return shared


@functools.lru_cache(maxsize=2)
def unit_features(mfcc_file: str, classes: tuple[str, ...], shared: str | None = None) -> FeatureSet:
    """The features of a unit's MFCC file, read once per process: from the `shared` folder written by
    `share_features` (copy-on-write mapping: pages shared between processes, writable for torch), else from the file."""
    if shared is None:
        return load_features(Path(mfcc_file), list(classes))
    with open(Path(shared) / "features.pkl", "rb") as f:
        features = pickle.load(f)
    return dataclasses.replace(features, x=np.load(Path(shared) / "x.npy", mmap_mode="c"))
