"""Configuration: one dataclass per stage, filled from `configs/<dataset>.toml` plus overrides.

Every setting has its default here (the authors' values, EMO-DB's where corpora differ); `configs/<dataset>.toml`
holds only what differs for that corpus (class order, KFold seed, signal length, levels, published numbers). A run
saves its whole effective config, so results carry their settings, and older runs read as they were (INTRODUCED).
"""

from __future__ import annotations

import dataclasses
import math
import sys
from dataclasses import dataclass, field, fields
from importlib import resources
from pathlib import Path
from typing import Any

from .errors import TimnetError
from .layout_check import check_layout
from .train_settings import TrainSettings
from .validation import check_bool, check_choice, check_range, invalid

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib


@dataclass
class DatasetConfig:
    """[dataset]: the corpus, the reader of its distributed layout, and the class order (= label index)."""

    name: str
    classes: list[str]
    reader: str = "folders"
    expected_count: int | None = None
    # reader "pattern" (your own corpus; README "Your own corpus"): where label, speaker and sentence come from
    pattern: str = ""  # regex searched in the path under the corpus root: (?P<label>) (?P<speaker>) (?P<sentence>)
    label_level: int | None = None  # or: the folder at this depth is the label (0 = top, -1 = the file's folder)
    speaker_level: int | None = None  # the folder at this depth is the speaker
    sentence_level: int | None = None  # the folder at this depth is the sentence (text) id
    label_map: dict[str, str] = field(default_factory=dict)  # code in names -> class name, e.g. ps = "surprise"
    drop: list[str] = field(default_factory=list)  # labels (codes or classes) left out of the task

    READERS = ("emodb", "ravdess", "savee", "emovo", "iemocap", "casia", "folders", "pattern")  # corpora.CORPORA

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name:
            raise invalid("dataset.name", "a non-empty name", self.name)
        names = self.classes
        if not isinstance(names, (list, tuple)) or not all(isinstance(c, str) and c for c in names):
            raise invalid("dataset.classes", "a list of class names", names)
        if len(set(names)) < 2 or len(set(names)) != len(names):
            raise invalid("dataset.classes", "at least 2 class names, none repeated", names)
        check_choice("dataset.reader", self.reader, self.READERS)
        if self.expected_count is not None:
            check_range("dataset.expected_count", self.expected_count, 0, integer=True)
        check_layout(self)


@dataclass
class FeatureSettings:
    """Arguments of the authors' recipe, all explicit so library default changes cannot move them.
    Names (res_type, window, pad_mode) stay free: librosa knows its own and says so."""

    signal_length: int = 96000  # samples after centred pad/crop -> 188 MFCC frames
    sample_rate: int = 22050
    res_type: str = "soxr_hq"
    n_mfcc: int = 39
    n_fft: int = 2048
    hop_length: int = 512
    window: str = "hann"
    center: bool = True
    pad_mode: str = "constant"
    n_mels: int = 128

    def __post_init__(self) -> None:
        for key in ("sample_rate", "signal_length", "n_mfcc", "n_fft", "hop_length", "n_mels"):
            check_range(f"features.{key}", getattr(self, key), 1, integer=True)
        check_bool("features.center", self.center)

    @property
    def frames(self) -> int:
        """MFCC frames per utterance (centred STFT: 1 + L // hop)."""
        return (
            1 + self.signal_length // self.hop_length
            if self.center
            else 1 + (self.signal_length - self.n_fft) // self.hop_length
        )


@dataclass
class TIMNetConfig:
    """The architecture, one description for the [model] section and the network (`timnet.model.network.TIMNet`).

    In a Config, n_classes and n_mfcc are derived from dataset.classes and features.n_mfcc (never typed
    twice); a saved or exported model stores them all, so `TIMNetConfig(**saved)` rebuilds it alone. The last
    three are the paper's ablations (its Table 3); the defaults are TIM-Net itself, the model the authors' weights
    load into.
    """

    n_classes: int = 7
    n_mfcc: int = 39
    filters: int = 39
    kernel_size: int = 2
    levels: int = 8
    dropout: float = 0.1
    directions: str = "both"  # both (bi-direction: as recorded and time-reversed) | forward (w/o BD)
    fusion: str = "dynamic"  # dynamic (learnt weight per level) | mean (levels averaged, w/o DF) | last (w/o MS)
    gate: bool = True  # the temporal-aware gate x * sigmoid(h) in every block; false: the block gives h (w/o TAB)

    DIRECTIONS = ("both", "forward")
    FUSIONS = ("dynamic", "mean", "last")

    def __post_init__(self) -> None:
        for key in ("n_classes", "n_mfcc", "filters", "kernel_size", "levels"):
            check_range(f"model.{key}", getattr(self, key), 1, integer=True)
        check_range("model.dropout", self.dropout, 0, 1, high_open=True)
        check_choice("model.directions", self.directions, self.DIRECTIONS)
        check_choice("model.fusion", self.fusion, self.FUSIONS)
        check_bool("model.gate", self.gate)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_config(cls, config: "Config") -> "TIMNetConfig":
        """The architecture of a Config (a copy: a model keeps its own)."""
        return dataclasses.replace(config.model)


