"""Inference speed against the official code: samples per second of one fold model and of a 10-fold model folder.

    python benchmarks/bench_inference.py [--samples 2048]

One fold model (batch 64, EMO-DB shape, randomly initialised: speed does not depend on the weights), each
competitor in its own process with all cores: Keras `model.predict` as the official code evaluates (the model of
tools/keras_reference.py; needs `pip install -e .[reference]`); `timnet` torch eager
(`load_model(engine="torch")`); onnxruntime (`engine="onnx"`, the default of `timnet predict`); and both for a
10-fold model folder (fold-model samples per second). Appended to benchmarks/results/bench_inference.csv.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from bench_common import BATCH, REPO, append_csv, code_version, legacy_keras, machine, versions  # noqa: E402

RESULTS = HERE / "results" / "bench_inference.csv"


def throughput(predict, x: np.ndarray, seconds: float = 10.0) -> float:
    """Samples per second of `predict(x)`, after one warm-up call, over at least `seconds`."""
    predict(x)
    done, started = 0, time.perf_counter()
    while time.perf_counter() - started < seconds:
        predict(x)
        done += len(x)
    return done / (time.perf_counter() - started)


def inference_worker(engine: str, samples: int, work: Path) -> None:
    """One inference competitor in its own process; prints {"samples_per_s": ..., "models": ...} as JSON."""
    x = np.random.default_rng(0).normal(size=(samples, 188, 39)).astype(np.float32) * 20
    if engine == "keras":
        legacy_keras()
        sys.path.insert(0, str(REPO / "tools"))
        from keras_reference import build

        model, _ = build(7, 188, levels=8)
        rate, models = throughput(lambda v: model.predict(v, batch_size=BATCH, verbose=0), x), 1
    else:
        import timnet
        from timnet.core.config import load_config
        from timnet.model.network import TIMNet, TIMNetConfig
        from timnet.serving.export import write_model_folder

        folds = 10 if engine.endswith("10") else 1
        cfg = load_config("EMODB")
        models = {f"fold_{k}": TIMNet(TIMNetConfig.from_config(cfg)).eval() for k in range(1, folds + 1)}
        folder = write_model_folder(work / engine, cfg, models, [], {"kind": "benchmark"})
        loaded = timnet.load_model(folder, engine=engine.removesuffix("10"))
        loaded.runner.batch_size = BATCH
        rate = throughput(loaded.fold_outputs, x)
        models = folds
    print(json.dumps({"samples_per_s": rate, "models": models}))


def inference_benchmark(samples: int) -> None:
    """Inference competitors side by side, one process each, with ratios to Keras."""
    competitors = {
        "keras model.predict (official)": "keras",
        "timnet torch eager": "torch",
        "timnet onnxruntime (predict's default)": "onnx",
        "timnet torch eager, 10-fold model": "torch10",
        "timnet onnxruntime, 10-fold model": "onnx10",
    }
    rows = []
    for name, engine in competitors.items():
        argv = [sys.executable, __file__, "--worker", engine, str(samples)]
        done = subprocess.run(argv, capture_output=True, text=True)
        if done.returncode:
            sys.exit(f"failed: {name}\n{done.stderr[-3000:]}")
        result = json.loads(done.stdout.strip().splitlines()[-1])
        rows.append({"competitor": name, "fold_model_samples_per_s": result["samples_per_s"] * result["models"]})
        print(f"  {name}: {rows[-1]['fold_model_samples_per_s']:.0f} samples/s", flush=True)
    base = rows[0]["fold_model_samples_per_s"]
    stamp, where, libs = datetime.now().isoformat(timespec="seconds"), machine(), versions()
    print(f"\n{stamp} | {where} | {libs} | batch {BATCH}, {samples} samples of 188 x 39 per call\n")
    print("| competitor | fold-model samples/s | vs Keras |\n|---|---|---|")
    for row in rows:
        row["speedup_vs_keras"] = row["fold_model_samples_per_s"] / base
        print(f"| {row['competitor']} | {row['fold_model_samples_per_s']:.0f} | {row['speedup_vs_keras']:.2f}x |")
    about = {"date": stamp, "machine": where, "versions": libs, "commit": code_version()}
    append_csv(RESULTS, [{**about, **r} for r in rows])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--samples", type=int, default=2048, help="samples per predict call (default 2048)")
    ap.add_argument("--worker", nargs=2, metavar=("ENGINE", "SAMPLES"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        with tempfile.TemporaryDirectory(prefix="bench_inference_") as tmp:
            return inference_worker(args.worker[0], int(args.worker[1]), Path(tmp))
    inference_benchmark(args.samples)


if __name__ == "__main__":
    main()
