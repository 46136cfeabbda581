"""Full TIM-Net training benchmark: both protocols side by side, resumable, summarised as a README table.

    python benchmarks/bench_training.py --data ../shared/data/emodb-22k-2s --work bench_runs [--threads 1]
    python benchmarks/bench_training.py --work bench_runs --report     # table of what has finished so far

Runs `timnet train` (10 folds x 500 epochs, checkpoint `last`) with the authors' `random` folds and with
`speaker` (leave-one-speaker-out), one protocol after the other, each with its folds in parallel workers
(default: one per core). Each epoch is checkpointed, so re-running the same command resumes the unfinished
runs. Numbers on emodb-22k-2s are NOT comparable to the paper: that copy of EMO-DB is trimmed to 2 s.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import torch

from timnet.core.metrics import METRICS, mean_std

PROTOCOLS = ("random", "speaker")
TIMNET = [sys.executable, "-m", "timnet.cli"]


def runs(work: Path) -> dict[str, Path]:
    """The latest run folder of each protocol under work/Models."""
    found = {}
    for run in sorted((work / "Models").glob("*/config.json"), key=lambda p: p.stat().st_mtime):
        found[json.loads(run.read_text())["config"]["train"]["protocol"]] = run.parent
    return found


def record_wall(work: Path, protocol: str, seconds: float) -> None:
    """Add one session's wall-clock seconds (parallel folds: the time a user waits) to work/wall.json."""
    path = work / "wall.json"
    walls = json.loads(path.read_text()) if path.exists() else {}
    walls.setdefault(protocol, []).append({"seconds": round(seconds, 1), "cores": os.cpu_count()})
    path.write_text(json.dumps(walls, indent=1))


def report(work: Path) -> str:
    per_fold = []
    walls = json.loads((work / "wall.json").read_text()) if (work / "wall.json").exists() else {}
    lines = [
        "| protocol | folds done | WAR % | UAR % | macro-F1 % | fold time (sum) | wall time |",
        "|---|---|---|---|---|---|---|",
    ]
    for protocol, run in runs(work).items():
        record = json.loads((run / "config.json").read_text())
        total = len(record["folds"])
        saved = sorted((torch.load(p, weights_only=True) for p in run.glob("fold_*.pt")), key=lambda s: s["fold"])
        if not saved:
            lines.append(f"| {protocol} | 0 of {total} | | | | | |")
            continue
        cells = []
        for metric in METRICS:
            mean, std = mean_std([s["metrics"][metric] for s in saved])
            cells.append(f"{mean:.2f} ± {std:.2f}")
        hours = sum(s["seconds"] for s in saved) / 3600
        done = ", ".join(str(s["fold"]) for s in saved)
        wall = sum(w["seconds"] for w in walls.get(protocol, [])) / 3600
        lines.append(
            f"| {protocol} | {len(saved)} of {total} ({done}) | {' | '.join(cells)} | {hours:.1f} h | {wall:.2f} h |"
        )
        per_fold.append(
            f"{protocol}: "
            + ", ".join(f"fold {s['fold']} {s['metrics']['war']:.2f} % in {s['seconds'] / 60:.0f} min" for s in saved)
        )
    return "\n".join(lines + ["", "WAR per fold and its training time:", *per_fold])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=Path("../shared/data/emodb-22k-2s"))
    ap.add_argument("--work", type=Path, default=Path("bench_runs"))
    ap.add_argument("--threads", type=int, help="threads per worker (default: cores divided among the workers)")
    ap.add_argument("--report", action="store_true", help="only print the table of finished folds")
    ap.add_argument("--protocols", nargs="+", choices=PROTOCOLS, default=list(PROTOCOLS), help="which to run")
    args = ap.parse_args()
    if not args.report:
        mfcc = args.work / "MFCC"
        existing = runs(args.work)
        if not all(p in existing for p in args.protocols):  # a resumed run checks its own MFCC file (SHA-256)
            where = ["--data", str(args.data), "--out", str(mfcc)]
            subprocess.run([*TIMNET, "preprocess", "--dataset", "EMODB", *where, "--quiet"], check=True)
        dirs = [
            "--models",
            str(args.work / "Models"),
            "--logs",
            str(args.work / "logs"),
            "--results",
            str(args.work / "Results"),
        ]
        for protocol in args.protocols:
            how = (
                ["--resume", existing[protocol].name]
                if protocol in existing
                else [
                    "--dataset",
                    "EMODB",
                    "--mfcc",
                    str(mfcc / "EMODB.npy"),
                    "--protocol",
                    protocol,
                    "--checkpoint",
                    "last",
                ]
            )
            threads = ["--threads", str(args.threads)] if args.threads else []
            started = time.perf_counter()
            try:
                subprocess.run([*TIMNET, "train", *how, *dirs, *threads, "--quiet"], check=True)
            finally:  # an interrupted session's wall time counts too: resumed runs add theirs
                record_wall(args.work, protocol, time.perf_counter() - started)
    print(report(args.work))


if __name__ == "__main__":
    main()
