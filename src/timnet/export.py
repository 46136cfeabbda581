"""A model folder that carries everything prediction needs: `timnet export`.

    <DIR>/config.json        format, architecture, classes, the complete feature recipe, protocol and checkpoint
                             policy, per-fold and mean ± std metrics, provenance, timnet version, ONNX check
    <DIR>/model.safetensors  every fold model's weights, keys `<unit>.<parameter>` (`fold_3.classifier.weight`)
    <DIR>/onnx/<unit>.onnx   one graph per fold model (BatchNorm and the causal padding folded into the convs):
                             mfcc [N, T, F] -> probabilities [N, K], embedding [N, C]
    <DIR>/README.md          the model card

One graph per fold, not one graph of all folds: measured here (benchmarks/bench_vs_keras.py --inference),
onnxruntime ran ten single-fold sessions 1.7x faster than one ten-fold graph. Every graph is checked against
its torch model before the folder is written; a graph that disagrees by more than `ONNX_TOLERANCE` is never
written, and neither is the folder.
"""

from __future__ import annotations

import json
import shutil
import tempfile
import warnings
from dataclasses import asdict
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch
from torch import nn

from . import __version__
from .config import Config, load_config
from .errors import TimnetError
from .keras_weights import load_fold_models, seed_from_name
from .metrics import METRICS, fold_statistics
from .model import TIMNet, TIMNetConfig, fold_batchnorm
from .runs import load_result, load_run, read_record, run_dir

FORMAT = "timnet-model/1"
ONNX_OPSET = 17
ONNX_TOLERANCE = 1e-5  # max |torch - onnx| over probabilities, and over embeddings relative to their scale
ONNX_OUTPUTS = ("probabilities", "embedding")


