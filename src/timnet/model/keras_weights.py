"""Load the authors' Keras `.hdf5` weights into `timnet.model.network.TIMNet` (h5py only, no TensorFlow).

Keras names layers `conv1d_34`, `batch_normalization_32`, ... with a suffix that depends on how many
layers the authors' session had built before, and lists them in graph order, not creation order.
So tensors are matched by creation order (rank of the numeric suffix), which the architecture fixes:

    conv1d:              forward 1x1, backward 1x1, then per level: fwd a, fwd b, bwd a, bwd b
    batch_normalization: per level: fwd a, fwd b, bwd a, bwd b
    weight_layer [L, 1], dense kernel [C, K] + bias [K]

Every tensor is mapped explicitly and checked for shape; nothing is loaded partially.
"""

from __future__ import annotations

import io
import re
import zipfile
from pathlib import Path

import h5py
import numpy as np
import torch

from ..core.errors import TimnetError
from .network import TIMNet, TIMNetConfig

FOLD_FILE = re.compile(r"(?:^|/)(\d+)-fold_weights_best_(\d+)\.hdf5$")


def _suffix(name: str) -> int:
    m = re.search(r"_(\d+)$", name)
    return int(m.group(1)) if m else 0


def read_layers(source) -> dict[str, dict[str, np.ndarray]]:
    """{layer name: {"kernel": ..., "bias": ..., "gamma": ...}} from a Keras `save_weights` h5 file."""
    try:
        f = h5py.File(source, "r")
    except OSError as err:
        raise TimnetError(f"{getattr(source, 'name', source)}: not a Keras HDF5 weight file ({err})") from None
    with f:
        root = f["model_weights"] if "model_weights" in f else f
        if "layer_names" not in root.attrs:
            raise TimnetError(
                f"{getattr(source, 'name', source)}: HDF5 file without Keras layer_names — not Keras weights"
            )
        layers = {}
        for raw in root.attrs["layer_names"]:
            name = raw.decode() if isinstance(raw, bytes) else str(raw)
            names = [w.decode() if isinstance(w, bytes) else str(w) for w in root[name].attrs.get("weight_names", [])]
            if names:
                layers[name] = {n.rsplit("/", 1)[-1].split(":")[0]: np.asarray(root[name][n]) for n in names}
        return layers


def infer_config(layers: dict[str, dict[str, np.ndarray]]) -> TIMNetConfig:
    """The architecture the weights were trained with (levels, classes, filters)."""
    dense = [v for k, v in layers.items() if k.startswith("dense")]
    weight = [v for k, v in layers.items() if k.startswith("weight_layer")]
    convs = sorted((k for k in layers if k.startswith("conv1d")), key=_suffix)
    if len(dense) != 1 or len(weight) != 1 or not convs:
        raise TimnetError("these weights are not a TIM-Net model (need conv1d, weight_layer and one dense layer)")
    first = layers[convs[0]]["kernel"]  # [1, F, C]
    return TIMNetConfig(
        n_classes=dense[0]["kernel"].shape[1],
        n_mfcc=first.shape[1],
        filters=first.shape[2],
        kernel_size=layers[convs[2]]["kernel"].shape[0] if len(convs) > 2 else 2,
        levels=weight[0]["kernel"].shape[0],
        dropout=0.0,  # not stored in the weights; it acts only in training
    )


