"""Training speed against the official Keras code, side by side in ONE run, with ratios and peak memory.

    pip install -e .[reference]          # tensorflow-cpu + tf-keras, for the Keras competitor
    python benchmarks/bench_vs_keras.py [--folds 4] [--epochs 50] [--mfcc MFCC/EMODB.npy] [--set KEY=VALUE]

Competitors, one after another on the same EMO-DB-shaped data (the authors' 10 folds: 481 training / 54 test
utterances of 188 x 39, batch 64), each over the same `--folds` x `--epochs`:
  keras                      the model of tools/keras_reference.py trained as the original trains: per fold a new
                             model and one `fit` over all epochs, validation on the test fold and a weights
                             checkpoint (ModelCheckpoint, save_best_only on val_accuracy) every epoch
  timnet train (defaults)    the CLI as a user runs it: default workers, threads and compile, with its per-epoch
                             state saving, history, curves, workbook
  timnet --workers 1 --compile off    the serial path
Each is timed as a whole command (start-up, model building, compiling included) and divided by folds x epochs.
Peak memory is the largest sum of proportional resident memory (PSS) over the command's process tree (Linux;
elsewhere the largest resident size of a single child). The table is printed and appended to
benchmarks/results/bench_vs_keras.csv.
Without --mfcc the features are random numbers in EMO-DB's shape (speed does not depend on the values).

    python benchmarks/bench_vs_keras.py --inference [--samples 2048]

Inference instead, samples per second of one fold model (batch 64, EMO-DB shape, randomly initialised: speed does
not depend on the weights), each competitor in its own process with all cores: Keras `model.predict` as the
official code evaluates; `timnet` torch eager (`load_model(engine="torch")`); onnxruntime (`engine="onnx"`, the
default of `timnet predict`); and both for a 10-fold model folder (fold-model samples per second).
Appended to benchmarks/results/bench_inference.csv.
"""

from __future__ import annotations

import argparse
import csv
import os
import platform
import resource
import subprocess
import sys
import tempfile
import threading
import time
from datetime import datetime
from pathlib import Path

import numpy as np
import pandas as pd

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
RESULTS = HERE / "results" / "bench_vs_keras.csv"
INFERENCE_RESULTS = HERE / "results" / "bench_inference.csv"
BATCH = 64


def synthetic_features(dataset: str, out: Path) -> Path:
    """MFCC/<DATASET>.npy trio of random features in that corpus's shape: its complete file list in the authors'
    order where the project knows it (EMO-DB: 535 x 188 x 39), else `expected_count` generic utterances."""
    from timnet import load_config
    from timnet.corpora import canonical_stems
    from timnet.features import write_feature_files

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


def keras_main(mfcc: Path, folds: int, epochs: int, levels: int, work: Path) -> None:
    """The Keras competitor (run in its own process): the authors' training loop."""
    os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    sys.path.insert(0, str(REPO / "tools"))
    import tf_keras as keras
    from keras_reference import build
    from sklearn.model_selection import KFold

    data = np.load(mfcc, allow_pickle=True).item()
    x, y = data["x"], data["y"]
    for k, (train, test) in enumerate(KFold(10, shuffle=True, random_state=46).split(x), start=1):
        if k > folds:
            break
        model, _ = build(y.shape[1], x.shape[1], levels=levels)
        model.compile(
            loss=keras.losses.CategoricalCrossentropy(label_smoothing=0.1),
            metrics=["accuracy"],
            optimizer=keras.optimizers.Adam(learning_rate=1e-3, beta_1=0.93, beta_2=0.98, epsilon=1e-8),
        )
        checkpoint = keras.callbacks.ModelCheckpoint(
            str(work / f"10-fold_weights_best_{k}.hdf5"),
            monitor="val_accuracy",
            save_weights_only=True,
            save_best_only=True,
            mode="max",
        )
        model.fit(
            x[train],
            y[train],
            validation_data=(x[test], y[test]),
            batch_size=64,
            epochs=epochs,
            verbose=0,
            callbacks=[checkpoint],
        )
        keras.backend.clear_session()


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
    import json

    x = np.random.default_rng(0).normal(size=(samples, 188, 39)).astype(np.float32) * 20
    if engine == "keras":
        os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
        sys.path.insert(0, str(REPO / "tools"))
        from keras_reference import build

        model, _ = build(7, 188, levels=8)
        rate, models = throughput(lambda v: model.predict(v, batch_size=BATCH, verbose=0), x), 1
    else:
        import timnet
        from timnet.config import load_config
        from timnet.export import write_model_folder
        from timnet.model import TIMNet, TIMNetConfig

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
    import json

    competitors = {
        "keras model.predict (official)": "keras",
        "timnet torch eager": "torch",
        "timnet onnxruntime (predict's default)": "onnx",
        "timnet torch eager, 10-fold model": "torch10",
        "timnet onnxruntime, 10-fold model": "onnx10",
    }
    rows = []
    for name, engine in competitors.items():
        argv = [sys.executable, __file__, "--inference-worker", engine, str(samples)]
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
    append_csv(INFERENCE_RESULTS, [{"date": stamp, "machine": where, "versions": libs, **r} for r in rows])


