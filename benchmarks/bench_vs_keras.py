"""Training speed of the authors' own TIM-Net code against `timnet train`, interleaved, at two epoch counts.

    pip install -e .[reference]          # tensorflow-cpu + tf-keras, for competitor A
    python benchmarks/bench_vs_keras.py [--epochs 30,90] [--repeats 3] [--folds 2] [--mfcc MFCC/EMODB.npy]
                                        [--authors-code ../shared/reference/official-timnet] [--set KEY=VALUE]

Competitors, each a whole process, on the same data and the authors' 10-fold split (KFold(10, shuffle, seed 46);
EMO-DB: 481 training / 54 test utterances of 188 x 39, batch 64), each over its first `--folds` folds:
  A  the authors' own code (../shared/reference/official-timnet, read-only, imported at run time, never copied):
     their `main.py` run as a user runs it (`--mode train --epoch E`), i.e. their `Model.py` training: per fold a
     new `TIMNET_Model.create_model()`, one `fit` over all epochs with validation on the test fold and their
     `ModelCheckpoint(save_weights_only=True, save_best_only=False)` every epoch, then their per-fold
     load_weights / evaluate / predict / reports and their workbook. Run-time shims in the worker, none in their
     files: tf-keras (TF_USE_LEGACY_KERAS=1; under Keras 3 their TIMNET.py fails: "A KerasTensor cannot be used
     as input to a TensorFlow function"), their KFold cut to the first `--folds` folds, pandas >= 2 (no `encoding=`
     in to_excel, no ExcelWriter.save), class labels passed to their confusion matrix / report (a small test fold
     may lack a class), MFCC/<DATASET>.npy, Models/ and Results/ in a scratch folder.
     Only when that folder is absent: the model of tools/keras_reference.py in the same loop, labelled
     "our Keras rewrite, not the authors' code" on every output line.
  B  `python -m timnet.cli train` with its defaults, as a user runs it (workers, threads, compile; `--set` passes
     settings through).
Order: rounds of A(E1) B(E1) A(E2) B(E2), `--repeats` rounds. Measured per command: wall seconds, CPU seconds of
the process tree (getrusage(RUSAGE_CHILDREN) deltas: user + system of the command and its reaped descendants),
peak memory (largest sum of PSS over the process tree, Linux; elsewhere the largest resident child).
Derived per round and competitor, with F = --folds:
  steady   s per fold-epoch = (wall(E2) - wall(E1)) / (F x (E2 - E1))
  fixed    s per command    = wall(E1) - steady x F x E1
  paper    10 folds x 500 epochs = A: start-up + (fixed - start-up) x 10 / F + steady x 5000  (A builds, compiles
           and evaluates a new graph per fold; its start-up, TF import to the first fold, is measured in the worker
           and counted once); B: fixed + steady x 5000 (its imports, worker pool, feature mapping and workbook are
           per command; its per-fold costs overlap in the workers). A row "B's fixed cost per fold" shows the
           ratio if B's fixed cost scaled with folds as A's does (an upper bound for B).
Printed: medians (min-max over the rounds) as a Markdown table for the README; the raw per-command rows are
appended to benchmarks/results/bench_vs_authors.csv as each command finishes (bench_vs_keras.csv keeps the old
columns and rows).
Without --mfcc the features are random numbers in the dataset's shape (speed does not depend on the values).
Caveats: B trains up to one fold per core at once, so use F >= cores for a faithful 10-fold projection. The
projection assumes a 500-epoch run takes the code paths of E1 and E2: `--compile auto` compiles where a worker
trains >= 1000 epochs (its units reuse the compiled code), so at the paper protocol it compiles and E1, E2 would
not; B therefore runs with `--compile` set to what auto chooses at the paper protocol (`--set train.compile=...`
overrides), and its fixed cost holds the compile (once per worker; inductor's on-disk cache makes it ~30 s after
the first round). Duration: ~(2 x wall(A) + 2 x wall(B)) per round; on 2 cores with
the defaults roughly 15 minutes a round.

Inference speed is benchmarks/bench_inference.py; what the benchmarks share, benchmarks/bench_common.py.
"""

from __future__ import annotations

import argparse
import os
import platform
import resource
import statistics
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
sys.path.insert(0, str(HERE))