class InferenceGraph(nn.Module):
    """What one fold's ONNX graph computes: MFCCs [N, T, F] -> (probabilities [N, K], embedding [N, C])."""

    def __init__(self, model: TIMNet):
        super().__init__()
        self.model = model

    def forward(self, mfcc: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        emb = self.model.embed(mfcc)
        return torch.softmax(self.model.classifier(emb), dim=-1), emb


def export_run(
    run: str | Path,
    out: Path,
    models_root: Path = Path("Models"),
    fold: int | None = None,
    seed: int | None = None,
    onnx: bool = True,
) -> Path:
    """Export a training run's fold models (or one fold's, one seed's) to a model folder."""
    path = run_dir(run, models_root)
    record = read_record(path)
    fold_models = load_run(path, models_root, fold, seed)
    results = {p.stem: load_result(p) for p in sorted(path.glob("fold_*.pt")) if p.stem in fold_models.models}
    folds = [
        {"unit": unit, "fold": r.fold, "seed": r.seed, "epoch": r.epoch, **{m: r.metrics[m] for m in METRICS}}
        for unit, r in results.items()
    ]
    provenance = {
        "kind": "run",
        "run_id": record["run_id"],
        "created": record["created"],
        "mfcc_sha256": record["mfcc_sha256"],
        "device": record["device"],
    }
    return write_model_folder(out, fold_models.config, fold_models.models, folds, provenance, onnx)


def export_weights(weights: Path, dataset: str, out: Path, fold: int | None = None, onnx: bool = True) -> Path:
    """Export the authors' published fold weights (their zip, folder or .hdf5) to a model folder."""
    config = load_config(dataset, {"train.checkpoint": "best-test"})  # their checkpoints: best epoch on the test fold
    found = load_fold_models(Path(weights), TIMNetConfig.from_config(config))
    models = {f"fold_{k}": m for k, m in found.items() if fold is None or k == fold}
    if not models:
        raise TimnetError(f"{weights}: no weights for fold {fold} (it has folds {sorted(found)})")
    seed = seed_from_name(Path(weights))
    folds = [{"unit": u, "fold": int(u.split("_")[1]), "seed": seed} for u in models]
    provenance = {
        "kind": "authors-weights",
        "source": Path(weights).name,
        "paper": "Ye et al., TIM-Net, ICASSP 2023",
        "note": "the authors' published fold weights; metrics are theirs as published, not re-measured here",
    }
    return write_model_folder(out, config, models, folds, provenance, onnx)


def write_model_folder(
    out: Path, config: Config, models: dict[str, TIMNet], folds: list[dict], provenance: dict, onnx: bool = True
) -> Path:
    """Write the folder in a temporary sibling and rename it into place: all of it or nothing, never over `out`."""
    out = Path(out)
    if out.exists():
        raise TimnetError(f"{out} already exists — an exported model is never overwritten; choose another --out")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        from safetensors.torch import save_file

        tensors = {f"{unit}.{k}": v.contiguous() for unit, m in models.items() for k, v in m.state_dict().items()}
        save_file(tensors, tmp / "model.safetensors", metadata={"format": FORMAT})
        card = model_card_data(config, models, folds, provenance)
        if onnx:
            card["onnx"] = write_onnx(models, tmp, config.features.frames)
        (tmp / "config.json").write_text(json.dumps(card, indent=2, default=str) + "\n")
        (tmp / "README.md").write_text(model_card(card))
        tmp.rename(out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out


def model_card_data(config: Config, models: dict[str, TIMNet], folds: list[dict], provenance: dict) -> dict:
    """config.json: what a loader needs (architecture, classes, recipe) and what a reader needs (numbers, origin)."""
    architecture = next(iter(models.values())).config.to_dict()
    measured = [f for f in folds if all(m in f for m in METRICS)]
    if measured:
        import pandas as pd

        metrics = {"source": "test folds of the run", **fold_statistics(pd.DataFrame(measured))}
    else:
        p = config.published
        metrics = {"source": "published by the authors", "war": p.paper_war, "uar": p.paper_uar}
    return {
        "format": FORMAT,
        "timnet_version": __version__,
        "exported": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "architecture": architecture,
        "classes": list(config.dataset.classes),
        "features": {**asdict(config.features), "frames": config.features.frames},
        "protocol": config.train.protocol,
        "checkpoint": config.train.checkpoint_label,
        "optimistic": config.train.optimistic,
        "units": list(models),
        "folds": folds,
        "metrics": metrics,
        "provenance": provenance,
        "config": config.to_dict(),
    }


def write_onnx(models: dict[str, TIMNet], folder: Path, frames: int) -> dict:
    """Export each fold model (BatchNorm folded) to `onnx/<unit>.onnx`, check each against the torch model,
    and return what the check found."""
    import onnxruntime as ort

    (folder / "onnx").mkdir()
    files, worst = {}, 0.0
    for unit, model in models.items():
        path = folder / "onnx" / f"{unit}.onnx"
        n_mfcc = model.config.n_mfcc
        traced = folder / "onnx" / f"{unit}.traced.onnx"
        with warnings.catch_warnings():  # the TorchScript-based exporter is deprecated in favour of dynamo (onnxscript)
            warnings.simplefilter("ignore")
            torch.onnx.export(
                InferenceGraph(fold_batchnorm(model)).eval(),
                (torch.zeros(2, frames, n_mfcc),),
                str(traced),
                input_names=["mfcc"],
                output_names=list(ONNX_OUTPUTS),
                dynamic_axes={"mfcc": {0: "batch", 1: "frames"}, **{k: {0: "batch"} for k in ONNX_OUTPUTS}},
                opset_version=ONNX_OPSET,
                dynamo=False,
            )
        optimize_graph(traced, path)
        traced.unlink()
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        worst = max(worst, check_onnx(InferenceGraph(model).eval(), session, frames, n_mfcc))
        if worst > ONNX_TOLERANCE:
            raise TimnetError(
                f"{unit}: the ONNX graph disagrees with the torch model by {worst:.2e} (> {ONNX_TOLERANCE:.0e}), so "
                "no model folder was written; export with --no-onnx and report this (torch and onnxruntime versions)"
            )
        files[unit] = f"onnx/{path.name}"
    return {"files": files, "opset": ONNX_OPSET, "outputs": list(ONNX_OUTPUTS), "max_abs_diff": worst}


def optimize_graph(traced: Path, out: Path) -> None:
    """The traced graph, simplified once at export: onnxruntime's portable (`basic`) optimisations — constant
    folding, and its transpose optimizer, which cancels the transposes between neighbouring convs — then every
    zero `Pad` of the time axis folded into the `Conv` it feeds (onnxruntime does not fold these itself; a `Pad`
    per conv cost a quarter of the run time). Standard ONNX operators and opset only; checked against torch
    afterwards."""
    import onnx
    import onnxruntime as ort
    from onnx import helper, numpy_helper

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    options.optimized_model_filepath = str(out)
    ort.InferenceSession(str(traced), options, providers=["CPUExecutionProvider"])
    model = onnx.load(str(out))
    graph = model.graph
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
        begin_b, begin_c, begin_t, end_b, end_c, end_t = constants[pad.input[1]].tolist()  # [B, C, T] input
        conv = consumers[0]
        own = next((a for a in conv.attribute if a.name == "pads"), None)
        if begin_b or begin_c or end_b or end_c or (own is not None and any(own.ints)):
            continue
        if own is not None:
            conv.attribute.remove(own)
        conv.attribute.append(helper.make_attribute("pads", [begin_t, end_t]))
        conv.input[0] = pad.input[0]
        graph.node.remove(pad)
    used = {name for node in graph.node for name in node.input}
    for tensor in [t for t in graph.initializer if t.name not in used]:
        graph.initializer.remove(tensor)
    domains = {node.domain for node in graph.node} | {""}  # onnxruntime declares its own domains; none is used
    for opset in [o for o in model.opset_import if o.domain not in domains]:
        model.opset_import.remove(opset)
    onnx.save(model, str(out))


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
            got = session.run(list(ONNX_OUTPUTS), {"mfcc": x})
        except Exception as err:  # e.g. a shape frozen at export time: onnxruntime's error types vary
            raise TimnetError(f"the exported ONNX graph fails on a batch of {n} x {t} frames: {err}") from None
        for name, w, g in zip(ONNX_OUTPUTS, want, got):
            scale = max(1.0, float(np.abs(w).max())) if name == "embedding" else 1.0
            worst = max(worst, float(np.abs(w - g).max()) / scale)
    return worst


def _percent(metrics: dict, key: str) -> str:
    mean, std = metrics.get(f"{key}_mean"), metrics.get(f"{key}_std")
    if mean is None:
        return f"{metrics.get(key, float('nan')):.2f}"
    return f"{mean:.2f} ± {std:.2f}"


def model_card(card: dict) -> str:
    """README.md of a model folder: data, protocol, numbers with their caveats, intended use and limits."""
    cfg, m, p, f = card["config"], card["metrics"], card["provenance"], card["features"]
    origin = {
        "run": lambda: f"trained by timnet {card['timnet_version']} (run `{p['run_id']}`)",
        "authors-weights": lambda: f"the authors' published weights (`{p['source']}`, {p['paper']})",
    }.get(p["kind"], lambda: f"models of kind `{p['kind']}`")()
    protocol = (
        "random k-fold splits (the authors' protocol: the same speakers appear in training and test)"
        if card["protocol"] == "random"
        else "speaker-independent folds (no test speaker is seen in training)"
    )
    caveats = []
    if card["optimistic"]:
        caveats.append(
            "the checkpoint was chosen by **test** accuracy (the paper's protocol): these numbers are optimistic"
        )
    if card["protocol"] == "random":
        caveats.append("random folds share speakers between training and test: expect less on new speakers")
    if p["kind"] == "authors-weights":
        caveats.append("the numbers are the authors' as published, not measured by this export")
    lines = [
        f"# TIM-Net speech emotion recognition: {cfg['dataset']['name']} ({len(card['units'])} fold model(s))",
        "",
        f"TIM-Net (Ye et al., ICASSP 2023), {origin}. Format `{card['format']}`; load with "
        '`timnet.load_model("<this folder>")` or `timnet predict --model <this folder> audio.wav`.',
        "",
        "## Data and protocol",
        f"- Corpus: {cfg['dataset']['name']}, classes: {', '.join(card['classes'])}.",
        f"- Protocol: {protocol}; {cfg['train']['folds']} folds, checkpoint: {card['checkpoint']}.",
        f"- Features: {f['n_mfcc']} MFCCs of {f['signal_length'] / f['sample_rate']:.2f} s of audio at "
        f"{f['sample_rate']} Hz (resampler {f['res_type']}), longer files centre-cropped, shorter zero-padded.",
        "",
        "## Numbers",
        f"{m['source'].capitalize()}: WAR {_percent(m, 'war')} %, UAR {_percent(m, 'uar')} %"
        + (f", macro-F1 {_percent(m, 'f1')} %" if "f1_mean" in m else "")
        + (" (mean ± sample std over folds)." if "war_mean" in m else "."),
        *[f"- Caveat: {c}." for c in caveats],
        "",
        "## Intended use and limits",
        "- Research on speech emotion recognition; a baseline to compare with, not a decision system.",
        "- Trained on acted speech from few speakers in one language and recording setup: expect a domain shift on "
        "your own recordings (microphones, spontaneous speech, other languages) and check on labelled data first.",
        f"- One label per {f['signal_length'] / f['sample_rate']:.2f} s window; for longer audio use "
        "`timnet predict --model <dir> --timeline long.wav`.",
        "- Emotion labels are the corpus' categories; do not use to judge people.",
        "",
    ]
    return "\n".join(lines)


def push_to_hub(folder: Path, repo_id: str, token: str | None = None, private: bool = False) -> str:
    """Upload an exported folder to the Hugging Face Hub (creating the model repo); returns its URL."""
    from huggingface_hub import HfApi

    folder = Path(folder)
    if (
        not (folder / "config.json").is_file()
        or json.loads((folder / "config.json").read_text()).get("format") != FORMAT
    ):
        raise TimnetError(f"{folder}: not an exported timnet model folder — run `timnet export` first")
    api = HfApi(token=token)
    api.create_repo(repo_id, repo_type="model", private=private, exist_ok=True)
    api.upload_folder(folder_path=str(folder), repo_id=repo_id, repo_type="model")
    return f"https://huggingface.co/{repo_id}"
