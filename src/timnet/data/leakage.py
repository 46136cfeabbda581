"""The leakage audit: per fold, how many test utterances share a speaker, a sentence (the text spoken), or identical
audio with that fold's training part. Under the authors' random folds nearly every test utterance shares both a
voice and a text with training; `protocol = speaker`, `sentence` and `speaker-sentence` promise zeros, and the
audit shows whether they keep it, and how many utterances the test parts cover (`speaker-sentence`: every one once).
No training needed: folds come from the protocol (`data.splits.protocol_splits`).
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pandas as pd

from ..core.config import Config
from .splits import Fold, Split, protocol_splits

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


def leakage_table(
    manifest: pd.DataFrame, folds: list[Fold] | list[Split], fingerprints: np.ndarray | None
) -> pd.DataFrame:
    """`COLUMNS` per unit (with a `cell` column after `fold` where the protocol has cells: `splits.Split`), then a
    `total` row; a count is empty where the corpus does not say (no speakers, no sentence ids, no audio or features
    to compare). `attrs`: how many utterances the corpus has, how many are tested, and how many more than once."""
    speaker = manifest.speaker.fillna("").astype(str).to_numpy()
    sentence = manifest.sentence.fillna("").astype(str).to_numpy() if "sentence" in manifest else None
    splits = [f if isinstance(f, Split) else Split(k, 0, *f) for k, f in enumerate(folds, start=1)]
    cells = any(s.cell for s in splits)
    rows = []
    for split in splits:
        train, test = split.train, split.test
        row = {"fold": split.fold} | ({"cell": split.cell} if cells else {})
        row |= {"n_test": len(test), "shared_speaker": _shared(speaker, train, test)}
        row["shared_sentence"] = _shared(sentence, train, test) if sentence is not None else None
        row["identical_audio"] = _shared(fingerprints, train, test) if fingerprints is not None else None
        rows.append(row)
    columns = COLUMNS[:1] + (["cell"] if cells else []) + COLUMNS[1:]
    table = pd.DataFrame(rows, columns=columns).astype({c: "Int64" for c in columns[1:]})
    total = {"fold": "total", **{c: table[c].sum(min_count=1) for c in COLUMNS[1:]}}
    table = pd.concat([table.astype({"fold": object}), pd.DataFrame([total])], ignore_index=True)
    times = np.bincount(np.concatenate([s.test for s in splits] + [np.zeros(0, np.int64)]), minlength=len(manifest))
    table.attrs |= {"utterances": len(manifest), "tested": int((times > 0).sum()), "repeated": int((times > 1).sum())}
    return table


def audit(cfg: Config, manifest: pd.DataFrame, fingerprints: np.ndarray | None) -> pd.DataFrame:
    """The leakage table of cfg's protocol, folds and seed on this corpus (its manifest, in feature order)."""
    return leakage_table(*protocol_splits(cfg, manifest), fingerprints)


def coverage_line(table: pd.DataFrame) -> str:
    """How much of the corpus the test parts cover (`leakage_table`'s attrs)."""
    a = table.attrs
    once = "each once" if a["repeated"] == 0 else f"{a['repeated']} more than once"
    return f"coverage: {a['tested']} of {a['utterances']} utterances tested, {once}"


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
    return [head, table.to_string(index=False, na_rep="unknown"), leakage_line(table), coverage_line(table)]


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
