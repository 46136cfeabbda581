"""The model folder format: what `timnet export` writes and `timnet.load_model` reads.

    <DIR>/config.json        format, architecture, classes, the complete feature recipe, protocol and checkpoint
                             policy, per-fold and mean ± std metrics, provenance, timnet version, ONNX check
    <DIR>/model.safetensors  every fold model's weights, keys `<unit>.<parameter>` (`fold_3.classifier.weight`)
    <DIR>/onnx/<unit>.onnx   one graph per fold model: mfcc [N, T, F] -> probabilities [N, K], embedding [N, C]
                             (mfcc: what the model reads, config.json's `inputs`: as computed, or speaker-normalised)
    <DIR>/README.md          the model card

Only the names and the (de)serialisation live here, so reading a folder never imports the ONNX writer.
"""

from __future__ import annotations

import json
from pathlib import Path

from ..model.network import TIMNet, TIMNetConfig

FORMAT = "timnet-model/1"
CARD = "config.json"
WEIGHTS = "model.safetensors"
README = "README.md"
ONNX_DIR = "onnx"
ONNX_INPUT = "mfcc"
ONNX_OUTPUTS = ("probabilities", "embedding")


def has_card(folder: Path) -> bool:
    """Whether `folder` holds an exported model's config.json (a run's record has no `format`)."""
    path = Path(folder) / CARD
    if not path.is_file():
        return False
    try:
        return "format" in json.loads(path.read_text())
    except (ValueError, UnicodeDecodeError, TypeError):  # not a run's record: the folder check names what is wrong
        return True


def write_card(folder: Path, card: dict) -> None:
    (Path(folder) / CARD).write_text(json.dumps(card, indent=2, default=str) + "\n")


def save_weights(folder: Path, models: dict[str, TIMNet]) -> None:
    """Every fold model's tensors in one safetensors file, keys `<unit>.<parameter>`."""
    from safetensors.torch import save_file

    tensors = {f"{unit}.{k}": v.contiguous() for unit, m in models.items() for k, v in m.state_dict().items()}
    save_file(tensors, Path(folder) / WEIGHTS, metadata={"format": FORMAT})


def build_models(tensors: dict, architecture: TIMNetConfig, units: list[str]) -> dict[str, TIMNet]:
    """The fold models `units` from the tensors of a weights file (keys `<unit>.<parameter>`), in eval mode."""
    models = {}
    for unit in units:
        model = TIMNet(architecture)
        prefix = f"{unit}."
        model.load_state_dict({k[len(prefix) :]: v for k, v in tensors.items() if k.startswith(prefix)})
        models[unit] = model.eval()
    return models


def graph_paths(folder: Path, card: dict, units: list[str]) -> dict[str, Path] | None:
    """{unit: its ONNX graph}, or None when the folder has no graph for one of `units` (exported --no-onnx)."""
    files = card.get("onnx", {}).get("files", {})
    paths = {u: Path(folder) / files[u] for u in units if u in files}
    return paths if len(paths) == len(units) and all(p.is_file() for p in paths.values()) else None
