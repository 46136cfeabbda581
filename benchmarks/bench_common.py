"""What the benchmarks share: the machine and the code a result row names (the CPU model with its widest vector
extension, the core count, the library versions, the commit), appending rows to a results CSV without losing the
columns and rows before, the median (min–max) of repeated measurements, random features in a corpus's shape, and
Keras 2 semantics for the authors' code.

The benchmark scripts beside it import it (`python benchmarks/bench_<name>.py` puts this folder on sys.path).
"""

from __future__ import annotations

import csv
import os
import platform
import statistics
import subprocess
from pathlib import Path

import numpy as np
import pandas as pd

REPO = Path(__file__).resolve().parents[1]
BATCH = 64  # the authors' batch size


def synthetic_features(dataset: str, out: Path) -> Path:
    """MFCC/<DATASET>.npy trio of random features in that corpus's shape: its complete file list in the authors'
    order where the project knows it (EMO-DB: 535 x 188 x 39), else `expected_count` generic utterances."""
    from timnet import load_config
    from timnet.data.corpora import canonical_stems
    from timnet.data.feature_files import write_feature_files

    cfg = load_config(dataset)
    files = canonical_stems(cfg.dataset)
    if files is None:
        n, classes = cfg.dataset.expected_count, cfg.dataset.classes
        files = pd.DataFrame(
            {"stem": [f"utt{i:05d}" for i in range(n)], "label": [classes[i % len(classes)] for i in range(n)]}
        )
    x = np.random.default_rng(0).normal(size=(len(files), cfg.features.frames, cfg.features.n_mfcc)).astype(np.float32)
    labels = files.label.map(cfg.dataset.classes.index).to_numpy()
    manifest = files.assign(file=files.stem + ".wav", speaker=files.stem.str[:2], status="ok")
    npy = out / f"{cfg.dataset.name}.npy"
    write_feature_files(npy, x, labels, len(cfg.dataset.classes), manifest, {"dataset": dataset, "synthetic": True})
    return npy


def legacy_keras() -> None:
    """Keras 2 semantics (tf-keras) for `tensorflow.keras`, set before TensorFlow is imported."""
    os.environ["TF_USE_LEGACY_KERAS"] = "1"
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def append_csv(path: Path, rows: list[dict], say=print) -> None:
    """Rows appended in the file's column order; a column the file lacks is added (older rows left empty)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    old, fields = [], []
    if path.exists():
        with open(path, newline="") as f:
            reader = csv.DictReader(f)
            old, fields = list(reader), list(reader.fieldnames or [])
    added = [k for k in rows[0] if k not in fields]
    with open(path, "w" if added or not old else "a", newline="") as f:
        writer = csv.DictWriter(f, fields + added, restval="")
        if added or not old:
            writer.writeheader()
            writer.writerows(old)
        writer.writerows({k: (round(v, 4) if isinstance(v, float) else v) for k, v in r.items()} for r in rows)
    say(f"\nappended to {path.relative_to(REPO)}")


def code_version() -> str:
    """The commit timed (with "+changes" when the work tree differs from it): a row says which code it measured."""
    git = ["git", "-C", str(REPO)]
    try:
        commit = subprocess.run([*git, "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=True)
        dirty = subprocess.run([*git, "status", "--porcelain", "--untracked-files=no"], capture_output=True, text=True)
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return commit.stdout.strip() + ("+changes" if dirty.stdout.strip() else "")


def spread(values: list[float], digits: int, unit: str = "") -> str:
    """Median (min–max) of the rounds' values; just the value for one round."""
    values = [v for v in values if v == v]  # drop NaN
    if not values:
        return "—"
    med = f"{statistics.median(values):.{digits}f}{unit}"
    return med if len(values) == 1 else f"{med} ({min(values):.{digits}f}–{max(values):.{digits}f})"


def machine() -> str:
    return f"{cpu_model()}, {os.cpu_count()} cores"


def versions() -> str:
    import torch

    found = [f"python {platform.python_version()}", f"torch {torch.__version__}"]
    try:
        from importlib.metadata import version

        found.append(f"tensorflow {version('tensorflow-cpu') if _has('tensorflow-cpu') else version('tensorflow')}")
    except Exception:  # noqa: BLE001
        found.append("tensorflow missing")
    return ", ".join(found)


def _has(dist: str) -> bool:
    from importlib.metadata import PackageNotFoundError, version

    try:
        version(dist)
        return True
    except PackageNotFoundError:
        return False


def cpu_model() -> str:
    """The CPU's model name and its widest vector extension (AVX-512, AVX2): every result row names it."""
    if Path("/proc/cpuinfo").is_file():
        info = Path("/proc/cpuinfo").read_text()
        name = next((line.split(":", 1)[1].strip() for line in info.splitlines() if line.startswith("model name")), "")
        return name + (", AVX-512" if " avx512f" in info else ", AVX2" if " avx2" in info else "")
    return platform.processor() or platform.machine()


def library_versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    found = {"python": platform.python_version()}
    for column, dists in {
        "torch": ["torch"],
        "tensorflow": ["tensorflow-cpu", "tensorflow"],
        "tf_keras": ["tf-keras"],
    }.items():
        for dist in dists:
            try:
                found[column] = version(dist)
                break
            except PackageNotFoundError:
                found[column] = "missing"
    return found
