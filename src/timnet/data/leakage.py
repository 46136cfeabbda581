"""The leakage audit: per fold, how many test utterances share a speaker, a sentence (the text spoken), or identical
audio with that fold's training part. Under the authors' random folds nearly every test utterance shares both a
voice and a text with training; `protocol = speaker`, `sentence` and `speaker-sentence` promise zeros, and the
audit shows whether they keep it. No training needed: folds come from the protocol (`data.splits.protocol_folds`).
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pandas as pd

from ..core.config import Config
from .splits import Fold, protocol_folds

COLUMNS = ["fold", "n_test", "shared_speaker", "shared_sentence", "identical_audio"]


def fingerprints_of_audio(paths: list[Path]) -> np.ndarray:
    """One digest per file of its decoded samples (and rate): identical audio whatever the container says."""
    import soundfile as sf

    digests = []
    for path in paths:
        samples, rate = sf.read(path, dtype="float32", always_2d=True)
        digests.append(hashlib.sha256(samples.tobytes() + str(rate).encode()).hexdigest())
    return np.array(digests)


def _shared(values: np.ndarray, train: np.ndarray, test: np.ndarray) -> int | None:
    """Test utterances whose value (speaker, sentence, digest) occurs in the training part; None when unknown."""
    known = values != ""
    if not known[test].any():
        return None
    heard = set(values[train][known[train]])
    return int(sum(v in heard for v in values[test][known[test]]))


def leakage_table(manifest: pd.DataFrame, folds: list[Fold], fingerprints: np.ndarray | None) -> pd.DataFrame:
    """`COLUMNS` per fold, then a `total` row; a count is empty where the corpus does not say (no speakers, no
    sentence ids, no audio or features to compare)."""
    speaker = manifest.speaker.fillna("").astype(str).to_numpy()
    sentence = manifest.sentence.fillna("").astype(str).to_numpy() if "sentence" in manifest else None
    rows = []
    for k, (train, test) in enumerate(folds, start=1):
        row = {"fold": k, "n_test": len(test), "shared_speaker": _shared(speaker, train, test)}
        row["shared_sentence"] = _shared(sentence, train, test) if sentence is not None else None
        row["identical_audio"] = _shared(fingerprints, train, test) if fingerprints is not None else None
        rows.append(row)
    table = pd.DataFrame(rows, columns=COLUMNS).astype({c: "Int64" for c in COLUMNS[1:]})
    total = {"fold": "total", **{c: table[c].sum(min_count=1) for c in COLUMNS[1:]}}
    return pd.concat([table.astype({"fold": object}), pd.DataFrame([total])], ignore_index=True)


def audit(cfg: Config, manifest: pd.DataFrame, fingerprints: np.ndarray | None) -> pd.DataFrame:
    """The leakage table of cfg's protocol, folds and seed on this corpus (its manifest, in feature order)."""
    return leakage_table(*protocol_folds(cfg, manifest), fingerprints)


def leakage_line(table: pd.DataFrame) -> str:
    """The audit in one line (a run's summary): totals over folds."""
    total = table.iloc[-1]
    n = int(total.n_test)

    def part(column: str, what: str) -> str:
        value = total[column]
        return f"{what} unknown" if pd.isna(value) else f"{int(value)}/{n} {what}"

    parts = [
        part("shared_speaker", "share a speaker"),
        part("shared_sentence", "a sentence"),
        part("identical_audio", "identical audio"),
    ]
    return f"leakage (test utterances vs their fold's training part): {', '.join(parts)}"


def audit_lines(cfg: Config, table: pd.DataFrame, source: str) -> list[str]:
    """The audit as the CLI prints it."""
    t = cfg.train
    head = f"{cfg.dataset.name}, protocol {t.protocol}, {t.folds} folds, seed {t.seed}: {source}"
    return [head, table.to_string(index=False, na_rep="unknown"), leakage_line(table)]


def audit_corpus(cfg: Config, data: Path | None = None, mfcc: Path | None = None, trust_pickle: bool = False):
    """(leakage table, what was read): from a feature file (`mfcc`, identical audio = identical features) or a
    corpus folder (`data`, identical audio = identical decoded samples); by default MFCC/<DATASET>.npy when it
    exists, else Datasets/<DATASET>."""
    from .corpora import build_manifest
    from .feature_files import load_features

    name = cfg.dataset.name
    if mfcc is None and data is None:
        mfcc = Path("MFCC") / f"{name}.npy" if (Path("MFCC") / f"{name}.npy").is_file() else None
        data = None if mfcc else Path("Datasets") / name
    if mfcc is not None:
        features = load_features(Path(mfcc), cfg.dataset.classes, trust_pickle=trust_pickle)
        table = audit(cfg, features.manifest, features.fingerprints())
        return table, f"{mfcc} ({len(features)} utterances)"
    manifest, _ = build_manifest(Path(data), cfg.dataset)
    table = audit(cfg, manifest, fingerprints_of_audio([Path(p) for p in manifest.path]))
    return table, f"{data} ({len(manifest)} files)"
