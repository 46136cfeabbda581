"""Fold models to ONNX graphs: trace, simplify the graph once, and check it against torch before it is kept.

One graph per fold, not one graph of all folds: onnxruntime runs single-fold sessions faster than one graph of
all folds (benchmarks/bench_inference.py). A graph that disagrees with its
torch model by more than `ONNX_TOLERANCE` is never written (and so neither is its model folder).
"""

from __future__ import annotations

import copy
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ..core.errors import TimnetError, require
from ..model.network import TIMNet
from .model_folder import ONNX_DIR, ONNX_INPUT, ONNX_OUTPUTS

ONNX_OPSET = 17
ONNX_TOLERANCE = 1e-5  # max |torch - onnx| over probabilities, and over embeddings relative to their scale


@torch.no_grad()
def absorb_batchnorm(model: TIMNet) -> TIMNet:
    """An inference copy with every BatchNorm folded into the conv before it (eval-mode BN is affine):
    W' = W * g / sqrt(v + eps), b' = (b - m) * g / sqrt(v + eps) + beta. Fewer operations in an ONNX graph;
    equal to the model to float rounding (checked at export)."""
    folded = copy.deepcopy(model).eval()  # nn.Identity in BatchNorm's place: `batch_norm` then passes h through
    for block in [*folded.forward_blocks, *folded.backward_blocks]:
        for conv, name in ((block.conv1, "bn1"), (block.conv2, "bn2")):
            bn = getattr(block, name)
            scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)  # [C_out]
            conv.weight.mul_(scale[:, None, None])
            conv.bias.copy_((conv.bias - bn.running_mean) * scale + bn.bias)
            setattr(block, name, nn.Identity())
    return folded