@dataclass
class Published:
    """[published]: the paper's and the authors' 2023 numbers (UAR / WAR in %), shown beside a run's."""

    paper_uar: float = math.nan
    paper_war: float = math.nan
    update_2023_uar: float = math.nan
    update_2023_war: float = math.nan

    def __post_init__(self) -> None:
        for f in fields(self):
            check_range(f"published.{f.name}", getattr(self, f.name), 0, 100)  # NaN (none published) passes


@dataclass
class LogSettings:
    """[log]: where training curves go besides each unit's CSV and PNG (`training.trackers`)."""

    tensorboard: bool = True  # scalars per epoch under logs/<run>/<unit>/: `tensorboard --logdir logs`
    mlflow: bool = False  # also an MLflow run per unit, in a local store (logs/mlruns); needs the mlflow extra

    def __post_init__(self) -> None:
        check_bool("log.tensorboard", self.tensorboard)
        check_bool("log.mlflow", self.mlflow)


# Settings that runs saved by earlier versions hold and that mean nothing now (the device is chosen when a
# command runs: --device); reading such a run ignores them.
RETIRED = {"train": ("device",)}
# Settings added after runs were saved: what such a run did before they existed (a saved run holds every setting
# of its day; a TOML file holds only what differs from the defaults above, the authors' values).
INTRODUCED = {
    "train": {"compile": "off", "test_every": 1, "recompute": "off", "pack": "1", "capture": "off", "blas": "torch"}
}
# Settings renamed since runs were saved: old name -> new name, mapped on read.
RENAMED = {"dataset": {"recipe": "reader"}}
# Settings that follow from others (-> where from): saved with the model, never typed or overridden.
DERIVED = {"model": {"n_classes": "dataset.classes", "n_mfcc": "features.n_mfcc"}}
# The sections of a config file, in the order they are read (the model's derived settings need the first two).
SECTIONS = {
    "dataset": DatasetConfig,
    "features": FeatureSettings,
    "model": TIMNetConfig,
    "train": TrainSettings,
    "published": Published,
    "log": LogSettings,
}


@dataclass
class Config:
    dataset: DatasetConfig
    features: FeatureSettings
    model: TIMNetConfig
    train: TrainSettings
    published: Published = field(default_factory=Published)
    log: LogSettings = field(default_factory=LogSettings)

    def __post_init__(self) -> None:
        for key, value in (("n_classes", self.n_classes), ("n_mfcc", self.features.n_mfcc)):
            if getattr(self.model, key) != value:
                raise _derived_error(f"model.{key}", getattr(self.model, key))

    @property
    def n_classes(self) -> int:
        return len(self.dataset.classes)

    def to_dict(self) -> dict[str, Any]:
        """Everything, the derived model.n_classes / n_mfcc too: run records and exported folders carry the whole
        architecture."""
        return dataclasses.asdict(self)

    def settings(self) -> dict[str, Any]:
        """What a user sets (a TOML's content): `to_dict` without the derived fields, which `from_dict` derives
        again from the (maybe changed) settings they follow."""
        data = self.to_dict()
        for name in DERIVED["model"]:
            del data["model"][name]
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "Config":
        """A Config from a TOML file's or a saved run's dict; what earlier versions saved reads too (RETIRED,
        INTRODUCED, RENAMED), and the model's n_classes and n_mfcc are derived when absent."""
        sections: dict[str, Any] = {}
        saved = "n_classes" in data.get("model", {})  # a saved run's record: its config is whole, of its day
        for name, section_cls in SECTIONS.items():
            raw = _section(name, data.get(name, {}), section_cls, saved)
            if name == "model":
                raw = {"n_classes": len(sections["dataset"].classes), "n_mfcc": sections["features"].n_mfcc, **raw}
            try:
                sections[name] = section_cls(**raw)
            except TypeError as err:
                raise TimnetError(f"incomplete [{name}] section: {err}") from None
        return cls(**sections)

    def with_overrides(self, overrides: dict[str, Any]) -> "Config":
        """Return a copy with `{"train.epochs": 2, ...}` applied, types coerced to the field's type."""
        data = self.settings()
        for key, value in overrides.items():
            if value is None:
                continue
            section, _, name = key.partition(".")
            name = RENAMED.get(section, {}).get(name, name)
            if name in DERIVED.get(section, {}):
                raise _derived_error(key, value)
            if section not in data or name not in data[section]:
                raise TimnetError(f"unknown setting {key!r}; settings look like train.epochs or features.n_mfcc")
            data[section][name] = _coerce(key, value, data[section][name])
        return Config.from_dict(data)