from bench_common import (  # noqa: E402
    BATCH,
    REPO,
    append_csv,
    code_version,
    cpu_model,
    legacy_keras,
    library_versions,
    machine,
    spread,
    synthetic_features,
    versions,
)

AUTHORS_CODE = REPO.parent / "shared" / "reference" / "official-timnet"
RESULTS = HERE / "results" / "bench_vs_authors.csv"
PAPER_FOLDS, PAPER_EPOCHS = 10, 500
REWRITE_LABEL = "our Keras rewrite, not the authors' code"
AUTHORS_NAMES = {"RAVDESS": "RAVDE"}  # the authors' main.py names for our datasets, where they differ
STARTED = "first_fold_started"  # file in a competitor-A worker's folder: time.time() when fold 1 begins


def first_folds(folds: int, work: Path):
    """sklearn's KFold yielding only the first `folds` splits; notes the time the first fold begins."""
    from sklearn.model_selection import KFold

    class FirstFolds(KFold):
        def split(self, X, y=None, groups=None):  # noqa: N803 (sklearn's names)
            for k, split in enumerate(super().split(X, y, groups)):
                if k == folds:
                    return
                if k == 0:
                    (work / STARTED).write_text(repr(time.time()))
                yield split

    return FirstFolds


def shim_authors(code: Path, folds: int, classes: int, work: Path) -> None:
    """Run-time shims for the authors' Model.py under today's libraries; their files stay untouched."""
    import functools

    sys.path.insert(0, str(code))
    import Model  # the authors' module (their folder is first on sys.path)

    Model.KFold = first_folds(folds, work)
    to_excel = pd.DataFrame.to_excel

    @functools.wraps(to_excel)
    def to_excel_without_encoding(self, *args, encoding=None, **kwargs):  # pandas 2 dropped `encoding`
        return to_excel(self, *args, **kwargs)

    pd.DataFrame.to_excel = to_excel_without_encoding
    if not hasattr(pd.ExcelWriter, "save"):  # pandas 2 dropped save(); their close() right after writes the file
        pd.ExcelWriter.save = lambda self: None
    for name in ("confusion_matrix", "classification_report"):  # every class named: a small test fold may lack one
        fn = getattr(Model, name)
        setattr(Model, name, functools.partial(fn, labels=list(range(classes))))


def authors_worker(code: Path, mfcc: Path, dataset: str, folds: int, epochs: int, work: Path) -> None:
    """Competitor A in its own process: the authors' main.py, run as `python main.py --mode train --epoch E`
    from a folder holding MFCC/<DATASET>.npy, with its Models/ and Results/ in that folder."""
    import runpy

    legacy_keras()
    name = AUTHORS_NAMES.get(dataset, dataset)
    (work / "MFCC").mkdir(parents=True, exist_ok=True)
    (work / "MFCC" / f"{name}.npy").symlink_to(mfcc.resolve())
    shim_authors(code, folds, int(np.load(mfcc, allow_pickle=True).item()["y"].shape[1]), work)
    os.chdir(work)
    sys.argv = [str(code / "main.py"), "--mode", "train", "--data", name, "--epoch", str(epochs)]
    sys.argv += ["--model_path", f"{work}/Models/", "--result_path", f"{work}/Results/"]
    runpy.run_path(str(code / "main.py"), run_name="__main__")


def rewrite_worker(mfcc: Path, folds: int, epochs: int, levels: int, work: Path) -> None:
    """Fallback competitor A (when the authors' folder is absent): tools/keras_reference.py's model in the
    authors' per-fold loop (their Model.train: new model, smoothed labels, one fit with a checkpoint every epoch,
    reload, evaluate, predict)."""
    legacy_keras()
    sys.path.insert(0, str(REPO / "tools"))
    import tf_keras as keras
    from keras_reference import build

    data = np.load(mfcc, allow_pickle=True).item()
    x, y = data["x"], data["y"]
    for k, (train, test) in enumerate(first_folds(folds, work)(10, shuffle=True, random_state=46).split(x), 1):
        model, _ = build(y.shape[1], x.shape[1], levels=levels)
        model.compile(
            loss="categorical_crossentropy",
            metrics=["accuracy"],
            optimizer=keras.optimizers.Adam(learning_rate=1e-3, beta_1=0.93, beta_2=0.98, epsilon=1e-8),
        )
        weights = str(work / f"10-fold_weights_best_{k}.hdf5")
        checkpoint = keras.callbacks.ModelCheckpoint(weights, verbose=1, save_weights_only=True)
        smoothed = y[train] * 0.9 + 0.1 / y.shape[1]
        fit = {"batch_size": BATCH, "epochs": epochs, "verbose": 1, "callbacks": [checkpoint]}
        model.fit(x[train], smoothed, validation_data=(x[test], y[test]), **fit)
        model.load_weights(weights)
        model.evaluate(x[test], y[test])
        model.predict(x[test])
    keras.backend.clear_session()