class InferenceGraph(nn.Module):
    """What one fold's ONNX graph computes: MFCCs [N, T, F] -> (probabilities [N, K], embedding [N, C])."""

    def __init__(self, model: TIMNet):
        super().__init__()
        self.model = model

    def forward(self, mfcc: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.model.classify(mfcc)


def write_onnx(models: dict[str, TIMNet], folder: Path, frames: int) -> dict:
    """Export each fold model (BatchNorm folded) to `onnx/<unit>.onnx`, check each against the torch model,
    and return what the check found (config.json's `onnx`)."""
    ort = require("onnxruntime", "export", "ONNX export (or --no-onnx)")
    require("onnx", "export", "ONNX export (or --no-onnx)")

    (folder / ONNX_DIR).mkdir()
    files, worst = {}, 0.0
    for unit, model in models.items():
        path = folder / ONNX_DIR / f"{unit}.onnx"
        traced = folder / ONNX_DIR / f"{unit}.traced.onnx"
        trace(model, traced, frames)
        optimize_graph(traced, path)
        traced.unlink()
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        worst = max(worst, check_onnx(InferenceGraph(model).eval(), session, frames, model.config.n_mfcc))
        if worst > ONNX_TOLERANCE:
            raise TimnetError(
                f"{unit}: the ONNX graph disagrees with the torch model by {worst:.2e} (> {ONNX_TOLERANCE:.0e}), so "
                "no model folder was written; export with --no-onnx and report this (torch and onnxruntime versions)"
            )
        files[unit] = f"{ONNX_DIR}/{path.name}"
    return {"files": files, "opset": ONNX_OPSET, "outputs": list(ONNX_OUTPUTS), "max_abs_diff": worst}


def trace(model: TIMNet, path: Path, frames: int) -> None:
    """The TorchScript trace of one fold model, BatchNorm folded; batch and frames stay dynamic."""
    with warnings.catch_warnings():  # the TorchScript-based exporter is deprecated in favour of dynamo (onnxscript)
        warnings.simplefilter("ignore")
        torch.onnx.export(
            InferenceGraph(absorb_batchnorm(model)).eval(),
            (torch.zeros(2, frames, model.config.n_mfcc),),
            str(path),
            input_names=[ONNX_INPUT],
            output_names=list(ONNX_OUTPUTS),
            dynamic_axes={ONNX_INPUT: {0: "batch", 1: "frames"}, **{k: {0: "batch"} for k in ONNX_OUTPUTS}},
            opset_version=ONNX_OPSET,
            dynamo=False,
        )


def optimize_graph(traced: Path, out: Path) -> None:
    """The traced graph, simplified once at export: onnxruntime's portable (`basic`) optimisations — constant
    folding, and its transpose optimizer, which cancels the transposes between neighbouring convs — then every
    zero `Pad` of the time axis folded into the `Conv` it feeds (onnxruntime does not fold these itself; a `Pad`
    per conv cost a quarter of the run time). Standard ONNX operators and opset only; checked against torch
    afterwards."""
    import onnx
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    options.optimized_model_filepath = str(out)
    ort.InferenceSession(str(traced), options, providers=["CPUExecutionProvider"])
    model = onnx.load(str(out))
    fold_pads(model.graph)
    used = {name for node in model.graph.node for name in node.input}
    for tensor in [t for t in model.graph.initializer if t.name not in used]:
        model.graph.initializer.remove(tensor)
    domains = {node.domain for node in model.graph.node} | {""}  # onnxruntime declares its own domains; none used
    for opset in [o for o in model.opset_import if o.domain not in domains]:
        model.opset_import.remove(opset)
    onnx.save(model, str(out))


def fold_pads(graph) -> None:
    """Fold each constant zero `Pad` of the time axis ([B, C, T] input) into the only `Conv` it feeds."""
    from onnx import helper, numpy_helper

    constants = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
    users: dict[str, list] = {}
    for node in graph.node:
        for name in node.input:
            users.setdefault(name, []).append(node)
    for pad in [n for n in graph.node if n.op_type == "Pad"]:
        mode = next((a.s for a in pad.attribute if a.name == "mode"), b"constant")
        value = pad.input[2] if len(pad.input) > 2 else ""
        consumers = users.get(pad.output[0], [])
        if (
            mode != b"constant"
            or pad.input[1] not in constants
            or (value and (value not in constants or np.any(constants[value] != 0)))
            or len(consumers) != 1
            or consumers[0].op_type != "Conv"
        ):
            continue
        begin_b, begin_c, begin_t, end_b, end_c, end_t = constants[pad.input[1]].tolist()
        conv = consumers[0]
        own = next((a for a in conv.attribute if a.name == "pads"), None)
        if begin_b or begin_c or end_b or end_c or (own is not None and any(own.ints)):
            continue
        if own is not None:
            conv.attribute.remove(own)
        conv.attribute.append(helper.make_attribute("pads", [begin_t, end_t]))
        conv.input[0] = pad.input[0]
        graph.node.remove(pad)


def check_onnx(reference: InferenceGraph, session, frames: int, n_mfcc: int) -> float:
    """Largest disagreement of onnxruntime with the torch model (probabilities; embeddings relative to their
    scale), on MFCC-scaled random batches of several sizes (a graph must not have frozen the batch size)."""
    rng = np.random.default_rng(0)
    worst = 0.0
    for n, t in ((1, frames), (7, frames), (64, frames), (3, frames // 2 + 1)):  # nor the number of frames
        x = (rng.standard_normal((n, t, n_mfcc)) * 20).astype(np.float32)
        with torch.no_grad():
            want = [out.numpy() for out in reference(torch.from_numpy(x))]
        try:
            got = session.run(list(ONNX_OUTPUTS), {ONNX_INPUT: x})
        except Exception as err:  # e.g. a shape frozen at export time: onnxruntime's error types vary
            raise TimnetError(f"the exported ONNX graph fails on a batch of {n} x {t} frames: {err}") from None
        for name, w, g in zip(ONNX_OUTPUTS, want, got):
            scale = max(1.0, float(np.abs(w).max())) if name == "embedding" else 1.0
            worst = max(worst, float(np.abs(w - g).max()) / scale)
    return worst
