"""`timnet.load_model`: the one way to a trained model, whatever it was saved as.

    timnet.load_model("exported/EMODB")                      # a folder from `timnet export`
    timnet.load_model("someone/timnet-emodb")                # a Hugging Face Hub id (owner/name)
    timnet.load_model("EMODB_random_last_20240101-120000")   # a training run id (under models_root) or its folder
    timnet.load_model("EMODB_46.zip", dataset="EMODB")       # the authors' Keras weights (.zip, folder, .hdf5)

Every source gives a `PortableModel` whose units are named `fold_<k>` (`fold_<k>_seed<s>` in runs of several
seeds); `fold` and `seed` choose among them (`portable.select_units`, the one place that does).
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

from ..core.config import Config, load_config
from ..core.errors import TimnetError, require
from ..core.validation import check_choice
from ..model.keras_weights import fold_weights, load_fold_models, seed_from_name
from ..model.network import TIMNetConfig
from ..training.run_store import load_unit_model, read_run_record
from .folder_check import check_graph, load_checked_weights, read_checked_card
from .hub import download, is_hub_id
from .model_folder import CARD, graph_paths, has_card
from .portable import OnnxRunner, PortableModel, TorchRunner, Unit, select_units

ENGINES = ("auto", "torch", "onnx")
WEIGHT_SUFFIXES = (".zip", ".hdf5", ".h5")


def load_model(
    source: str | Path,
    *,
    dataset: str | Path | Config | None = None,
    fold: int | None = None,
    seed: int | None = None,
    engine: str = "auto",
    device: str = "auto",
    models_root: Path = Path("Models"),
) -> PortableModel:
    """A trained model ready to predict, from an exported folder, a hub id, a run (id or folder) or the authors'
    Keras weights (which need `dataset`: a name, a TOML path or a Config; they do not say which corpus they are for).

    fold / seed: only the fold models of fold k / training seed s (for the authors' weights: their KFold seed).
    engine: `onnx` (onnxruntime; the faster on CPU; exported folders only), `torch`, or `auto` = onnx when the
    folder has graphs and onnxruntime is installed, else torch. `device` is for the torch engine.
    """
    check_choice("engine", engine, ENGINES)
    kind, path = source_kind(source, models_root)
    if kind == "folder":
        return folder_model(path, fold, seed, engine, device)
    if engine == "onnx":
        raise TimnetError(f"{path}: --engine onnx needs an exported model folder: timnet export, then --model DIR")
    if kind == "run":
        return run_model(path, fold, seed, device)
    return weights_model(path, dataset, fold, seed, device)


def source_kind(source: str | Path, models_root: Path = Path("Models")) -> tuple[str, Path]:
    """("folder" | "run" | "weights", its local path); a hub id is downloaded and is then a folder."""
    path = Path(source)
    if path.suffix.lower() in WEIGHT_SUFFIXES:  # even when missing: the weights reader names what to give
        return "weights", path
    if path.is_dir():
        if (path / CARD).is_file():
            return ("folder" if has_card(path) else "run"), path
        if next(path.rglob("*.hdf5"), None) is not None:
            return "weights", path
        raise TimnetError(
            f"{path}: not a model folder (no {CARD}) — make one with `timnet export`, or give a run or the authors' "
            "weights"
        )
    run = Path(models_root) / str(source)
    if not path.is_absolute() and (run / CARD).is_file():
        return "run", run
    if is_hub_id(source):
        return "folder", download(str(source))
    raise TimnetError(
        f"{source}: no such model folder, run (under {models_root}/) or weights file — make a folder with "
        "`timnet export`, or give a run id or a hub id owner/name"
    )


def folder_model(folder: Path, fold: int | None, seed: int | None, engine: str, device: str) -> PortableModel:
    """An exported folder's fold models, in onnxruntime or torch; the folder is checked first (`folder_check`)."""
    card, config = read_checked_card(folder)
    seeds = {f["unit"]: f.get("seed") for f in card.get("folds", [])}
    units = select_units([Unit.from_name(u, seeds.get(u)) for u in card["units"]], fold, seed, str(folder))
    names = [u.name for u in units]
    graphs = graph_paths(folder, card, names)
    has_ort = importlib.util.find_spec("onnxruntime") is not None
    if engine == "auto":
        engine = "onnx" if graphs and has_ort else "torch"
    if engine == "onnx":
        if not graphs:
            raise TimnetError(f"{folder}: no ONNX graphs (exported with --no-onnx?) — use --engine torch")
        if not has_ort:
            require("onnxruntime", "export", "--engine onnx", "--engine torch")
        for graph in graphs.values():
            check_graph(folder, graph, config.model)
        runner = OnnxRunner(graphs)
    else:
        runner = TorchRunner(load_checked_weights(folder, names, config.model), device)
    authors = card.get("provenance", {}).get("kind") == "authors-weights"
    kfold = {u.seed for u in units} if authors else set()
    return PortableModel(config, units, runner, str(folder), card, kfold.pop() if len(kfold) == 1 else None)


def run_model(path: Path, fold: int | None, seed: int | None, device: str) -> PortableModel:
    """A training run's finished fold models (units listed in its record whose file is written)."""
    record = read_run_record(path)
    finished = [Unit(u["unit"], u["fold"], u["seed"]) for u in record["folds"] if (path / f"{u['unit']}.pt").is_file()]
    if not finished:
        raise TimnetError(f"{path}: no finished fold models — train (or resume) the run first")
    finished.sort(key=lambda u: f"{u.name}.pt")  # the order of the unit files on disk
    units = select_units(finished, fold, seed, str(path))
    models = {u.name: load_unit_model(path / f"{u.name}.pt") for u in units}
    return PortableModel(Config.from_dict(record["config"]), units, TorchRunner(models, device), str(path))


def weights_model(
    path: Path, dataset: str | Path | Config | None, fold: int | None, seed: int | None, device: str
) -> PortableModel:
    """The authors' fold weights with the dataset's config (their checkpoints: best epoch on the test fold)."""
    if dataset is None:
        raise TimnetError(
            f"--weights needs --dataset: {path.name} does not say which corpus (class names, signal length) it is "
            'for — e.g. --dataset EMODB, or dataset="EMODB" in Python'
        )
    config = dataset if isinstance(dataset, Config) else load_config(dataset, {"train.checkpoint": "best-test"})
    if config.train.normalize != "none":
        raise TimnetError(
            f"{path.name}: the authors' weights read MFCCs as computed, not train.normalize = "
            f"{config.train.normalize} — give the dataset with train.normalize = none"
        )
    kfold = seed_from_name(path)
    found = fold_weights(path)
    units = select_units([Unit(f"fold_{k}", k, kfold) for k in found], fold, seed, str(path))
    models = load_fold_models(path, TIMNetConfig.from_config(config), {u.fold for u in units}, found)
    return PortableModel(config, units, TorchRunner(models, device), str(path), kfold_seed=kfold)
