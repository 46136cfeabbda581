"""A trained model ready to predict: its fold models with the config they were trained with, run by PyTorch or
by onnxruntime with the same answers. Make one with `timnet.load_model` (any source: `loading`).

model.predict(["a.wav", "b.wav"])        # the table `timnet predict` prints
model.inputs(mfcc)                       # what the model reads: as computed, or normalised as one speaker
model.predict_proba(mfcc)                # [N, T, F] model inputs -> [N, K], mean over the fold models
model.embed(mfcc)                        # [N, C] penultimate layer (one fold model's)
model.unit_outputs("fold_3", mfcc)       # one fold model's (probabilities, embeddings), e.g. on its test files

A model trained with `train.normalize = speaker` reads each speaker's MFCCs standardised by that speaker's own
statistics: `predict` (and `timeline`) take the audio given together as one speaker's and say so in the table's
`attrs["note"]`; `predict_proba`, `embed` and the ONNX graphs take MFCCs already so normalised (`inputs`).
"""

from __future__ import annotations

import re
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from ..core.config import Config
from ..core.errors import BadAudioError, TimnetError
from ..data.mfcc_extraction import extract_many
from ..data.speaker_normalization import normalize_as_one_speaker, normalize_by_speaker
from ..model.inference import infer
from ..model.network import TIMNet
from .model_folder import ONNX_INPUT, ONNX_OUTPUTS

LONG_FACTOR = 2.0  # warn when a file is this many times longer than the training length
UNIT_NAME = re.compile(r"^fold_(\d+)(?:_cell\d+)?(?:_seed(\d+))?$")  # cells: speaker-sentence


@dataclass(frozen=True)
class Unit:
    """One fold model: its name (`fold_<k>`, or `fold_<k>_seed<s>` in a run of several seeds), its fold k and the
    seed it was trained with (for the authors' weights: their KFold seed; None when unknown)."""

    name: str
    fold: int
    seed: int | None = None

    @classmethod
    def from_name(cls, name: str, seed: int | None = None) -> "Unit":
        m = UNIT_NAME.match(name)
        if m is None:
            raise TimnetError(f"{name!r}: not a fold model name (fold_<k>, or fold_<k>_seed<s>)")
        return cls(name, int(m.group(1)), int(m.group(2)) if m.group(2) else seed)


def select_units(units: list[Unit], fold: int | None = None, seed: int | None = None, source: str = "") -> list[Unit]:
    """The one place fold models are chosen: those of fold `fold` and of training seed `seed` (None: any)."""
    chosen = [u for u in units if (fold is None or u.fold == fold) and (seed is None or u.seed == seed)]
    if chosen:
        return chosen
    asked = " and ".join(f"{what} {v}" for what, v in (("fold", fold), ("seed", seed)) if v is not None)
    folds = ", ".join(map(str, sorted({u.fold for u in units})))
    seeds = ", ".join(map(str, sorted({u.seed for u in units if u.seed is not None})))
    has = f"folds {folds}" + (f"; seeds {seeds}" if seeds else "")
    raise TimnetError(f"{source}: no model of {asked or 'any fold'} (it has {has or 'none'}) — choose one of those")


class TorchRunner:
    """The fold models in PyTorch (CPU, CUDA or MPS)."""

    name = "torch"

    def __init__(self, models: dict[str, TIMNet], device: str = "auto", batch_size: int = 256):
        self.models, self.device, self.batch_size = models, device, batch_size

    def __call__(self, x: np.ndarray, units: list[str]) -> tuple[np.ndarray, np.ndarray]:
        outputs = [infer(self.models[u], x, self.batch_size, self.device) for u in units]
        return np.stack([p for p, _ in outputs], 1), np.stack([e for _, e in outputs], 1)


class OnnxRunner:
    """The folder's ONNX graphs, one session per fold model, in onnxruntime (CUDA when onnxruntime-gpu has it)."""

    name = "onnx"

    def __init__(self, paths: dict[str, Path], batch_size: int = 256):
        import onnxruntime as ort

        wanted = ("CUDAExecutionProvider", "CPUExecutionProvider")
        providers = [p for p in wanted if p in ort.get_available_providers()]
        self.sessions = {u: ort.InferenceSession(str(p), providers=providers) for u, p in paths.items()}
        self.batch_size = batch_size

    def __call__(self, x: np.ndarray, units: list[str]) -> tuple[np.ndarray, np.ndarray]:
        probs, embs = [], []
        for unit in units:
            parts = [
                self.sessions[unit].run(
                    list(ONNX_OUTPUTS), {ONNX_INPUT: np.ascontiguousarray(x[i : i + self.batch_size])}
                )
                for i in range(0, len(x), self.batch_size)
            ]
            probs.append(np.concatenate([p for p, _ in parts]))
            embs.append(np.concatenate([e for _, e in parts]))
        return np.stack(probs, 1), np.stack(embs, 1)


