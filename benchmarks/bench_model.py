"""Training-step speed of TIM-Net: the shipped GEMM causal conv, its products through torch's BLAS (MKL on x86) or
numpy's (OpenBLAS; `train.blas`, which also runs the CPU kernel, each block's elementwise passes fused:
src/timnet/accel/cpu_kernel.py; "unfused" shows that lever alone), vs the channels-first Conv1d formulation.

    python benchmarks/bench_model.py [--threads 1] [--epochs 3] [--repeat 3]

All variants share one model's parameters and run the same Adam epochs on EMO-DB shapes (481 utterances
x 188 frames x 39 MFCCs, batch 64), interleaved, so machine load hits all alike. The competitor is the
textbook formulation (F.pad + F.conv1d on [B, C, T], nn.Dropout1d), as `CausalConv1d` in
src/timnet/model/network.py computes its convolution.
Prints seconds per epoch (median) and the ratios, and what `train.blas = auto` chooses on this machine.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F

from timnet import load_config
from timnet.accel.accelerate import accelerate
from timnet.accel.blas import limit_threads, measure
from timnet.model.network import TIMNet, TIMNetConfig


def conv1d_levels(model: TIMNet, x: torch.Tensor) -> torch.Tensor:
    """model.levels computed channels-first with F.conv1d: [B, T, F] -> [B, C, L]."""

    def conv(layer, h):  # [B, C_in, T] -> [B, C_out, T], causal
        return F.conv1d(
            F.pad(h, ((layer.kernel_size[0] - 1) * layer.dilation[0], 0)),
            layer.weight,
            layer.bias,
            dilation=layer.dilation[0],
        )

    def block(b, h):
        g = F.dropout1d(F.relu(b.bn1(conv(b.conv1, h))), b.drop.p, b.training)
        g = F.dropout1d(F.relu(b.bn2(conv(b.conv2, g))), b.drop.p, b.training)
        return h * torch.sigmoid(g)

    x = x.transpose(1, 2)
    fwd, bwd = conv(model.forward_in, x), conv(model.backward_in, x.flip(-1))
    pooled = []
    for f_block, b_block in zip(model.forward_blocks, model.backward_blocks):
        fwd, bwd = block(f_block, fwd), block(b_block, bwd)
        pooled.append((fwd + bwd).mean(dim=-1))
    return torch.stack(pooled, dim=-1)


def epoch_seconds(model: TIMNet, competitor, x: torch.Tensor, y: torch.Tensor, epochs: int) -> float:
    """Seconds per epoch of `competitor` = (prepare the model once, its levels per batch)."""
    prepare, levels = competitor
    prepare()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3, betas=(0.93, 0.98))
    model.train()
    started = time.perf_counter()
    for _ in range(epochs):
        for i in range(0, len(x), 64):
            logits = model.classifier(levels(x[i : i + 64]) @ model.level_weights)
            loss = F.cross_entropy(logits, y[i : i + 64], label_smoothing=0.1)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
    return (time.perf_counter() - started) / epochs


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--epochs", type=int, default=3, help="per timing")
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    limit_threads(args.threads)
    torch.manual_seed(0)
    x, y = torch.randn(481, 188, 39), torch.randint(0, 7, (481,))
    model = TIMNet(TIMNetConfig.from_config(load_config("EMODB")))
    with torch.no_grad():
        gap = (model.eval().levels(x[:64]) - conv1d_levels(model, x[:64])).abs().max().item()

    def gemm(blas, fuse=True):  # the fast paths put in once per timing, as a unit does once
        return lambda: accelerate(model, blas, kernel=fuse), lambda xb: model.levels(xb)

    competitors = {
        "gemm, torch BLAS": gemm("torch"),
        "gemm, numpy BLAS": gemm("numpy"),
        "numpy BLAS unfused": gemm("numpy", fuse=False),
        "conv1d": (lambda: None, lambda xb: conv1d_levels(model, xb)),
    }
    times = {name: [] for name in competitors}
    for competitor in competitors.values():  # warm-up
        epoch_seconds(model, competitor, x, y, 1)
    for _ in range(args.repeat):
        for name, competitor in competitors.items():
            times[name].append(epoch_seconds(model, competitor, x, y, args.epochs))
    median = {name: statistics.median(t) for name, t in times.items()}
    print(f"threads {args.threads}, {args.epochs} epochs x {args.repeat}; max |levels difference| {gap:.1e}")
    for name, seconds in median.items():
        print(f"  {name:18s} {seconds:.3f} s/epoch  ({median['conv1d'] / seconds:.2f}x conv1d)")
    print(f"  numpy BLAS / torch BLAS: {median['gemm, torch BLAS'] / median['gemm, numpy BLAS']:.2f}x faster")
    print(f"  the CPU kernel (cpu_kernel.py): {median['numpy BLAS unfused'] / median['gemm, numpy BLAS']:.2f}x faster")
    print(f"  train.blas = auto chooses here: {measure()}")


if __name__ == "__main__":
    main()
