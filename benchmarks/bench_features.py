"""Parallel vs serial MFCC extraction, side by side in one run; prints the ratio.

    python benchmarks/bench_features.py [--data ../shared/data/emodb-22k-2s] [--dataset EMODB] [--repeat 3]

Two numbers per mode:
  cold    a fresh process extracts the whole corpus (imports and librosa's JIT warm-up included),
  steady  the same after a warm-up in that process: the throughput that matters for big corpora.
Without --data it writes a synthetic 300-file corpus to a temporary folder.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import warnings
from pathlib import Path

ONE_RUN = """
import sys, time, warnings
warnings.simplefilter("ignore")
t0 = time.perf_counter()
from timnet import load_config
from timnet.data.corpora import build_manifest
from timnet.data.mfcc_extraction import extract_many
cfg = load_config(sys.argv[1])
manifest, _ = build_manifest(sys.argv[2], cfg.dataset, skip_bad=True)
workers = int(sys.argv[3])
extract_many(list(manifest.path), cfg.features, workers=workers, progress=False)
cold = time.perf_counter() - t0
t1 = time.perf_counter()
extract_many(list(manifest.path), cfg.features, workers=workers, progress=False)
print(cold, time.perf_counter() - t1, len(manifest))
"""


def synthetic_corpus(root: Path, n: int = 300) -> Path:
    from timnet.data.example import EMOTION_PITCH, write_wav

    emotions = list(EMOTION_PITCH)
    for i in range(n):
        emo = emotions[i % 7]
        write_wav(
            root / "wav" / f"{3 + i // 70:02d}{'ab'[i % 2]}{i % 50:02d}{emo}{'abcdefg'[i % 7]}.wav",
            seconds=2.0,
            freq=EMOTION_PITCH[emo],
            seed=i,
        )
    return root


def measure(dataset: str, data: Path, workers: int, repeat: int) -> tuple[float, float, int]:
    colds, steadies = [], []
    for _ in range(repeat):
        out = subprocess.run(
            [sys.executable, "-c", ONE_RUN, dataset, str(data), str(workers)],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.split()
        colds.append(float(out[0]))
        steadies.append(float(out[1]))
    return statistics.median(colds), statistics.median(steadies), int(out[2])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path)
    ap.add_argument("--dataset", default="EMODB")
    ap.add_argument("--workers", type=int, default=os.cpu_count())
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    warnings.simplefilter("ignore")
    with tempfile.TemporaryDirectory() as tmp:
        data = args.data or synthetic_corpus(Path(tmp) / "EMODB")
        serial = measure(args.dataset, data, 1, args.repeat)
        parallel = measure(args.dataset, data, args.workers, args.repeat)
    n = serial[2]
    print(f"{n} files of {data}, {os.cpu_count()} cores, median of {args.repeat}")
    print(f"{'mode':<10}{'serial s':>10}{f'{args.workers} workers s':>14}{'ratio':>8}")
    for name, i in (("cold", 0), ("steady", 1)):
        print(f"{name:<10}{serial[i]:>10.2f}{parallel[i]:>14.2f}{serial[i] / parallel[i]:>7.2f}x")


if __name__ == "__main__":
    main()