def _section(name: str, given: dict[str, Any], section_cls: type, saved: bool) -> dict[str, Any]:
    """One section's settings as `section_cls` names them today; an unknown one is an error. A saved run's missing
    settings are what it did before they existed (INTRODUCED); a TOML's, the defaults."""
    raw = {k: v for k, v in given.items() if k not in RETIRED.get(name, ())}
    for old, new in RENAMED.get(name, {}).items():
        if old in raw:
            raw.setdefault(new, raw.pop(old))
    raw = {**(INTRODUCED.get(name, {}) if saved else {}), **raw}
    known = {f.name for f in fields(section_cls)}
    unknown = set(raw) - known
    if unknown:
        raise TimnetError(
            f"unknown setting(s) in [{name}]: {', '.join(sorted(unknown))}; known: {', '.join(sorted(known))}"
        )
    return raw


def _derived_error(key: str, value: Any) -> TimnetError:
    section, _, name = key.partition(".")
    return invalid(key, f"left out: it is derived from {DERIVED[section][name]}", value)


def _coerce(key: str, value: Any, current: Any) -> Any:
    """A `--set` string as the type of the setting it replaces; one clear error when it is not one."""
    if not isinstance(value, str) or isinstance(current, str):
        return value
    if isinstance(current, list):
        items = [v.strip() for v in value.split(",") if v.strip()]
        kind = type(current[0]) if current else int
        return [_coerce(f"{key}[{i}]", v, kind()) if kind is not str else v for i, v in enumerate(items)]
    if isinstance(current, bool):
        if value.lower() in ("1", "true", "yes", "on"):
            return True
        if value.lower() in ("0", "false", "no", "off"):
            return False
        raise TimnetError(f"{key}: {value!r} is not true or false")
    for kind, name in ((int, "an integer"), (float, "a number")):
        if isinstance(current, kind):
            try:
                return kind(value)
            except ValueError:
                raise TimnetError(f"{key}: {value!r} is not {name}") from None
    return value


# Short names of training settings: the CLI's options, the notebooks' parameters and sweep grid keys.
TRAIN_SHORTCUTS = {
    name: f"train.{name}"
    for name in ("folds", "epochs", "batch_size", "protocol", "checkpoint", "seeds", "patience", "compile")
}


def shortcut_overrides(values: dict[str, Any]) -> dict[str, Any]:
    """`{"folds": 2, "epochs": None}` -> `{"train.folds": 2}`: None means "the dataset's own setting"."""
    return {TRAIN_SHORTCUTS[name]: value for name, value in values.items() if value is not None}


def known_datasets() -> list[str]:
    return sorted(p.name[:-5].upper() for p in resources.files("timnet.configs").iterdir() if p.name.endswith(".toml"))


def read_toml(path: Path, what: str) -> dict:
    """A TOML file (a grid, a study) as a dict, or one line: missing, not TOML."""
    path = Path(path)
    try:
        return tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise TimnetError(f"{path}: no such {what}") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as err:
        raise TimnetError(f"{path}: not valid TOML ({err})") from None


def load_config(source: str | Path, overrides: dict[str, Any] | None = None) -> Config:
    """Load a config by dataset name (`EMODB`) or TOML path (`configs/emodb.toml`)."""
    path = Path(source)
    if path.suffix == ".toml":
        if not path.is_file():
            raise TimnetError(f"{path}: config file not found — see configs/ for examples")
        text = path.read_text(encoding="utf-8")
    else:
        candidate = resources.files("timnet.configs") / f"{str(source).lower()}.toml"
        if not candidate.is_file():
            raise TimnetError(f"unknown dataset {source!r}; known: {', '.join(known_datasets())}, or pass a .toml path")
        text = candidate.read_text(encoding="utf-8")
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as err:
        raise TimnetError(f"{source}: invalid TOML ({err})") from None
    cfg = Config.from_dict(data)
    return cfg.with_overrides(overrides) if overrides else cfg
