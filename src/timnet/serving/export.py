"""`timnet export`: a training run's or the authors' fold models to a self-contained model folder.

The models are read with `timnet.load_model` (so an export holds exactly what prediction would use); the
folder format is `model_folder`, the graphs `onnx_export`, the card `model_card`, the upload `hub`. A folder is
written in a temporary sibling and renamed into place: all of it or nothing, never over an existing one.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

from ..core.config import Config
from ..core.errors import TimnetError
from ..core.metrics import METRICS
from ..model.network import TIMNet
from ..training.run_store import load_result, read_run_record, run_dir
from .loading import load_model
from .model_card import card_data, model_card
from .model_folder import README, save_weights, write_card
from .onnx_export import write_onnx


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
    record = read_run_record(path)
    model = load_model(path, fold=fold, seed=seed, engine="torch", models_root=models_root)
    results = {unit: load_result(path / f"{unit}.pt") for unit in model.units}
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
    return write_model_folder(out, model.config, model.fold_models, folds, provenance, onnx)


def export_weights(weights: Path, dataset: str | None, out: Path, fold: int | None = None, onnx: bool = True) -> Path:
    """Export the authors' published fold weights (their zip, folder or .hdf5) to a model folder."""
    model = load_model(Path(weights), dataset=dataset, fold=fold, engine="torch")
    folds = [{"unit": u, "fold": model.fold_of[u], "seed": model.kfold_seed} for u in model.units]
    provenance = {
        "kind": "authors-weights",
        "source": Path(weights).name,
        "paper": "Ye et al., TIM-Net, ICASSP 2023",
        "note": "the authors' published fold weights; metrics are theirs as published, not re-measured here",
    }
    return write_model_folder(out, model.config, model.fold_models, folds, provenance, onnx)


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
        save_weights(tmp, models)
        card = card_data(config, models, folds, provenance)
        if onnx:
            card["onnx"] = write_onnx(models, tmp, config.features.frames)
        write_card(tmp, card)
        (tmp / README).write_text(model_card(card))
        tmp.rename(out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out
