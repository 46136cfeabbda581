"""The `MFCC/<NAME>.npy` file trio on disk: write it, read it back, and tell whether it is ours and current.

    <NAME>.npy    np.save({"x": float32 [N, T, 39], "y": one-hot [N, C]})  (the authors' format)
    <NAME>.csv    the manifest: one row per utterance, in npy order, plus the skipped files
    <NAME>.json   settings, input fingerprint and the npy's SHA-256 (proves we wrote that npy)

Apart from computing features (`mfcc_extraction`), so reading them needs neither librosa nor the corpus readers.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pandas as pd

from ..core.atomic import atomic_path, write_json
from ..core.config import FeatureSettings
from ..core.errors import TimnetError


@dataclass
class FeatureSet:
    """Features ready for training: x [N, T, F] float32, y [N] class indices, manifest rows in order."""

    x: np.ndarray
    y: np.ndarray
    manifest: pd.DataFrame
    classes: list[str]
    digests: np.ndarray | None = None  # per utterance, of its features (kept when x is dropped: `shared_features`)

    def __len__(self) -> int:
        return len(self.y)

    def fingerprints(self) -> np.ndarray:
        """One SHA-256 per utterance of its features [T, F]: equal for identical audio (the leakage audit)."""
        if self.digests is None:
            self.digests = np.array([hashlib.sha256(np.ascontiguousarray(u).tobytes()).hexdigest() for u in self.x])
        return self.digests


def sidecars(npy: Path) -> tuple[Path, Path]:
    return npy.with_suffix(".csv"), npy.with_suffix(".json")


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def fingerprint(manifest: pd.DataFrame, settings: FeatureSettings) -> str:
    """Changes when the settings or any input file (name, size, mtime) changes."""
    stats = [(f, os.stat(p).st_size, os.stat(p).st_mtime_ns) for f, p in zip(manifest.file, manifest.path)]
    blob = json.dumps({"settings": dataclasses.asdict(settings), "files": stats}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()


def write_feature_files(
    npy: Path, x: np.ndarray, class_index: np.ndarray, n_classes: int, manifest: pd.DataFrame, record: dict
) -> None:
    """Write npy, then csv, then json (the json, holding the npy's hash, is written last)."""
    y = np.eye(n_classes, dtype=np.float32)[class_index]
    with atomic_path(npy) as tmp:
        np.save(tmp, {"x": x.astype(np.float32), "y": y}, allow_pickle=True)
    csv, js = sidecars(npy)
    with atomic_path(csv) as tmp:
        manifest.to_csv(tmp, index=False)
    write_json(
        js,
        {
            **record,
            "npy_sha256": sha256(npy),
            "count": int(len(x)),
            "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        },
    )


def read_feature_record(npy: Path) -> dict | None:
    """The settings JSON beside an MFCC npy, or None when there is none or it is unreadable."""
    js = sidecars(npy)[1]
    if not js.is_file():
        return None
    try:
        return json.loads(js.read_text(encoding="utf-8"))
    except json.JSONDecodeError:
        return None


def load_features(npy: Path, classes: list[str] | None = None, trust_pickle: bool = False) -> FeatureSet:
    """Read an MFCC npy (ours or the authors'), checking shapes; its manifest if one is beside it.

    The authors' format is a pickle, and unpickling can run code: a file whose SHA-256 matches the
    record we wrote beside it is ours; any other needs `trust_pickle=True` (CLI: --trust-pickle).
    """
    npy = Path(npy)
    if not npy.is_file():
        raise TimnetError(f"{npy}: MFCC file not found — run `timnet preprocess` first or check --mfcc")
    record = read_feature_record(npy)
    ours = record is not None and record.get("npy_sha256") == sha256(npy)
    if not ours and not trust_pickle:
        raise TimnetError(
            f"{npy}: this .npy holds a pickle that timnet did not write here (or it changed since); unpickling can "
            "run code from the file — if you trust its source (e.g. the authors' MFCC release), pass --trust-pickle"
        )
    try:
        data = np.load(npy, allow_pickle=True)
        data = data.item() if data.dtype == object else {"x": data}
    except Exception as err:
        raise TimnetError(f"{npy}: not a readable NumPy file ({type(err).__name__}: {err})") from None
    if not isinstance(data, dict) or "x" not in data or "y" not in data:
        raise TimnetError(f"{npy}: expected the authors' format, a dict with 'x' [N, T, 39] and 'y' one-hot [N, C]")
    x, y = np.asarray(data["x"], dtype=np.float32), np.asarray(data["y"])
    if x.ndim != 3 or y.ndim != 2 or len(x) != len(y):
        raise TimnetError(
            f"{npy}: wrong shapes x {x.shape}, y {y.shape} — expected x [N, T, F] and y [N, C] with the same N"
        )
    if classes is not None and y.shape[1] != len(classes):
        raise TimnetError(
            f"{npy}: y has {y.shape[1]} classes but the config lists {len(classes)} ({', '.join(classes)}) — wrong "
            "--dataset?"
        )
    labels = y.argmax(axis=1)
    csv = sidecars(npy)[0]
    if csv.is_file():
        manifest = pd.read_csv(csv, dtype=str, keep_default_na=False)
        manifest = manifest[manifest.status == "ok"].reset_index(drop=True) if "status" in manifest else manifest
        if len(manifest) != len(x):
            raise TimnetError(
                f"{csv}: {len(manifest)} rows but {npy.name} holds {len(x)} utterances — re-run `timnet preprocess`"
            )
    else:
        names = classes or [str(i) for i in range(y.shape[1])]
        manifest = pd.DataFrame(
            {
                "file": [f"{npy.stem}_{i:05d}" for i in range(len(x))],
                "stem": [f"{npy.stem}_{i:05d}" for i in range(len(x))],
                "label": [names[i] for i in labels],
                "speaker": "",
                "gender": "",
                "session": "",
            }
        )
    manifest["class_index"] = labels
    return FeatureSet(x, labels.astype(np.int64), manifest, list(classes or manifest.label.unique()))
