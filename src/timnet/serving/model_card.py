"""The model card: config.json's description of an exported model, and the README.md written from it."""

from __future__ import annotations

from dataclasses import asdict
from datetime import datetime, timezone

from ..core.config import Config
from ..core.metrics import METRICS, fold_statistics
from ..core.version import __version__
from ..model.network import TIMNet
from .model_folder import FORMAT


def card_data(config: Config, models: dict[str, TIMNet], folds: list[dict], provenance: dict) -> dict:
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
        "inputs": {"normalize": config.train.normalize, "mfcc": inputs_text(config.train.normalize)},
        "protocol": config.train.protocol,
        "checkpoint": config.train.checkpoint_label,
        "optimistic": config.train.optimistic,
        "units": list(models),
        "folds": folds,
        "metrics": metrics,
        "provenance": provenance,
        "config": config.to_dict(),
    }


def inputs_text(normalize: str) -> str:
    """What the fold models (their ONNX graphs too) read, and how `timnet predict` makes it from audio."""
    if normalize == "none":
        return "MFCCs [N, T, F] as computed by the feature recipe (`timnet predict` computes them from audio)"
    return (
        "speaker-normalised MFCCs [N, T, F] (train.normalize = speaker): each coefficient minus its mean, divided by "
        "its std (1 where it never varies), both over all frames of all utterances of ONE speaker; `timnet predict` "
        "takes the files given together as one speaker (give several of one speaker), while a caller of the ONNX "
        "graphs or `predict_proba` normalises per speaker first (`PortableModel.inputs`)"
    )


def percent(metrics: dict, key: str) -> str:
    """`mean ± std` over folds when measured, else the single published number."""
    mean, std = metrics.get(f"{key}_mean"), metrics.get(f"{key}_std")
    if mean is None:
        return f"{metrics.get(key, float('nan')):.2f}"
    return f"{mean:.2f} ± {std:.2f}"


def caveats(card: dict) -> list[str]:
    """What a reader must know before trusting the numbers."""
    found = []
    if card["optimistic"]:
        found.append(
            "the checkpoint was chosen by **test** accuracy (the paper's protocol): these numbers are optimistic"
        )
    if card["protocol"] == "random":
        found.append("random folds share speakers between training and test: expect less on new speakers")
    if card["provenance"]["kind"] == "authors-weights":
        found.append("the numbers are the authors' as published, not measured by this export")
    return found


def origin(card: dict) -> str:
    p = card["provenance"]
    if p["kind"] == "run":
        return f"trained by timnet {card['timnet_version']} (run `{p['run_id']}`)"
    if p["kind"] == "authors-weights":
        return f"the authors' published weights (`{p['source']}`, {p['paper']})"
    return f"models of kind `{p['kind']}`"


def model_card(card: dict) -> str:
    """README.md of a model folder: data, protocol, numbers with their caveats, intended use and limits."""
    cfg, m, f = card["config"], card["metrics"], card["features"]
    protocol = (
        "random k-fold splits (the authors' protocol: the same speakers appear in training and test)"
        if card["protocol"] == "random"
        else "speaker-independent folds (no test speaker is seen in training)"
    )
    seconds = f["signal_length"] / f["sample_rate"]
    lines = [
        f"# TIM-Net speech emotion recognition: {cfg['dataset']['name']} ({len(card['units'])} fold model(s))",
        "",
        f"TIM-Net (Ye et al., ICASSP 2023), {origin(card)}. Format `{card['format']}`; load with "
        '`timnet.load_model("<this folder>")` or `timnet predict --model <this folder> audio.wav`.',
        "",
        "## Data and protocol",
        f"- Corpus: {cfg['dataset']['name']}, classes: {', '.join(card['classes'])}.",
        f"- Protocol: {protocol}; {cfg['train']['folds']} folds, checkpoint: {card['checkpoint']}.",
        f"- Features: {f['n_mfcc']} MFCCs of {seconds:.2f} s of audio at "
        f"{f['sample_rate']} Hz (resampler {f['res_type']}), longer files centre-cropped, shorter zero-padded.",
        f"- Model inputs (the ONNX graphs' `mfcc` too): {inputs_text(cfg['train'].get('normalize', 'none'))}.",
        "",
        "## Numbers",
        f"{m['source'].capitalize()}: WAR {percent(m, 'war')} %, UAR {percent(m, 'uar')} %"
        + (f", macro-F1 {percent(m, 'f1')} %" if "f1_mean" in m else "")
        + (" (mean ± sample std over folds)." if "war_mean" in m else "."),
        *[f"- Caveat: {c}." for c in caveats(card)],
        "",
        "## Intended use and limits",
        "- Research on speech emotion recognition; a baseline to compare with, not a decision system.",
        "- Trained on acted speech from few speakers in one language and recording setup: expect a domain shift on "
        "your own recordings (microphones, spontaneous speech, other languages) and check on labelled data first.",
        f"- One label per {seconds:.2f} s window; for longer audio use "
        "`timnet predict --model <dir> --timeline long.wav`.",
        "- Emotion labels are the corpus' categories; do not use to judge people.",
        "",
    ]
    return "\n".join(lines)