def paper_compile() -> str:
    """`on` or `off`: what `--compile auto` chooses for the paper protocol on this machine (its workers each
    train ceil(10 / workers) units of 500 epochs, compiled once per worker)."""
    from timnet.accel.blas import resolve_blas
    from timnet.training.compiling import should_compile
    from timnet.training.pool import plan_workers

    workers, _ = plan_workers(PAPER_FOLDS, "cpu")
    units, blas = -(-PAPER_FOLDS // workers), resolve_blas("auto", "cpu")
    return "on" if should_compile("auto", PAPER_EPOCHS, "cpu", units, blas) else "off"


def competitors(args, mfcc: Path) -> dict[str, tuple[str, callable]]:
    """{"A": (name, argv for (epochs, out)), "B": ...}: A the authors' code (or the labelled fallback), B timnet."""
    from timnet import load_config

    authors = args.authors_code.is_dir()
    a_name = (
        "A: the authors' code (official TIM-Net, Keras)"
        if authors
        else f"A: tools/keras_reference.py ({REWRITE_LABEL})"
    )
    a_code = str(args.authors_code) if authors else "-"
    a_extra = [] if authors else [str(load_config(args.dataset).model.levels)]

    def a_argv(e: int, out: Path) -> list[str]:
        a = [sys.executable, __file__, "--a-worker", a_code, str(mfcc), args.dataset, str(args.folds), str(e)]
        return [*a, str(out), *a_extra]

    settings = f" [{', '.join(args.set)}]" if args.set else ""
    timnet = [sys.executable, "-m", "timnet.cli", "train", "--dataset", args.dataset, "--mfcc", str(mfcc)]
    timnet += ["--folds", "10", "--only-folds", ",".join(str(k) for k in range(1, args.folds + 1)), "--quiet"]
    timnet += [arg for setting in args.set for arg in ("--set", setting)]
    if not any(setting.startswith("train.compile=") for setting in args.set):
        paper = paper_compile()  # E1 and E2 take the code path the paper protocol takes
        timnet += ["--compile", paper]
        settings += f" [compile {paper}: what auto chooses at the paper protocol]"

    def b_argv(e: int, out: Path) -> list[str]:
        folders = [arg for flag in ("models", "logs", "results") for arg in (f"--{flag}", str(out / flag))]
        return [*timnet, "--epochs", str(e), *folders]

    found = {"A": (a_name, a_argv), "B": (f"B: timnet train (defaults){settings}", b_argv)}
    if args.before:  # the same command on the code before a change (a checkout's src/), interleaved with B

        def b0_argv(e: int, out: Path) -> list[str]:
            return ["env", f"PYTHONPATH={args.before.resolve()}", *b_argv(e, out)]

        found = {
            "A": found["A"],
            "B0": (f"B0: timnet train from {args.before} (before){settings}", b0_argv),
            "B": found["B"],
        }
    return found


def timed(argv: list[str]) -> dict[str, float]:
    """Wall seconds, CPU seconds (user + system, the command and its reaped descendants) and peak memory in MB of
    the process tree (PSS on Linux) of one command; `spawned` is its start as time.time()."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    spawned, started = time.time(), time.perf_counter()
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    peak = [0]
    if sys.platform.startswith("linux"):

        def sample():
            while proc.poll() is None:
                peak[0] = max(peak[0], tree_memory(proc.pid))
                time.sleep(2.0)  # PSS is costly to read; peaks last minutes

        threading.Thread(target=sample, daemon=True).start()
    _, err = proc.communicate()
    wall = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if proc.returncode:
        sys.exit(f"failed: {' '.join(argv)}\n{err[-3000:]}")
    if not peak[0]:
        peak[0] = after.ru_maxrss * (1 if sys.platform == "darwin" else 1024)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return {"wall_s": wall, "cpu_s": cpu, "peak_memory_mb": peak[0] / 2**20, "spawned": spawned}


def run_rounds(args, mfcc: Path, work: Path, say, keep=lambda row: None) -> list[dict]:
    """`--repeats` rounds of A(E1) B(E1) A(E2) B(E2); one row per command, each handed to `keep` as soon as it is
    measured (the CSV: a long run stopped halfway keeps its commands)."""
    rows, commands = [], competitors(args, mfcc)
    warmup = commands["B"][1](1, work / "warmup")
    if "--compile" in warmup and warmup[warmup.index("--compile") + 1] == "on":
        say("  warm-up, untimed: one epoch of B fills inductor's compile cache, so E1 and E2 compile alike")
        (work / "warmup").mkdir()
        subprocess.run(warmup, check=True, capture_output=True)
    for r in range(1, args.repeats + 1):
        for epochs in args.epochs:
            for key, (name, argv) in commands.items():
                out = work / f"{key}_{r}_{epochs}"
                out.mkdir()
                m = timed(argv(epochs, out))
                mark, spawned = out / STARTED, m.pop("spawned")
                startup = float(mark.read_text()) - spawned if mark.is_file() else None  # A's workers write it
                rows.append(
                    {
                        "round": r,
                        "key": key,
                        "competitor": name,
                        "epochs": epochs,
                        "folds": args.folds,
                        **m,
                        "startup_s": startup,
                    }
                )
                keep(rows[-1])
                say(
                    f"  round {r}/{args.repeats}, {args.folds} folds x {epochs} epochs, {name}: {m['wall_s']:.1f} s "
                    f"wall, {m['cpu_s']:.1f} s CPU, {m['peak_memory_mb']:.0f} MB"
                )
    return rows


def derive(rows: list[dict], e1: int, e2: int, folds: int) -> dict[str, float]:
    """One round's numbers per competitor (keys like "A.steady") and A/B ratios (keys like "ratio.steady")."""
    got = {(row["key"], row["epochs"]): row for row in rows}
    d = {}
    for key in sorted({row["key"] for row in rows}):  # A, B, and B0 where --before ran
        w1, w2 = got[key, e1]["wall_s"], got[key, e2]["wall_s"]
        steady = (w2 - w1) / (folds * (e2 - e1))
        fixed = w1 - steady * folds * e1
        marks = [got[key, e]["startup_s"] for e in (e1, e2) if got[key, e].get("startup_s") is not None]
        startup = statistics.mean(marks) if key == "A" and marks else 0.0
        per_fold = key == "A"  # A's fixed cost, less its start-up, is per fold; B's per command (see the docstring)
        scale = PAPER_FOLDS / folds if per_fold else 1.0
        steady_paper = steady * PAPER_FOLDS * PAPER_EPOCHS
        d |= {
            f"{key}.wall1": w1,
            f"{key}.wall2": w2,
            f"{key}.steady": steady,
            f"{key}.fixed": fixed,
            f"{key}.cpu1": got[key, e1]["cpu_s"],
            f"{key}.cpu2": got[key, e2]["cpu_s"],
            f"{key}.startup": startup,
            f"{key}.paper_h": (startup + (fixed - startup) * scale + steady_paper) / 3600,
            f"{key}.paper_pf_h": (fixed * PAPER_FOLDS / folds + steady_paper) / 3600,
            f"{key}.peak": max(got[key, e]["peak_memory_mb"] for e in (e1, e2)),
        }
    for metric in {k.split(".", 1)[1] for k in d}:
        d[f"ratio.{metric}"] = d[f"A.{metric}"] / d[f"B.{metric}"] if d[f"B.{metric}"] else float("nan")
    d["ratio.paper_pf_h"] = d["A.paper_h"] / d["B.paper_pf_h"]  # B's fixed cost per fold too: B's upper bound
    if "B0.paper_h" in d:  # the code before a change: A / B0, and B0 / B (above 1: the change made B faster)
        d |= {f"ratio0.{m}": d[f"A.{m}"] / d[f"B0.{m}"] for m in ("steady", "paper_h")}
        d |= {f"change.{m}": d[f"B0.{m}"] / d[f"B.{m}"] for m in ("steady", "paper_h")}
    return d


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


def table(rounds: list[dict], names: dict[str, str], e1: int, e2: int, folds: int) -> list[str]:
    """Markdown table: one row per metric, columns A, B and A/B, cells median (min–max) over the rounds."""
    paper = f"{PAPER_FOLDS} folds × {PAPER_EPOCHS} epochs"
    metrics = [
        (f"wall, {folds} folds × {e1} epochs (s)", "wall1", 1),
        (f"wall, {folds} folds × {e2} epochs (s)", "wall2", 1),
        (f"CPU, {folds} folds × {e1} epochs (s)", "cpu1", 1),
        (f"CPU, {folds} folds × {e2} epochs (s)", "cpu2", 1),
        ("steady s per fold-epoch", "steady", 3),
        (f"fixed s per command ({folds} folds)", "fixed", 1),
        ("of which start-up before fold 1 (s)", "startup", 1),
        (f"**projected {paper} (h)**", "paper_h", 2),
        ("peak memory, process tree PSS (MB)", "peak", 0),
    ]
    a, b = names["A"], names["B"]
    lines = [f"| metric | {a} | {b} | A / B |", "|---|---|---|---|"]
    for label, key, digits in metrics:
        cells = [spread([r[f"{who}.{key}"] for r in rounds], digits) for who in "AB"]
        if key == "startup":
            cells[1] = "(in fixed)"
        ratio = spread([r[f"ratio.{key}"] for r in rounds], 2, "×") if key != "startup" else "—"
        ratio = f"**{ratio}**" if key == "paper_h" else ratio
        lines.append(f"| {label} | {cells[0]} | {cells[1]} | {ratio} |")
    if "B0" in names:
        for label, key, digits in metrics[4:5] + metrics[7:9]:
            cells = spread([r[f"B0.{key}"] for r in rounds], digits)
            ratio = spread([r[f"ratio0.{key}"] for r in rounds], 2, "×") if f"ratio0.{key}" in rounds[0] else "—"
            lines.append(f"| {label}, {names['B0']} | — | {cells} | A / B0: {ratio} |")
        change = [spread([r[f"change.{m}"] for r in rounds], 3, "×") for m in ("steady", "paper_h")]
        lines.append(f"| B0 / B (before / after the change): steady, projected | — | — | {change[0]}, {change[1]} |")
    pf = [r["B.paper_pf_h"] for r in rounds]
    lines.append(
        f"| projected {paper} if B's fixed cost were per fold too (h) | — | {spread(pf, 2)} | "
        f"{spread([r['ratio.paper_pf_h'] for r in rounds], 2, '×')} |"
    )
    return lines


def summary(args, rows: list[dict], names: dict[str, str], say, commit: str) -> None:
    """The header line, the table and the assumptions, through `say`."""
    e1, e2 = args.epochs
    rounds = [derive([x for x in rows if x["round"] == r], e1, e2, args.folds) for r in range(1, args.repeats + 1)]
    stamp, where, libs = rows[0]["date"], machine(), versions()
    data = "real" if args.mfcc else "random"
    say(
        f"\n{stamp} | {where} | code {commit} | {libs} | {data} {args.dataset}-shaped data, "
        f"{args.repeats} rounds of A B A B, {args.folds} folds × {e1} and {e2} epochs per command; "
        "medians (min–max over the rounds)\n"
    )
    for line in table(rounds, names, e1, e2, args.folds):
        say(line)
    say(
        f"\nsteady = (wall({e2}) − wall({e1})) / ({args.folds} × {e2 - e1}); fixed = wall({e1}) − steady × "
        f"{args.folds} × {e1}; projected: A = start-up + (fixed − start-up) × {PAPER_FOLDS}/{args.folds} + steady "
        f"× {PAPER_FOLDS * PAPER_EPOCHS} (A's graph is built, compiled and evaluated per fold), B = fixed + steady × "
        f"{PAPER_FOLDS * PAPER_EPOCHS} (B's fixed cost per command)."
    )
    if args.folds < (os.cpu_count() or 1):
        say(
            f"note: {args.folds} folds on {os.cpu_count()} cores: B trains one fold per core at once, so its steady "
            "rate here need not be that of a 10-fold run; use --folds >= cores for the projection"
        )


def labelled_printer(fallback: bool):
    """print(), that in fallback mode marks every line: competitor A is then not the authors' code."""

    def mark(line: str) -> str:
        if not fallback or not line or REWRITE_LABEL in line or set(line) <= set("|-"):
            return line  # a table's delimiter row stays bare: anything more would break the Markdown table
        if line.startswith("| "):  # into the first cell, so that the row stays a table row
            first, rest = line[2:].split(" | ", 1)
            return f"| {first} [A = {REWRITE_LABEL}] | {rest}"
        return f"{line}  [A = {REWRITE_LABEL}]"

    def say(text: str = "") -> None:
        for line in text.split("\n"):
            print(mark(line))
        sys.stdout.flush()

    return say


def a_worker(values: list[str]) -> None:
    """Dispatch of the hidden --a-worker: CODE (or - for the fallback) MFCC DATASET FOLDS EPOCHS OUT [LEVELS]."""
    code, mfcc, dataset, folds, epochs, out, *levels = values
    if code == "-":
        return rewrite_worker(Path(mfcc), int(folds), int(epochs), int(levels[0]), Path(out))
    authors_worker(Path(code), Path(mfcc), dataset, int(folds), int(epochs), Path(out))


def training_benchmark(args) -> None:
    """The interleaved rounds, the table, the CSV rows."""
    import importlib.util

    if not all(importlib.util.find_spec(m) for m in ("tensorflow", "tf_keras")):
        sys.exit("competitor A needs TensorFlow and tf-keras: pip install -e .[reference]")
    fallback = not args.authors_code.is_dir()
    say = labelled_printer(fallback)
    if fallback:
        say(f"{args.authors_code} not found: competitor A falls back to tools/keras_reference.py")
    stamp = datetime.now().isoformat(timespec="seconds")  # the run's start: every row of this run carries it
    libs, where, cpu = (
        library_versions(),
        f"{platform.system()} {platform.machine()}, {os.cpu_count()} cores",
        cpu_model(),
    )
    data = "real" if args.mfcc else "random"
    commit = code_version()
    columns = ("round", "competitor", "epochs", "folds", "wall_s", "cpu_s", "startup_s", "peak_memory_mb")

    def keep(row: dict) -> None:
        about = {"date": stamp, "machine": where, "cpu_model": cpu, **libs, "dataset": args.dataset, "data": data}
        about["commit"] = commit
        append_csv(RESULTS, [{**about, **{k: row[k] for k in columns}}], lambda text: None)

    with tempfile.TemporaryDirectory(prefix="bench_vs_authors_") as tmp:
        work = Path(tmp)
        mfcc = args.mfcc or synthetic_features(args.dataset, work)
        names = {key: name for key, (name, _) in competitors(args, mfcc).items()}
        rows = run_rounds(args, mfcc, work, say, keep)
    summary(args, [{**row, "date": stamp} for row in rows], names, say, commit)
    say(f"\nrows appended to {RESULTS.relative_to(REPO)} as each command finished")


def epoch_pair(text: str) -> list[int]:
    pair = sorted({int(v) for v in text.split(",")})
    if len(pair) != 2 or pair[0] < 1:
        raise argparse.ArgumentTypeError("two different epoch counts >= 1, e.g. 30,90")
    return pair


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--epochs", type=epoch_pair, default=[30, 90], help="two epoch counts E1,E2 (default 30,90)")
    ap.add_argument("--repeats", type=int, default=3, help="rounds of A B A B (default 3)")
    ap.add_argument("--folds", type=int, default=2, help="folds per command, of the authors' 10 (default 2)")
    ap.add_argument("--dataset", default="EMODB", help="whose shapes (IEMOCAP: 5,531 x 606 x 39, 10 levels)")
    ap.add_argument("--mfcc", type=Path, help="features from `timnet preprocess` (default: random features)")
    ap.add_argument("--authors-code", type=Path, default=AUTHORS_CODE, help="the authors' Code/ folder")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="a setting for timnet's runs")
    ap.add_argument(
        "--before", type=Path, help="also time timnet from this src/ folder (the code before a change) as B0"
    )
    ap.add_argument("--a-worker", nargs="+", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.a_worker:  # before anything imports timnet (and torch) into competitor A's process
        return a_worker(args.a_worker)
    training_benchmark(args)


if __name__ == "__main__":
    main()
