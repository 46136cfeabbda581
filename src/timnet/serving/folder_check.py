"""A model folder (or a hub id's download) is data from anyone, never code: before `load_model` uses one, its
config.json is checked field by field (the recipe by building its Config, whose settings validate themselves),
files that only load by executing them (pickles, code) are refused, the weights' names and shapes must be the
architecture's, and each ONNX graph must read `mfcc` [N, T, F] and give `probabilities` [N, K], `embedding`
[N, C], with no external data and no custom operators. A tampered folder gets one line naming the field."""

from __future__ import annotations

import json
from pathlib import Path

from ..core.config import Config
from ..core.errors import TimnetError
from ..model.network import TIMNet, TIMNetConfig
from .model_folder import CARD, FORMAT, ONNX_INPUT, ONNX_OUTPUTS, WEIGHTS, build_models
from .portable import UNIT_NAME

# Files that load by running code (pickles, compiled or interpreted code): never in a model folder.
EXECUTABLE = {".pt", ".pth", ".pkl", ".pickle", ".bin", ".ckpt", ".joblib", ".npy", ".npz", ".h5", ".hdf5"}
EXECUTABLE |= {".py", ".pyc", ".so", ".dll", ".dylib", ".sh", ".exe", ".keras"}
STANDARD_DOMAINS = ("", "ai.onnx")


def _bad(folder: Path, field: str, problem: str) -> TimnetError:
    return TimnetError(f"{folder}/{field}: {problem} — not a model folder `timnet export` wrote; re-export it")


def check_files(folder: Path) -> None:
    """No pickle or code anywhere in the folder (a hub download's own `.cache` is the hub client's)."""
    for path in sorted(folder.rglob("*")):
        relative = path.relative_to(folder)
        if relative.parts[0] == ".cache" or not path.is_file():
            continue
        if path.suffix.lower() in EXECUTABLE:
            raise TimnetError(
                f"{folder}/{relative}: a model folder holds only config.json, {WEIGHTS} and onnx/*.onnx — this file "
                "would load by executing it (a pickle or code), so the folder is refused; remove it"
            )


def read_checked_card(folder: Path) -> tuple[dict, Config]:
    """config.json, every field the loader uses checked, and the Config it describes."""
    folder = Path(folder)
    path = folder / CARD
    if not path.is_file():
        raise TimnetError(f"{folder}: not a model folder (no {CARD}) — make one with `timnet export`")
    check_files(folder)
    try:
        card = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as err:
        raise _bad(folder, CARD, f"not valid JSON ({err})") from None
    if not isinstance(card, dict):
        raise _bad(folder, CARD, "must be a JSON object")
    if card.get("format") != FORMAT:
        raise TimnetError(f"{folder}: format {card.get('format')!r}, this timnet reads {FORMAT!r}")
    if not isinstance(card.get("config"), dict):
        raise _bad(folder, f"{CARD}: config", "missing, or not an object of settings")
    try:
        config = Config.from_dict(card["config"])
    except TimnetError as err:
        raise _bad(folder, f"{CARD}: config", str(err)) from None
    except (TypeError, ValueError, AttributeError, KeyError) as err:
        raise _bad(folder, f"{CARD}: config", f"malformed ({type(err).__name__}: {err})") from None
    _check_fields(folder, card, config)
    return card, config


def _check_fields(folder: Path, card: dict, config: Config) -> None:
    """The fields besides the recipe: the class list, the architecture, the units and their graphs."""
    if card.get("classes") != list(config.dataset.classes):
        raise _bad(folder, f"{CARD}: classes", f"{card.get('classes')!r} is not the config's class list")
    architecture = card.get("architecture")
    if not isinstance(architecture, dict) or architecture != config.model.to_dict():
        raise _bad(folder, f"{CARD}: architecture", f"{architecture!r} is not the config's model")
    units = card.get("units")
    if not isinstance(units, list) or not units or len(set(map(str, units))) != len(units):
        raise _bad(folder, f"{CARD}: units", "must be a non-empty list of distinct fold model names")
    for unit in units:
        if not isinstance(unit, str) or not UNIT_NAME.match(unit):
            raise _bad(folder, f"{CARD}: units", f"{unit!r} is not a fold model name (fold_<k>)")
    folds = card.get("folds", [])
    if not isinstance(folds, list) or not all(isinstance(f, dict) for f in folds):
        raise _bad(folder, f"{CARD}: folds", "must be a list of objects")
    for f in folds:
        if f.get("seed") is not None and (isinstance(f["seed"], bool) or not isinstance(f["seed"], int)):
            raise _bad(folder, f"{CARD}: folds", f"seed {f['seed']!r} is not an integer")
    files = card.get("onnx", {}).get("files", {}) if isinstance(card.get("onnx", {}), dict) else None
    if not isinstance(files, dict):
        raise _bad(folder, f"{CARD}: onnx.files", "must be an object {unit: onnx/<unit>.onnx}")
    for unit, name in files.items():
        inside = isinstance(name, str) and not Path(name).is_absolute() and ".." not in Path(name).parts
        if not inside or not name.endswith(".onnx"):
            raise _bad(folder, f"{CARD}: onnx.files.{unit}", f"{name!r} is not a .onnx file inside the folder")


