"""Training throughput on one device: one unit at a time vs packed units (`train.pack`), EMO-DB and IEMOCAP shapes.

    python benchmarks/bench_gpu.py [--device cuda|mps|cpu] [--pack 10] [--seconds 20] [--threads T]

For each shape (EMO-DB: 535 x 188 x 39, 8 levels; IEMOCAP: 5,531 x 606 x 39, 10 levels; batch 64, random
features: speed does not depend on the values) and each way of training, Adam steps with dropout are timed for
`--seconds` after a warm-up, interleaved (one, packed, one, packed): unit-steps per second (a pack's step counts
its U units), peak device memory, and the projected paper protocol (10 folds x 500 epochs x the shape's steps per
epoch, per-epoch evaluation and state saving not included). "captured" (`train.capture`: the packed step
recorded as a CUDA graph by `capture.CapturedSteps`, as `timnet train` does) runs on CUDA only. The authors report
60 ms per step on an RTX 3090: ratios to that are printed. Rows are appended to benchmarks/results/bench_gpu.csv.
Under 8 minutes with the defaults.
"""

from __future__ import annotations

import argparse
import resource
import statistics
import sys
import time
from datetime import datetime
from pathlib import Path

import torch

from timnet import load_config
from timnet.training.device_timing import sync, train_step

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from bench_common import append_csv, code_version, cpu_model  # noqa: E402

RESULTS = HERE / "results" / "bench_gpu.csv"
SHAPES = {"EMODB": 535, "IEMOCAP": 5531}  # utterances; frames and levels from the dataset's config
AUTHORS_STEP_SECONDS = 0.060  # the paper's RTX 3090 figure


def steps_per_second(step, device, seconds: float) -> float:
    calls, started = 0, time.perf_counter()
    while time.perf_counter() - started < seconds:
        step()
        calls += 1
    sync(device)
    return calls / (time.perf_counter() - started)


def peak_memory(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 1e9
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6  # Linux: kB -> GB


def measure(dataset: str, device: torch.device, pack: int, seconds: float, rounds: int) -> list[dict]:
    cfg = load_config(dataset, {"train.recompute": "off"})  # the step's speed, not activation checkpointing's
    ways = {
        "one unit at a time": (train_step(cfg, device, 1, capture=False), 1),
        f"packed x{pack}": (train_step(cfg, device, pack, capture=False), pack),
    }
    if device.type == "cuda":
        ways[f"packed x{pack}, captured"] = (train_step(cfg, device, pack, capture=True), pack)
    rates = {name: [] for name in ways}
    for step, _ in ways.values():  # warm-up (and compile)
        for _ in range(3):
            step()
    for _ in range(rounds):
        for name, (step, units) in ways.items():
            rates[name].append(steps_per_second(step, device, seconds / rounds) * units)
    per_epoch = -(-int(SHAPES[dataset] * 0.9) // 64)  # training steps of one fold-epoch
    rows = []
    for name, r in rates.items():
        unit_steps = statistics.median(r)
        rows.append(
            {
                "dataset": dataset,
                "way": name,
                "unit_steps_per_s": round(unit_steps, 2),
                "x_authors_60ms": round(unit_steps * AUTHORS_STEP_SECONDS, 2),
                "paper_protocol_min": round(10 * 500 * per_epoch / unit_steps / 60, 1),
                "peak_memory_gb": round(peak_memory(device), 2),
            }
        )
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--pack", type=int, default=10, help="units per pack (10 = a 10-fold run)")
    ap.add_argument("--seconds", type=float, default=20.0, help="timed seconds per way and shape")
    ap.add_argument("--rounds", type=int, default=2, help="interleaved rounds within those seconds")
    ap.add_argument("--threads", type=int, help="CPU threads (default: torch's)")
    ap.add_argument("--datasets", default="EMODB,IEMOCAP")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else cpu_model()
    print(f"device: {args.device} ({name}), torch {torch.__version__}, threads {torch.get_num_threads()}")
    rows = [
        row
        for dataset in args.datasets.split(",")
        for row in measure(dataset, device, args.pack, args.seconds, args.rounds)
    ]
    print("| dataset | way | unit-steps/s | × authors' 60 ms step | paper protocol (min) | peak memory (GB) |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        print("| " + " | ".join(str(v) for v in r.values()) + " |")
    stamp = datetime.now().isoformat(timespec="seconds")
    append_csv(
        RESULTS, [{"date": stamp, "device": args.device, "name": name, "commit": code_version(), **r} for r in rows]
    )


if __name__ == "__main__":
    main()
