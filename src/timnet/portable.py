"""Load a model folder (or a run, or the authors' weights) and predict with PyTorch or onnxruntime.

model = timnet.load_model("exported/EMODB")            # a folder from `timnet export`, or a hub id
model.predict(["a.wav", "b.wav"])                      # the table `timnet predict` prints
model.predict_proba(mfcc)                              # [N, T, F] float32 -> [N, K], mean over the fold models
model.embed(mfcc)                                      # [N, C] penultimate layer (one fold model's)
"""

from __future__ import annotations

import json
import re
import warnings
from pathlib import Path

import numpy as np
import pandas as pd

from .config import Config
from .errors import BadAudioError, TimnetError
from .export import FORMAT, ONNX_OUTPUTS
from .features import extract_many
from .metrics import infer
from .model import TIMNet, TIMNetConfig

ENGINES = ("auto", "torch", "onnx")
LONG_FACTOR = 2.0  # warn when a file is this many times longer than the training length
HUB_ID = re.compile(r"^[\w.-]+/[\w.-]+$")


class TorchRunner:
    """The fold models in PyTorch (CPU, CUDA or MPS)."""

    name = "torch"

    def __init__(self, models: dict[str, TIMNet], device: str = "auto", batch_size: int = 256):
        self.models, self.device, self.batch_size = models, device, batch_size

    def __call__(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        outputs = [infer(m, x, self.batch_size, self.device) for m in self.models.values()]
        return np.stack([p for p, _ in outputs], 1), np.stack([e for _, e in outputs], 1)


class OnnxRunner:
    """The folder's ONNX graphs, one session per fold model, in onnxruntime (CUDA when onnxruntime-gpu has it)."""

    name = "onnx"

    def __init__(self, paths: list[Path], batch_size: int = 256):
        import onnxruntime as ort

        wanted = ("CUDAExecutionProvider", "CPUExecutionProvider")
        providers = [p for p in wanted if p in ort.get_available_providers()]
        self.sessions = [ort.InferenceSession(str(p), providers=providers) for p in paths]
        self.batch_size = batch_size

    def __call__(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        probs, embs = [], []
        for session in self.sessions:
            parts = [
                session.run(list(ONNX_OUTPUTS), {"mfcc": np.ascontiguousarray(x[i : i + self.batch_size])})
                for i in range(0, len(x), self.batch_size)
            ]
            probs.append(np.concatenate([p for p, _ in parts]))
            embs.append(np.concatenate([e for _, e in parts]))
        return np.stack(probs, 1), np.stack(embs, 1)


class PortableModel:
    """Fold models with the config they were trained with; the same answers from either engine."""

    def __init__(self, config: Config, units: list[str], runner, source: str, card: dict | None = None):
        self.config, self.units, self.runner, self.source, self.card = config, units, runner, source, card
        self.classes = list(config.dataset.classes)
        self.fold_of = [int(re.match(r"fold_(\d+)", u).group(1)) for u in units]

    @property
    def engine(self) -> str:
        return self.runner.name

    def _columns(self, fold: int | None) -> list[int]:
        if fold is None:
            return list(range(len(self.units)))
        chosen = [i for i, k in enumerate(self.fold_of) if k == fold]
        if not chosen:
            raise TimnetError(f"{self.source}: no model of fold {fold} (folds: {sorted(set(self.fold_of))})")
        return chosen

    def _check(self, mfcc) -> np.ndarray:
        x = np.asarray(mfcc, dtype=np.float32)
        f = self.config.features.n_mfcc
        if x.ndim != 3 or x.shape[2] != f:
            raise TimnetError(f"expected MFCCs shaped [N, T, {f}], got {list(x.shape)}")
        return x

    def fold_outputs(self, mfcc) -> tuple[np.ndarray, np.ndarray]:
        """(probabilities [N, M, K], embeddings [N, M, C]) of each of the M fold models."""
        return self.runner(self._check(mfcc))

    def predict_proba(self, mfcc, fold: int | None = None) -> np.ndarray:
        """[N, T, F] MFCCs -> [N, K] class probabilities: the mean over the fold models (or fold `fold`'s)."""
        probs, _ = self.fold_outputs(mfcc)
        return probs[:, self._columns(fold)].mean(1)

    def embed(self, mfcc, fold: int | None = None) -> np.ndarray:
        """[N, T, F] MFCCs -> [N, C]: the penultimate layer of the first fold model (or of fold `fold`'s).

        Fold models' embedding spaces differ by a rotation, so they are not averaged (`timnet tsne` aligns them).
        """
        _, emb = self.fold_outputs(mfcc)
        return emb[:, self._columns(fold)[0]]

    def features(
        self, files: list[Path], workers: int | None = None, skip_bad: bool = False, progress: bool = False
    ) -> tuple[np.ndarray, list[Path]]:
        """MFCCs of audio files with the model's recipe, on all cores; (x, the files it is for)."""
        settings = self.config.features
        x, failed = extract_many(files, settings, workers, progress)
        if failed and not skip_bad:
            i = min(failed)
            others = f" (and {len(failed) - 1} other file(s))" if len(failed) > 1 else ""
            raise BadAudioError(files[i], failed[i] + others)
        for i, problem in sorted(failed.items()):
            warnings.warn(f"skipped {files[i]}: {problem}", stacklevel=2)
        keep = [i for i in range(len(files)) if i not in failed]
        kept = [files[i] for i in keep]
        _warn_long(kept, settings)
        return x[keep], kept

    def predict(
        self, files, fold: int | None = None, workers: int | None = None, skip_bad: bool = False, progress: bool = False
    ) -> pd.DataFrame:
        """Audio files -> a table: file, predicted emotion, its probability, the probability of every class."""
        files = [Path(f) for f in files]
        if not files:
            raise TimnetError("no audio files given")
        x, kept = self.features(files, workers, skip_bad, progress)
        probs = self.predict_proba(x, fold) if len(kept) else np.zeros((0, len(self.classes)), np.float32)
        table = pd.DataFrame(
            {
                "file": [str(f) for f in kept],
                "predicted": [self.classes[i] for i in probs.argmax(1)],
                "probability": probs.max(1),
            }
        )
        for c, name in enumerate(self.classes):
            table[name] = probs[:, c]
        return table


def _warn_long(files: list[Path], settings) -> None:
    import soundfile as sf

    limit = settings.signal_length / settings.sample_rate
    for f in files:
        seconds = sf.info(str(f)).duration
        if seconds > LONG_FACTOR * limit:
            warnings.warn(
                f"{f}: {seconds:.1f} s long, the model was trained on {limit:.2f} s; only the middle "
                f"{limit:.2f} s is used (centre crop, as in training; --timeline labels every window)",
                stacklevel=3,
            )


def from_fold_models(fold_models, device: str = "auto") -> PortableModel:
    """A run's or the authors' fold models (`runs.FoldModels`) as a PortableModel with the torch engine."""
    return PortableModel(
        fold_models.config, list(fold_models.models), TorchRunner(fold_models.models, device), fold_models.source
    )


def resolve_folder(source: str | Path) -> Path:
    """A local model folder, or a Hugging Face Hub id (`owner/name`) downloaded to the hub cache."""
    path = Path(source)
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise TimnetError(f"{path}: not a model folder (no config.json) — make one with `timnet export`")
        return path
    if HUB_ID.match(str(source)) and not path.exists():
        from huggingface_hub import snapshot_download

        try:
            return Path(snapshot_download(repo_id=str(source), repo_type="model"))
        except Exception as err:  # offline, unknown repo, no access: the hub's errors differ by version
            raise TimnetError(
                f"{source}: not a local folder, and the Hugging Face Hub gave {type(err).__name__}: {err}"
            ) from None
    raise TimnetError(f"{source}: no such model folder (make one with `timnet export`, or give a hub id owner/name)")


def load_model(source: str | Path, engine: str = "auto", device: str = "auto") -> PortableModel:
    """A model folder from `timnet export` (or a hub id) ready to predict.

    engine: `onnx` (onnxruntime; the faster on CPU), `torch`, or `auto` = onnx when the folder has a graph
    and onnxruntime is installed, else torch. `device` is for the torch engine.
    """
    if engine not in ENGINES:
        raise TimnetError(f"engine {engine!r}: choose one of {', '.join(ENGINES)}")
    folder = resolve_folder(source)
    card = json.loads((folder / "config.json").read_text())
    if card.get("format") != FORMAT:
        raise TimnetError(f"{folder}: format {card.get('format')!r}, this timnet reads {FORMAT!r}")
    config = Config.from_dict(card["config"])
    units = card["units"]
    graphs = [folder / f for f in card.get("onnx", {}).get("files", {}).values()]
    has_graphs = bool(graphs) and all(g.is_file() for g in graphs)
    if engine == "auto":
        engine = "onnx" if has_graphs and _has_onnxruntime() else "torch"
    if engine == "onnx":
        if not has_graphs:
            raise TimnetError(f"{folder}: no ONNX graphs (exported with --no-onnx?) — use --engine torch")
        if not _has_onnxruntime():
            raise TimnetError("--engine onnx needs onnxruntime: python3 -m pip install onnxruntime")
        runner = OnnxRunner(graphs)
    else:
        runner = TorchRunner(_torch_models(folder, card, units), device)
    return PortableModel(config, units, runner, str(folder), card)


def _has_onnxruntime() -> bool:
    import importlib.util

    return importlib.util.find_spec("onnxruntime") is not None


def _torch_models(folder: Path, card: dict, units: list[str]) -> dict[str, TIMNet]:
    from safetensors.torch import load_file

    tensors = load_file(folder / "model.safetensors")
    models = {}
    for unit in units:
        model = TIMNet(TIMNetConfig(**card["architecture"]))
        prefix = f"{unit}."
        model.load_state_dict({k[len(prefix) :]: v for k, v in tensors.items() if k.startswith(prefix)})
        models[unit] = model.eval()
    return models