def append_csv(path: Path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    new = not path.exists()
    fields = list(rows[0]) if new else next(csv.reader(open(path)))  # an existing file keeps its column order
    with open(path, "a", newline="") as f:
        writer = csv.DictWriter(f, fields)
        if new:
            writer.writeheader()
        writer.writerows({k: (round(v, 4) if isinstance(v, float) else v) for k, v in r.items()} for r in rows)
    print(f"\nappended to {path.relative_to(REPO)}")


def tree_memory(root: int) -> int:
    """Proportional resident bytes (PSS) of a process and all its descendants (Linux /proc): pages shared between
    them — the torch and TensorFlow libraries every worker maps — count once in total, not once per process."""
    parents = {}
    for pid in os.listdir("/proc"):
        if pid.isdigit():
            try:
                parents[int(pid)] = int(open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()[1])
            except OSError:
                continue
    tree, frontier = {root}, [root]
    while frontier:
        parent = frontier.pop()
        children = [p for p, pp in parents.items() if pp == parent and p not in tree]
        tree.update(children)
        frontier += children
    total = 0
    for pid in tree:
        try:
            for line in open(f"/proc/{pid}/smaps_rollup"):
                if line.startswith("Pss:"):
                    total += int(line.split()[1]) * 1024
        except OSError:
            continue
    return total


def timed(argv: list[str]) -> tuple[float, float]:
    """(wall seconds, peak memory in MB of the process tree: PSS on Linux) of one command."""
    started = time.perf_counter()
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    peak = [0]
    if sys.platform.startswith("linux"):

        def sample():
            while proc.poll() is None:
                peak[0] = max(peak[0], tree_memory(proc.pid))
                time.sleep(2.0)  # PSS is costly to read; peaks last minutes

        threading.Thread(target=sample, daemon=True).start()
    _, err = proc.communicate()
    seconds = time.perf_counter() - started
    if proc.returncode:
        sys.exit(f"failed: {' '.join(argv)}\n{err[-3000:]}")
    if not peak[0]:
        peak[0] = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * (1 if sys.platform == "darwin" else 1024)
    return seconds, peak[0] / 2**20


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    if Path("/proc/cpuinfo").is_file():
        info = Path("/proc/cpuinfo").read_text()
        cpu = next((line.split(":", 1)[1].strip() for line in info.splitlines() if line.startswith("model name")), cpu)
        cpu += ", AVX-512" if " avx512f" in info else ", AVX2" if " avx2" in info else ""
    return f"{cpu}, {os.cpu_count()} cores"


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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--folds", type=int, default=4, help="folds per competitor (of the authors' 10)")
    ap.add_argument("--epochs", type=int, default=50)
    ap.add_argument("--dataset", default="EMODB", help="whose shapes (IEMOCAP: 5,531 x 606 x 39, 10 levels)")
    ap.add_argument("--mfcc", type=Path, help="features from `timnet preprocess` (default: random features)")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="a setting for timnet's runs")
    ap.add_argument("--skip-keras", action="store_true", help="only the timnet competitors (no ratio to Keras)")
    ap.add_argument("--keras-worker", nargs=4, metavar=("MFCC", "FOLDS", "EPOCHS", "LEVELS"), help=argparse.SUPPRESS)
    ap.add_argument("--inference", action="store_true", help="inference speed instead of training")
    ap.add_argument("--samples", type=int, default=2048, help="--inference: samples per predict call")
    ap.add_argument("--inference-worker", nargs=2, metavar=("ENGINE", "SAMPLES"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    from timnet import load_config

    if args.inference:
        return inference_benchmark(args.samples)
    if args.inference_worker:
        with tempfile.TemporaryDirectory(prefix="bench_inference_") as tmp:
            return inference_worker(args.inference_worker[0], int(args.inference_worker[1]), Path(tmp))

    with tempfile.TemporaryDirectory(prefix="bench_vs_keras_") as tmp:
        work = Path(tmp)
        if args.keras_worker:
            mfcc, folds, epochs, levels = args.keras_worker
            return keras_main(Path(mfcc), int(folds), int(epochs), int(levels), work)
        mfcc = args.mfcc or synthetic_features(args.dataset, work)
        n = args.folds * args.epochs
        timnet = [
            sys.executable,
            "-m",
            "timnet.cli",
            "train",
            "--dataset",
            args.dataset,
            "--mfcc",
            str(mfcc),
            "--folds",
            "10",
            "--only-folds",
            ",".join(str(k) for k in range(1, args.folds + 1)),
            "--epochs",
            str(args.epochs),
            "--quiet",
            *[arg for setting in args.set for arg in ("--set", setting)],
        ]
        settings = f" [{', '.join(args.set)}]" if args.set else ""
        competitors = (
            {}
            if args.skip_keras
            else {
                "keras (official loop)": [
                    sys.executable,
                    __file__,
                    "--keras-worker",
                    str(mfcc),
                    str(args.folds),
                    str(args.epochs),
                    str(load_config(args.dataset).model.levels),
                ]
            }
        )
        competitors[f"timnet train (defaults){settings}"] = timnet
        competitors[f"timnet --workers 1 --compile off{settings}"] = [*timnet, "--workers", "1", "--compile", "off"]
        rows = []
        for name, argv in competitors.items():
            out = work / name.split()[0] / str(len(rows))
            extra = (
                []
                if name.startswith("keras")
                else ["--models", str(out / "M"), "--logs", str(out / "L"), "--results", str(out / "R")]
            )
            seconds, rss = timed(argv + extra)
            rows.append({"competitor": name, "seconds": seconds, "per_fold_epoch": seconds / n, "peak_memory_mb": rss})
            print(f"  {name}: {seconds:.0f} s", flush=True)
    base = rows[0]["per_fold_epoch"] if not args.skip_keras else None
    stamp, where, libs = datetime.now().isoformat(timespec="seconds"), machine(), versions()
    print(
        f"\n{stamp} | {where} | {libs} | {args.folds} folds x {args.epochs} epochs, "
        f"{'real' if args.mfcc else 'random'} {args.dataset}-shaped data\n"
    )
    print("| competitor | s per fold-epoch | speed vs Keras | peak memory (MB) |\n|---|---|---|---|")
    for row in rows:
        row["speedup_vs_keras"] = base / row["per_fold_epoch"] if base else float("nan")
        ratio = f"{row['speedup_vs_keras']:.2f}x" if base else "— (no Keras)"
        print(f"| {row['competitor']} | {row['per_fold_epoch']:.3f} | {ratio} | {row['peak_memory_mb']:.0f} |")
    append_csv(
        RESULTS,
        [
            {"date": stamp, "machine": where, "versions": libs, "folds": args.folds, "epochs": args.epochs, **row}
            for row in rows
        ],
    )


if __name__ == "__main__":
    main()
