"""Configuration: one dataclass per stage, filled from `configs/<dataset>.toml` plus overrides.

The TOML files are the single source of per-dataset facts (class order, seed, signal length,
levels); code never repeats them. A run saves its effective config, so results carry their settings.
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

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib


@dataclass
class DatasetConfig:
    name: str
    classes: list[str]
    recipe: str = "folders"
    expected_count: int | None = None


@dataclass
class FeatureSettings:
    """Arguments of the authors' recipe, all explicit so library default changes cannot move them."""

    signal_length: int
    sample_rate: int
    res_type: str
    n_mfcc: int
    n_fft: int
    hop_length: int
    window: str
    center: bool
    pad_mode: str
    n_mels: int

    @property
    def frames(self) -> int:
        """MFCC frames per utterance (centred STFT: 1 + L // hop)."""
        return (
            1 + self.signal_length // self.hop_length
            if self.center
            else 1 + (self.signal_length - self.n_fft) // self.hop_length
        )


@dataclass
class ModelSettings:
    """[model]: the architecture (TIMNetConfig adds the class count and MFCC size)."""

    filters: int
    kernel_size: int
    levels: int
    dropout: float


@dataclass
class TrainSettings:
    """[train]: the authors' optimiser, batch, epochs and KFold seed, plus this project's choices
    (protocol, checkpoint policy, validation carve, early stopping, repeat seeds, compiling,
    how often the test fold's accuracy is logged)."""

    seed: int
    folds: int
    epochs: int
    batch_size: int
    lr: float
    beta1: float
    beta2: float
    eps: float
    label_smoothing: float
    protocol: str
    checkpoint: str
    val_fraction: float
    patience: int
    compile: str
    test_every: int
    recompute: str
    seeds: list[int] = field(default_factory=list)  # extra training seeds; none = the KFold seed

    PROTOCOLS = ("random", "speaker")
    CHECKPOINTS = ("last", "best-val", "best-test")
    SWITCHES = ("auto", "on", "off")  # compile, recompute

    def validate(self) -> None:
        if self.protocol not in self.PROTOCOLS:
            raise TimnetError(f"unknown protocol {self.protocol!r}; choose one of {', '.join(self.PROTOCOLS)}")
        if self.checkpoint not in self.CHECKPOINTS:
            raise TimnetError(
                f"unknown checkpoint policy {self.checkpoint!r}; choose one of {', '.join(self.CHECKPOINTS)}"
            )
        if self.folds < 2:
            raise TimnetError(f"folds must be at least 2 (got {self.folds})")
        if self.epochs < 1 or self.batch_size < 1:
            raise TimnetError("epochs and batch_size must be positive")
        for name in ("compile", "recompute"):
            if getattr(self, name) not in self.SWITCHES:
                raise TimnetError(
                    f"unknown {name} setting {getattr(self, name)!r}; choose one of {', '.join(self.SWITCHES)}"
                )
        if self.test_every < 0:
            raise TimnetError(f"test_every must be 0 (only at the end) or a number of epochs (got {self.test_every})")
        if not 0.0 < self.val_fraction < 0.5:
            raise TimnetError(f"val_fraction must be in (0, 0.5) (got {self.val_fraction})")

    @property
    def optimistic(self) -> bool:
        """best-test picks each fold's epoch on its test data: the paper's protocol, optimistic."""
        return self.checkpoint == "best-test"

    @property
    def checkpoint_label(self) -> str:
        """The policy as every output names it (workbooks, summary, CLI)."""
        return (
            f"{self.checkpoint} (OPTIMISTIC: epoch picked on the test fold, the paper's protocol)"
            if self.optimistic
            else self.checkpoint
        )

    @property
    def run_seeds(self) -> list[int]:
        return list(self.seeds) or [self.seed]


@dataclass
class Published:
    paper_uar: float = math.nan
    paper_war: float = math.nan
    update_2023_uar: float = math.nan
    update_2023_war: float = math.nan


# Settings that runs saved by earlier versions hold and that mean nothing now (the device is chosen when a
# command runs: --device); reading such a run ignores them.
RETIRED = {"train": ("device",)}
# Settings added after runs were saved: what such a run did before they existed. (The TOML files hold every
# setting; the dataclasses above have no defaults, so a missing one is an error, except these.)
INTRODUCED = {"train": {"compile": "off", "test_every": 1, "recompute": "off"}}


@dataclass
class Config:
    dataset: DatasetConfig
    features: FeatureSettings
    model: ModelSettings
    train: TrainSettings
    published: Published = field(default_factory=Published)

    @property
    def n_classes(self) -> int:
        return len(self.dataset.classes)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "Config":
        sections = {f.name: f.type for f in fields(cls)}
        kwargs = {}
        for name, section_cls in (
            ("dataset", DatasetConfig),
            ("features", FeatureSettings),
            ("model", ModelSettings),
            ("train", TrainSettings),
            ("published", Published),
        ):
            raw = {k: v for k, v in data.get(name, {}).items() if k not in RETIRED.get(name, ())}
            raw = {**INTRODUCED.get(name, {}), **raw}
            known = {f.name for f in fields(section_cls)}
            unknown = set(raw) - known
            if unknown:
                raise TimnetError(
                    f"unknown setting(s) in [{name}]: {', '.join(sorted(unknown))}; known: {', '.join(sorted(known))}"
                )
            try:
                kwargs[name] = section_cls(**raw)
            except TypeError as err:
                raise TimnetError(f"incomplete [{name}] section: {err}") from None
        assert set(kwargs) == set(sections)
        cfg = cls(**kwargs)
        cfg.train.validate()
        return cfg

    def with_overrides(self, overrides: dict[str, Any]) -> "Config":
        """Return a copy with `{"train.epochs": 2, ...}` applied, types coerced to the field's type."""
        data = self.to_dict()
        for key, value in overrides.items():
            if value is None:
                continue
            section, _, name = key.partition(".")
            if section not in data or name not in data[section]:
                raise TimnetError(f"unknown setting {key!r}; settings look like train.epochs or features.n_mfcc")
            data[section][name] = _coerce(key, value, data[section][name])
        return Config.from_dict(data)


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


def known_datasets() -> list[str]:
    return sorted(p.name[:-5].upper() for p in resources.files("timnet.configs").iterdir() if p.name.endswith(".toml"))


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