def to_state_dict(
    layers: dict[str, dict[str, np.ndarray]], config: TIMNetConfig, what: str = "weights"
) -> dict[str, torch.Tensor]:
    """Explicit Keras -> PyTorch mapping, checking every shape against `config`."""
    found = infer_config(layers)
    if (found.n_classes, found.levels, found.filters, found.n_mfcc) != (
        config.n_classes,
        config.levels,
        config.filters,
        config.n_mfcc,
    ):
        raise TimnetError(
            f"{what}: trained for {found.n_classes} classes, {found.levels} levels, {found.n_mfcc} MFCCs, but the "
            "chosen "
            f"dataset's config has {config.n_classes} classes, {config.levels} levels, {config.n_mfcc} MFCCs — wrong "
            "--dataset for these weights?"
        )
    convs = [layers[k] for k in sorted((k for k in layers if k.startswith("conv1d")), key=_suffix)]
    bns = [layers[k] for k in sorted((k for k in layers if k.startswith("batch_normalization")), key=_suffix)]
    if len(convs) != 2 + 4 * config.levels or len(bns) != 4 * config.levels:
        raise TimnetError(
            f"{what}: {len(convs)} conv and {len(bns)} batch-norm layers, TIM-Net with {config.levels} levels has "
            f"{2 + 4 * config.levels} and {4 * config.levels}"
        )
    sd: dict[str, np.ndarray] = {}

    def conv(prefix: str, layer: dict) -> None:
        sd[f"{prefix}.weight"] = layer["kernel"].transpose(2, 1, 0)  # Keras [k, in, out] -> [out, in, k]
        sd[f"{prefix}.bias"] = layer["bias"]

    def bn(prefix: str, layer: dict) -> None:
        sd[f"{prefix}.weight"], sd[f"{prefix}.bias"] = layer["gamma"], layer["beta"]
        sd[f"{prefix}.running_mean"], sd[f"{prefix}.running_var"] = layer["moving_mean"], layer["moving_variance"]

    conv("forward_in", convs[0])
    conv("backward_in", convs[1])
    for level in range(config.levels):
        c, b = convs[2 + 4 * level : 6 + 4 * level], bns[4 * level : 4 * level + 4]
        for direction, offset in (("forward_blocks", 0), ("backward_blocks", 2)):
            conv(f"{direction}.{level}.conv1", c[offset])
            bn(f"{direction}.{level}.bn1", b[offset])
            conv(f"{direction}.{level}.conv2", c[offset + 1])
            bn(f"{direction}.{level}.bn2", b[offset + 1])
    (weight,) = [v for k, v in layers.items() if k.startswith("weight_layer")]
    (dense,) = [v for k, v in layers.items() if k.startswith("dense")]
    sd["level_weights"] = weight["kernel"][:, 0]
    sd["classifier.weight"], sd["classifier.bias"] = dense["kernel"].T, dense["bias"]
    return {k: torch.from_numpy(np.ascontiguousarray(v, dtype=np.float32)) for k, v in sd.items()}


def load_into(model: TIMNet, source, what: str | None = None) -> TIMNet:
    """Load one `.hdf5` (path or file object) into `model`; strict: every tensor, every shape."""
    what = what or str(getattr(source, "name", source))
    sd = to_state_dict(read_layers(source), model.config, what)
    expected = model.state_dict()
    for key, value in sd.items():
        if expected[key].shape != value.shape:
            raise TimnetError(
                f"{what}: tensor {key} has shape {tuple(value.shape)}, the model needs {tuple(expected[key].shape)}"
            )
    missing = [k for k in expected if k not in sd and not k.endswith("num_batches_tracked")]
    if missing:
        raise TimnetError(f"{what}: no Keras tensor for {', '.join(missing[:3])}")
    model.load_state_dict(sd, strict=False)
    return model.eval()


def fold_weights(source: Path) -> dict[int, bytes | Path]:
    """{fold k (1-based): weights} from a `.hdf5` file, a folder of them, or the authors' zip."""
    source = Path(source)
    if not source.exists():
        raise TimnetError(
            f"{source}: weights not found — give the authors' zip (e.g. EMODB_46.zip), its folder or one .hdf5"
        )
    if source.is_dir():
        files = {int(m.group(2)): p for p in sorted(source.rglob("*.hdf5")) if (m := FOLD_FILE.search(p.as_posix()))}
    elif zipfile.is_zipfile(source):
        with zipfile.ZipFile(source) as z:
            files = {int(m.group(2)): z.read(n) for n in z.namelist() if (m := FOLD_FILE.search(n))}
    elif source.suffix in (".hdf5", ".h5"):
        m = FOLD_FILE.search(source.name)
        files = {int(m.group(2)) if m else 1: source}
    else:
        raise TimnetError(f"{source}: expected a .zip, a folder or a .hdf5 file of Keras weights")
    if not files:
        raise TimnetError(f"{source}: no files named <N>-fold_weights_best_<k>.hdf5 inside")
    return dict(sorted(files.items()))


def load_fold_models(
    source: Path, config: TIMNetConfig, folds: set[int] | None = None, found: dict[int, bytes | Path] | None = None
) -> dict[str, TIMNet]:
    """{"fold_k": model with the authors' weights of fold k}, for every fold of `source` (or those in `folds`);
    `found`: `fold_weights(source)` when the caller has read it already (a zip is then decompressed once)."""
    models = {}
    for fold, blob in (found if found is not None else fold_weights(source)).items():
        if folds is not None and fold not in folds:
            continue
        handle = io.BytesIO(blob) if isinstance(blob, bytes) else blob
        models[f"fold_{fold}"] = load_into(TIMNet(config), handle, what=f"{source} (fold {fold})")
    return models


def seed_from_name(source: Path) -> int | None:
    """The authors name weight sets `<DATASET>_<seed>` (EMODB_46.zip): the KFold seed they used."""
    m = re.search(r"_(\d+)(?:\.zip)?$", Path(source).name)
    return int(m.group(1)) if m else None
