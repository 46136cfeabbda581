"""Overhead of `--backend ray` against the local process pool, per unit, side by side in one run.

    python benchmarks/bench_ray.py [--epochs 2 30] [--folds 2]

On random EMO-DB-shaped features (535 x 188 x 39, the authors' folds), each run of `--folds` units x E epochs
is trained with `--backend local` (2 workers x 1 thread) and with `--backend ray` (a local Ray cluster with
one CPU per core, started once before the runs: its start-up is reported on its own), then
overhead per unit = (ray - local) wall seconds / units. Appends to benchmarks/results/bench_ray.csv.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
import warnings
from datetime import datetime
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from bench_common import append_csv, code_version, machine, synthetic_features  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--epochs", type=int, nargs="+", default=[2, 30])
    ap.add_argument("--folds", type=int, default=2)
    args = ap.parse_args()
    import os

    import ray

    from timnet import load_config
    from timnet.training.execution import Execution
    from timnet.training.run import run_training
    from timnet.training.run_store import Roots

    warnings.simplefilter("ignore")
    with tempfile.TemporaryDirectory(prefix="bench_ray_") as tmp:
        work = Path(tmp)
        mfcc = synthetic_features("EMODB", work)
        started = time.perf_counter()
        ray.init(num_cpus=os.cpu_count(), include_dashboard=False, log_to_driver=False)
        cluster_start = time.perf_counter() - started
        rows = []
        for epochs in args.epochs:
            cfg = load_config("EMODB", {"train.folds": 10, "train.epochs": epochs})
            only = list(range(1, args.folds + 1))
            times = {}
            for backend in ("local", "ray"):
                out = work / f"{backend}{epochs}"
                started = time.perf_counter()
                workers = 2 if backend == "local" else None
                how = Execution(
                    Roots(out / "M", out / "L", out / "R"), backend, workers=workers, threads=1, progress=False
                )
                run_training(cfg, mfcc, how, only_folds=only)
                times[backend] = time.perf_counter() - started
            rows.append(
                {
                    "date": datetime.now().isoformat(timespec="seconds"),
                    "machine": machine(),
                    "commit": code_version(),
                    "units": args.folds,
                    "epochs": epochs,
                    "local_s": times["local"],
                    "ray_s": times["ray"],
                    "overhead_per_unit_s": (times["ray"] - times["local"]) / args.folds,
                    "ray_cluster_start_s": cluster_start,
                }
            )
        ray.shutdown()
    print(f"\n{rows[0]['date']} | {rows[0]['machine']} | Ray cluster start {cluster_start:.1f} s (once)\n")
    print("| run | local (2 workers) | ray | overhead per unit |\n|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['units']} units x {r['epochs']} epochs | {r['local_s']:.1f} s | {r['ray_s']:.1f} s | "
            f"{r['overhead_per_unit_s']:+.1f} s |"
        )
    append_csv(HERE / "results" / "bench_ray.csv", rows)


if __name__ == "__main__":
    main()