class PortableModel:
    """Fold models with the config they were trained with; the same answers from either engine.

    `units`: the fold models' names; `fold_of` / `seed_of`: unit -> its fold / training seed; `kfold_seed`: the
    KFold seed of the authors' folds (their weights' name, EMODB_46 -> 46), None for other models."""

    def __init__(
        self,
        config: Config,
        units: list[Unit],
        runner,
        source: str,
        card: dict | None = None,
        kfold_seed: int | None = None,
    ):
        self.config, self.runner, self.source, self.card, self.kfold_seed = config, runner, source, card, kfold_seed
        self.classes = list(config.dataset.classes)
        self.unit_list = list(units)
        self.units = [u.name for u in units]
        self.fold_of = {u.name: u.fold for u in units}
        self.seed_of = {u.name: u.seed for u in units}

    @property
    def engine(self) -> str:
        return self.runner.name

    @property
    def fold_models(self) -> dict[str, TIMNet]:
        """{unit: torch model} (the torch engine's), e.g. to export them or to look inside."""
        if not hasattr(self.runner, "models"):
            raise TimnetError(
                f"{self.source}: loaded with engine {self.engine}; load with engine='torch' for its torch models"
            )
        return self.runner.models

    @property
    def normalize(self) -> str:
        """What the model reads (`train.normalize`): MFCCs as computed (none), or normalised per speaker."""
        return self.config.train.normalize

    def inputs(self, mfcc, speakers=None) -> np.ndarray:
        """MFCCs [N, T, F] as the model reads them: as computed (normalize none: the very array), or each speaker's
        standardised by their own statistics (`speakers`: one per utterance; None: all of one speaker)."""
        x = self._check(mfcc)
        if self.normalize == "none":
            return x
        return normalize_as_one_speaker(x) if speakers is None else normalize_by_speaker(x, speakers)

    def given_together(self, mfcc, what: str = "file", where: str = "given") -> tuple[np.ndarray, str | None]:
        """(model inputs of utterances given together, the line that says how they were normalised, or None): a
        speaker-normalised model takes them as ONE speaker; from one utterance alone it warns (weak statistics)."""
        x = self.inputs(mfcc)
        if self.normalize == "none" or not len(x):
            return x, None
        if len(x) == 1:
            warnings.warn(
                f"speaker-normalised model: the statistics of one {what} alone are weak; give several of the "
                "same speaker together",
                stacklevel=3,
            )
        return x, (
            f"speaker-normalised model: the {len(x)} {what}s {where} are normalised together as one speaker (the mean "
            "and std of each coefficient over all their frames)"
        )

    def _check(self, mfcc) -> np.ndarray:
        x = np.asarray(mfcc, dtype=np.float32)
        f = self.config.features.n_mfcc
        if x.ndim != 3 or x.shape[2] != f:
            raise TimnetError(f"expected MFCCs shaped [N, T, {f}], got {list(x.shape)}")
        return x

    def fold_outputs(self, mfcc, units: list[str] | None = None) -> tuple[np.ndarray, np.ndarray]:
        """(probabilities [N, M, K], embeddings [N, M, C]) of each of the M fold models (or of `units`)."""
        units = self.units if units is None else units
        unknown = [u for u in units if u not in self.fold_of]
        if unknown:
            raise TimnetError(f"{self.source}: no fold model {unknown[0]!r} (it has {', '.join(self.units)})")
        return self.runner(self._check(mfcc), units)

    def unit_outputs(self, unit: str, mfcc) -> tuple[np.ndarray, np.ndarray]:
        """(probabilities [N, K], embeddings [N, C]) of one fold model, e.g. on the files it was tested on."""
        probs, embs = self.fold_outputs(mfcc, [unit])
        return probs[:, 0], embs[:, 0]

    def chosen(self, fold: int | None = None) -> list[str]:
        """The fold models of fold `fold` (all for None)."""
        return [u.name for u in select_units(self.unit_list, fold, source=self.source)]

    def predict_proba(self, mfcc, fold: int | None = None) -> np.ndarray:
        """[N, T, F] model inputs (`inputs`) -> [N, K] class probabilities: the mean over the fold models (or fold
        `fold`'s)."""
        probs, _ = self.fold_outputs(mfcc, self.chosen(fold))
        return probs.mean(1)

    def embed(self, mfcc, fold: int | None = None) -> np.ndarray:
        """[N, T, F] MFCCs -> [N, C]: the penultimate layer of the first fold model (or of fold `fold`'s).

        Fold models' embedding spaces differ by a rotation, so they are not averaged (`timnet tsne` aligns them).
        """
        return self.unit_outputs(self.chosen(fold)[0], mfcc)[1]

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
        """Audio files -> a table: file, predicted emotion, its probability, the probability of every class; a
        speaker-normalised model takes the files as one speaker's and says so in `attrs["note"]`."""
        files = [Path(f) for f in files]
        if not files:
            raise TimnetError("no audio files given")
        x, kept = self.features(files, workers, skip_bad, progress)
        x, note = self.given_together(x)
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
        if note:
            table.attrs["note"] = note
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