def check_weights(folder: Path, tensors: dict, units: list[str], architecture: TIMNetConfig) -> None:
    """Every unit's tensors are exactly the architecture's parameters, shape for shape (no more, no fewer)."""
    want = {k: tuple(v.shape) for k, v in TIMNet(architecture).state_dict().items()}
    for unit in units:
        prefix = f"{unit}."
        have = {k[len(prefix) :]: tuple(v.shape) for k, v in tensors.items() if k.startswith(prefix)}
        for key in sorted(want.keys() | have.keys()):
            if key not in have:
                raise _bad(folder, WEIGHTS, f"{prefix}{key} is missing")
            if key not in want:
                raise _bad(folder, WEIGHTS, f"{prefix}{key} is not a parameter of the architecture")
            if have[key] != want[key]:
                raise _bad(
                    folder,
                    WEIGHTS,
                    f"{prefix}{key} has shape {list(have[key])}, the architecture's is {list(want[key])}",
                )


def load_checked_weights(folder: Path, units: list[str], architecture: TIMNetConfig) -> dict[str, TIMNet]:
    """The fold models of the folder's weights file, read (safetensors: no code) and checked first."""
    from safetensors.torch import load_file

    try:
        tensors = load_file(Path(folder) / WEIGHTS)
    except FileNotFoundError:
        raise _bad(folder, WEIGHTS, "missing") from None
    except Exception as err:  # noqa: BLE001 — safetensors' header errors vary
        raise _bad(folder, WEIGHTS, f"not a safetensors file ({type(err).__name__}: {err})") from None
    check_weights(folder, tensors, units, architecture)
    return build_models(tensors, architecture, units)


def check_graph(folder: Path, path: Path, architecture: TIMNetConfig) -> None:
    """An ONNX graph's interface (names, ranks, the feature and class sizes), before onnxruntime runs it."""
    import onnx
    from onnx.external_data_helper import uses_external_data

    where = path.relative_to(folder)
    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as err:  # noqa: BLE001 — protobuf's decode errors vary
        raise _bad(folder, str(where), f"not an ONNX graph ({type(err).__name__})") from None
    graph = model.graph
    if any(uses_external_data(t) for t in graph.initializer):
        raise _bad(folder, str(where), "its weights point at files outside the graph (external data)")
    custom = sorted({n.domain for n in graph.node if n.domain not in STANDARD_DOMAINS})
    if custom:
        raise _bad(folder, str(where), f"uses operators of domain(s) {custom}, not standard ONNX")
    initializers = {t.name for t in graph.initializer}
    inputs = [(i.name, _dims(i)) for i in graph.input if i.name not in initializers]
    outputs = [(o.name, _dims(o)) for o in graph.output]
    n_mfcc, n_classes, filters = architecture.n_mfcc, architecture.n_classes, architecture.filters
    if [n for n, _ in inputs] != [ONNX_INPUT] or not _fits(inputs[0][1], [None, None, n_mfcc]):
        raise _bad(folder, str(where), f"inputs {inputs}, expected {ONNX_INPUT} [N, T, {n_mfcc}]")
    expected = {ONNX_OUTPUTS[0]: [None, n_classes], ONNX_OUTPUTS[1]: [None, filters]}
    if [n for n, _ in outputs] != list(ONNX_OUTPUTS) or not all(_fits(d, expected[n]) for n, d in outputs):
        raise _bad(folder, str(where), f"outputs {outputs}, expected probabilities [N, {n_classes}], embedding [N, C]")


def _dims(value) -> list:
    """A graph value's dimensions: ints where fixed, None where symbolic (or the rank unknown: None)."""
    shape = value.type.tensor_type.shape
    return [d.dim_value if d.HasField("dim_value") else None for d in shape.dim]


def _fits(dims: list, expected: list) -> bool:
    """Same rank, and every fixed size of `expected` matched (a symbolic size matches anything)."""
    if len(dims) != len(expected):
        return False
    return all(e is None or d is None or d == e for d, e in zip(dims, expected))
