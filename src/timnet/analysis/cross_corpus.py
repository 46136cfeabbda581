"""Cross-corpus evaluation: a trained model on a corpus it never saw (`timnet evaluate --model M --dataset B`).

The target audio gets the MODEL's feature recipe (its rate, signal length and MFCC settings), never the target
config's. Target labels are mapped onto the model's classes by emotion name (or `--map calm=neutral`: target class
= model class; `--map calm=` leaves a class out); only the classes both share are scored: the model's probabilities
of the other classes are dropped and the rest renormalised. Scores are those of the fold models' averaged
probabilities (what `timnet predict` says); each fold model's own are in the workbook too. A model trained with
`train.normalize = speaker` reads the target's MFCCs normalised per speaker of the TARGET corpus (its own speakers'
statistics, as a test speaker's in training).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import numpy as np
import pandas as pd

from ..core.atomic import unique_path
from ..core.config import Config, load_config
from ..core.errors import TimnetError
from ..core.metrics import METRICS, confusion, scores
from ..core.report import append_summary, config_sheet, write_workbook
from ..data.corpora import build_manifest
from ..data.feature_files import FeatureSet, load_features, read_feature_record
from ..data.mfcc_extraction import extract_manifest
from ..data.speaker_normalization import model_inputs
from ..serving.loading import load_model
from ..serving.portable import PortableModel

# Spellings of one emotion that corpora use; matching is by these names, case-insensitive.
SYNONYMS = {"anger": "angry", "happiness": "happy", "joy": "happy", "sadness": "sad", "fearful": "fear"}
SYNONYMS |= {"surprised": "surprise", "disgusted": "disgust", "boredom": "bored"}


def _name(label: str) -> str:
    return SYNONYMS.get(label.lower(), label.lower())


def parse_maps(items: list[str]) -> dict[str, str]:
    """`["calm=neutral", "surprise="]` -> {"calm": "neutral", "surprise": ""} (the CLI's repeatable --map)."""
    pairs = {}
    for item in items:
        target, sep, model = item.partition("=")
        if not sep or not target.strip():
            raise TimnetError(f"--map {item!r}: expected TARGET_CLASS=MODEL_CLASS, e.g. --map calm=neutral")
        pairs[target.strip()] = model.strip()
    return pairs


def class_mapping(model_classes: list[str], target_classes: list[str], explicit: dict[str, str] | None = None):
    """{target class: model class} for the target classes that have one (explicit first, then by name)."""
    explicit = dict(explicit or {})
    for target, model in explicit.items():
        if target not in target_classes:
            raise TimnetError(
                f"--map {target}={model}: {target!r} is not a class of the target corpus ({', '.join(target_classes)})"
            )
        if model and model not in model_classes:
            raise TimnetError(
                f"--map {target}={model}: {model!r} is not a class of the model ({', '.join(model_classes)})"
            )
    by_name = {_name(c): c for c in model_classes}
    mapping = {t: explicit.get(t, by_name.get(_name(t), "")) for t in target_classes}
    return {t: m for t, m in mapping.items() if m}


def class_table(mapping: dict[str, str], model_classes: list[str], target_classes: list[str], counts) -> pd.DataFrame:
    """The shared classes and what was left out, one row per target class and per model class without data."""
    rows = [
        {
            "target class": t,
            "model class": mapping.get(t, ""),
            "utterances": int(counts.get(t, 0)),
            "scored": t in mapping,
            "note": "" if t in mapping else "no model class: utterances left out",
        }
        for t in target_classes
    ]
    rows += [
        {
            "target class": "",
            "model class": m,
            "utterances": 0,
            "scored": False,
            "note": "not in the target corpus: its probability is dropped, the rest renormalised",
        }
        for m in model_classes
        if m not in mapping.values()
    ]
    return pd.DataFrame(rows)


@dataclass
class CrossCorpus:
    """A model scored on another corpus: over the shared classes (`shared`, in the model's order)."""

    source: str
    source_dataset: str
    target: Config
    data: Path
    shared: list[str]
    classes: pd.DataFrame
    predictions: pd.DataFrame
    overall: dict[str, float]
    confusion: pd.DataFrame
    fold_models: pd.DataFrame
    model_config: Config
    skipped: list[tuple[str, str]]

    def lines(self) -> list[str]:
        """The report as `timnet evaluate --model` prints it."""
        o = self.overall
        return [
            f"cross-corpus {self.source_dataset} -> {self.target.dataset.name}: model {self.source}",
            self.classes.to_string(index=False),
            self.fold_models.to_string(index=False, float_format=lambda v: f"{v:.2f}"),
            f"on {len(self.predictions)} {self.target.dataset.name} utterances, {len(self.shared)} shared classes "
            f"({', '.join(self.shared)}), fold models' probabilities averaged: WAR {o['war']:.2f} %  "
            f"UAR {o['uar']:.2f} %  macro-F1 {o['f1']:.2f} %",
        ]


def target_features(
    model: PortableModel, target: Config, data: Path, workers=None, skip_bad=False, progress=False
) -> tuple[FeatureSet, list[tuple[str, str]]]:
    """The target corpus with the model's recipe: from audio, or an MFCC .npy made with the same settings."""
    settings, data = model.config.features, Path(data)
    if data.suffix == ".npy":
        record = read_feature_record(data) or {}
        if record.get("settings") != dataclasses.asdict(settings):
            raise TimnetError(
                f"{data}: not made with the model's feature recipe (sample rate, signal length, MFCC settings) — "
                "give the corpus folder instead, its features are then computed with the model's recipe"
            )
        return load_features(data, target.dataset.classes), []
    manifest, skipped = build_manifest(data, target.dataset, skip_bad=skip_bad)
    x, good, bad = extract_manifest(manifest, settings, workers, skip_bad, progress)
    y = good.class_index.to_numpy().astype(np.int64)
    return FeatureSet(x, y, good, list(target.dataset.classes)), skipped + bad


def _restricted(probs: np.ndarray, columns: list[int]) -> np.ndarray:
    kept = probs[..., columns]
    return kept / np.maximum(kept.sum(-1, keepdims=True), 1e-12)


def shared_classes(model_classes: list[str], mapping: dict[str, str]) -> list[str]:
    """The model's classes some target class maps to, in the model's order."""
    return [c for c in model_classes if c in mapping.values()]


def score_on(model: PortableModel, features: FeatureSet, mapping: dict[str, str], shared: list[str]):
    """(predictions table, overall scores, confusion, per-fold-model scores) over the `shared` classes."""
    columns = [model.classes.index(c) for c in shared]
    labels = features.manifest.label.to_numpy()
    keep = np.flatnonzero([lab in mapping for lab in labels])
    if not len(keep):
        raise TimnetError("no target utterance belongs to a shared class — nothing to score")
    truth = np.array([shared.index(mapping[lab]) for lab in labels[keep]])
    per_unit, _ = model.fold_outputs(features.x[keep])
    units = [
        {"fold model": u, **scores(truth, _restricted(per_unit[:, i], columns).argmax(1))}
        for i, u in enumerate(model.units)
    ]
    probs = _restricted(per_unit.mean(1), columns)
    table = features.manifest.iloc[keep][["file", "stem", "label", "speaker"]].reset_index(drop=True)
    table.insert(3, "as model class", [mapping[lab] for lab in labels[keep]])
    table["predicted"] = [shared[i] for i in probs.argmax(1)]
    table["correct"] = table["as model class"] == table.predicted
    for i, c in enumerate(shared):
        table[f"p_{c}"] = probs[:, i]
    return table, scores(truth, probs.argmax(1)), confusion(truth, probs.argmax(1), shared), pd.DataFrame(units)


def evaluate_cross_corpus(
    model: PortableModel | str | Path,
    target: Config | str | Path,
    data: Path,
    mapping: dict[str, str] | None = None,
    *,
    workers: int | None = None,
    skip_bad: bool = False,
    progress: bool = False,
    models_root: Path = Path("Models"),
    device: str = "auto",
    cache: dict | None = None,
) -> CrossCorpus:
    """Score `model` (a PortableModel, or anything `load_model` takes) on the corpus `target` (a name, TOML or
    Config) found in `data`, over the classes both share; fewer than two shared classes is refused. `cache`: a dict
    that keeps the target's features for the next model with the same recipe (a sweep's cells)."""
    if not isinstance(model, PortableModel):
        model = load_model(model, models_root=models_root, device=device)
    target = target if isinstance(target, Config) else load_config(target)
    source = model.config.dataset.name
    if target.dataset.name == source:
        raise TimnetError(
            f"the model was trained on {source}: cross-corpus evaluation needs another corpus (its own test folds "
            "are in its run's workbook)"
        )
    chosen = class_mapping(model.classes, target.dataset.classes, mapping)
    shared = shared_classes(model.classes, chosen)
    if len(shared) < 2:
        raise TimnetError(
            f"{source} and {target.dataset.name} share {len(shared)} class(es) ({', '.join(shared) or 'none'}) — "
            "scores need at least two: map classes with --map TARGET=MODEL (e.g. --map calm=neutral)"
        )
    key = _feature_key(target, model)
    found = cache.get(key) if cache is not None else None
    features, skipped = found or target_features(model, target, data, workers, skip_bad, progress)
    if cache is not None:
        cache[key] = (features, skipped)
    fix = f"the model reads MFCCs normalised per speaker: give {target.dataset.name} with a speaker in its pattern"
    features = model_inputs(features, model.normalize, fix)  # per speaker of the target corpus
    counts = features.manifest.label.value_counts()
    table = class_table(chosen, model.classes, target.dataset.classes, counts)
    predictions, overall, conf, units = score_on(model, features, chosen, shared)
    return CrossCorpus(
        model.source,
        source,
        target,
        Path(data),
        shared,
        table,
        predictions,
        overall,
        conf,
        units,
        model.config,
        skipped,
    )


def default_workbook(results: Path, result: CrossCorpus) -> Path:
    """Results/cross_corpus/<model>_on_<TARGET>_<time>.xlsx, never an existing one."""
    stem = f"{Path(result.source).name}_on_{result.target.dataset.name}_{datetime.now():%Y%m%d-%H%M%S}"
    return unique_path(Path(results) / "cross_corpus" / f"{stem}.xlsx")


def summary_entry(result: CrossCorpus, cell: str) -> dict:
    """Its row of the summary workbook, marked cross-corpus (source -> target)."""
    t = result.model_config.train
    row = {
        "run": cell,
        "dataset": result.target.dataset.name,
        "protocol": "cross-corpus",
        "cross_corpus": f"{result.source_dataset} -> {result.target.dataset.name}",
        "source": result.source,
        "checkpoint": t.checkpoint_label,
        "folds": len(result.fold_models),
        "epochs": t.epochs,
        "utterances": len(result.predictions),
        "shared_classes": ",".join(result.shared),
    }
    for metric in METRICS:
        row[f"{metric}_mean"] = round(result.overall[metric], 2)
        row[f"{metric}_std"] = (
            round(float(result.fold_models[metric].std(ddof=1)), 2) if len(result.fold_models) > 1 else float("nan")
        )
    return row


def write_cross_corpus(result: CrossCorpus, results: Path = Path("Results"), out: Path | None = None) -> Path:
    """Its workbook (never overwriting one) and its row of `Results/Accuracy Analysis Summary.xlsx`."""
    path = Path(out) if out is not None else default_workbook(results, result)
    o = result.overall
    info = pd.DataFrame(
        {
            "setting": [
                "model",
                "source corpus",
                "target corpus",
                "target data",
                "shared classes",
                "scores",
                "features",
                *(f"overall {m}" for m in METRICS),
            ],
            "value": [
                result.source,
                result.source_dataset,
                result.target.dataset.name,
                str(result.data),
                ", ".join(result.shared),
                "fold models' probabilities averaged, non-shared classes dropped and the rest renormalised",
                "the model's recipe (model config below)"
                + (
                    "; normalised per speaker of the target corpus"
                    if result.model_config.train.normalize != "none"
                    else ""
                ),
                *(round(o[m], 2) for m in METRICS),
            ],
        }
    )
    sheets = {
        "scores": info,
        "classes": result.classes,
        "confusion": result.confusion,
        "fold_models": result.fold_models,
        "predictions": result.predictions,
        "model_config": config_sheet(result.model_config),
        "target_config": config_sheet(result.target),
    }
    write_workbook(path, sheets)
    append_summary(results, summary_entry(result, path.stem))
    return path


def _feature_key(target: Config, model: PortableModel) -> str:
    return f"{target.dataset}|{model.config.features}"


def grid_targets(path: Path, data: dict) -> dict:
    """A sweep grid's cross-corpus cells: `evaluate_on` (in [runs] or [grid]: corpus names or TOML paths) and
    `evaluate_data` ([runs]: {NAME = "folder"}, default Datasets/<NAME>)."""
    runs, grid = data.get("runs", {}), data.get("grid", {})
    lists = [runs.get("evaluate_on", []), grid.get("evaluate_on", [])]
    targets = [t for value in lists if isinstance(value, list) for t in value]
    where = runs.get("evaluate_data", {})
    if not all(isinstance(value, list) for value in lists) or not all(isinstance(t, str) and t for t in targets):
        given = [value for value in lists if value != []]
        raise TimnetError(f"{path}: evaluate_on must be a list of corpus names or TOML paths, got {given!r}")
    if not isinstance(where, dict) or not all(isinstance(v, str) for v in where.values()):
        raise TimnetError(f'{path}: evaluate_data must be a table NAME = "folder", got {where!r}')
    return {"evaluate_on": list(dict.fromkeys(targets)), "evaluate_data": dict(where)}


def sweep_cells(record: dict, roots, workers: int | None = None, progress: bool = False) -> dict[str, pd.DataFrame]:
    """Every run of a sweep on every `evaluate_on` corpus but its own: each cell's workbook and summary row, and
    the sweep workbook's sheets, the cells one per row and a source x target matrix of UAR."""
    grid, cache, rows = record["grid"], {}, []
    targets = [load_config(t) for t in grid.get("evaluate_on", [])]
    for entry in record["runs"]:
        model = load_model(Path(roots.models) / entry["run_id"], device="cpu")
        for spec, target in zip(grid["evaluate_on"], targets):
            name = target.dataset.name
            if name == model.config.dataset.name:
                continue
            data = grid["evaluate_data"].get(spec) or grid["evaluate_data"].get(name) or Path("Datasets") / name
            result = evaluate_cross_corpus(model, target, Path(data), workers=workers, progress=progress, cache=cache)
            workbook = write_cross_corpus(result, roots.results)
            rows.append(
                {
                    "run": entry["run_id"],
                    "source": model.config.dataset.name,
                    "target": name,
                    "shared classes": ",".join(result.shared),
                    "utterances": len(result.predictions),
                    **{m: result.overall[m] for m in METRICS},
                    "workbook": str(workbook),
                }
            )
    cells = pd.DataFrame(rows)
    if not len(cells):
        return {"cross_corpus": cells}
    matrix = cells.pivot_table(index=["run", "source"], columns="target", values="uar", aggfunc="first")
    return {"cross_corpus": cells, "cross_corpus_uar": matrix.reset_index()}
