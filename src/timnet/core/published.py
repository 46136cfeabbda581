"""Whether a run's numbers may stand beside the published ones: the published-number gate.

The paper's numbers (best epoch on the test fold) and the authors' 2023 update (last epoch) were measured on the
complete corpus as distributed (its own sample rate and lengths), the authors' sample order, their random 10-fold
KFold with their seed, and their training and model settings. A run that differs in any of these measured
something else, so its published columns hold the reasons instead ("not comparable: 5 folds, speaker protocol").
`not_comparable` is a pure function of the run's saved config and of what its feature file records
(`FeatureFacts`, gathered by `data.feature_facts`); the dataset's own config (`configs/<corpus>.toml`) is the
reference.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields

from .config import Config, load_config
from .errors import TimnetError

# source (the prefix of its [published] keys) -> (what outputs call it, the checkpoint policy it was measured with)
PUBLISHED = {"paper": ("paper", "best-test"), "update_2023": ("authors' 2023 update", "last")}
TRAINING = ("folds", "epochs", "seed", "lr", "batch_size", "beta1", "beta2", "eps", "label_smoothing")
# The training step's settings beyond the authors' (`TrainSettings`: optimiser, schedule, class weights, speaker
# normalisation, augmentation): any but the dataset's default trains something the authors did not.
STEP = (
    "optimizer",
    "weight_decay",
    "class_weights",
    "lr_schedule",
    "normalize",
    "time_masks",
    "coefficient_masks",
    "mixup",
)
NOT_PUBLISHED = "not published"


@dataclass(frozen=True)
class FeatureFacts:
    """What a run's feature file says of its utterances and their audio.

    found / complete: utterances of the complete corpus the file holds, and how many the corpus has (None: unknown);
    extra: utterances the file holds that are not in the corpus's list;
    order: why the sample order is not the authors' ("" when it is); authors_features: the authors' own MFCC file
    (their audio and recipe, whatever the rates); source_rates: the sample rates of the source audio files (None:
    not recorded); distributed_rate: the rate the corpus is distributed at (None: unknown); source_seconds: the
    shortest and longest source file (None: not recorded)."""

    found: int
    complete: int | None = None
    extra: int = 0
    order: str = ""
    authors_features: bool = False
    source_rates: tuple[int, ...] | None = None
    distributed_rate: int | None = None
    source_seconds: tuple[float, float] | None = None


def audio_reasons(facts: FeatureFacts) -> list[str]:
    """Why the utterances or their audio are not the published setting's ([] when they are)."""
    reasons = []
    if facts.complete is not None and facts.found != facts.complete:
        reasons.append(f"{facts.found} of {facts.complete} utterances")
    if facts.extra:
        reasons.append(f"{facts.extra} utterances not in the corpus")
    if facts.order:
        reasons.append(facts.order)
    if facts.authors_features:
        return reasons
    rates = facts.source_rates
    if rates is None:
        reasons.append("source sample rate unknown")
    elif facts.distributed_rate is not None and set(rates) != {facts.distributed_rate}:
        at = ", ".join(str(r) for r in rates)
        reasons.append(f"audio resampled to {at} Hz (distributed at {facts.distributed_rate} Hz)")
    seconds = facts.source_seconds
    if seconds is not None and facts.found + facts.extra > 1 and seconds[0] == seconds[1]:
        reasons.append(f"audio trimmed to {seconds[0]:.2f} s")
    return reasons


def _differs(section: str, saved: dict, reference: object, names: tuple[str, ...]) -> list[str]:
    """`section.name value` for each setting of `names` whose saved value is not the reference's."""
    return [
        f"{section}.{name} {saved[name]}" for name in names if name in saved and saved[name] != getattr(reference, name)
    ]


def config_reasons(config: dict, defaults: Config, policy: str, source: str) -> list[str]:
    """Why a run's saved config (`Config.to_dict()`, as its record holds it), read at checkpoint `policy`, is not
    the setting `source` (a key of PUBLISHED) was measured with ([] when it is)."""
    train, reference = config["train"], defaults.train
    reasons = []
    if train["protocol"] != "random":
        reasons.append(f"{train['protocol']} protocol")
    if train["folds"] != reference.folds:
        reasons.append(f"{train['folds']} folds")
    if train["epochs"] != reference.epochs:
        reasons.append(f"{train['epochs']} epoch{'s' * (train['epochs'] != 1)}")
    if train["seed"] != reference.seed:
        reasons.append(f"seed {train['seed']} (the authors': {reference.seed})")
    reasons += _differs("train", train, reference, TRAINING[3:] + STEP)
    if train.get("patience", 0):
        reasons.append(f"early stopping (patience {train['patience']})")
    elif train.get("checkpoint") == "best-val" or train.get("calibrate"):  # whatever policy it is read at
        carved = train.get("val_fraction", reference.val_fraction)
        reasons.append(f"validation held out of each training part (train.val_fraction {carved})")
    measured = PUBLISHED[source][1]
    if policy != measured:
        reasons.append(f"checkpoint {policy} (the {PUBLISHED[source][0]}'s: {measured})")
    if config["dataset"]["classes"] != defaults.dataset.classes:
        reasons.append(f"classes {', '.join(config['dataset']['classes'])}")
    reasons += _differs("model", config["model"], defaults.model, tuple(f.name for f in fields(defaults.model)))
    reasons += _differs(
        "features", config["features"], defaults.features, tuple(f.name for f in fields(defaults.features))
    )
    return reasons


def not_comparable(
    config: dict,
    facts: FeatureFacts,
    policy: str,
    source: str = "paper",
    quick: bool = False,
    defaults: Config | None = None,
) -> list[str]:
    """Every reason the run (its saved config, its feature file's `facts`, read at checkpoint `policy`; `quick`: a
    quick study's) may not stand beside the `source` published numbers; [] means comparable. `defaults`: the
    dataset's own config (default: loaded by its name)."""
    if defaults is None:
        try:
            defaults = load_config(config["dataset"]["name"])
        except TimnetError:
            return [f"no configs/{config['dataset']['name'].lower()}.toml to compare with"]
    return (["quick study"] if quick else []) + config_reasons(config, defaults, policy, source) + audio_reasons(facts)


def verdict(reasons: list[str]) -> str:
    """'comparable', or 'not comparable: <reason>, <reason>' as every output prints it."""
    return f"not comparable: {', '.join(reasons)}" if reasons else "comparable"


def published_numbers(published: object, source: str) -> dict[str, float]:
    """{"war": ..., "uar": ...} of a source from a config's Published (NaN where none was published)."""
    return {metric: float(getattr(published, f"{source}_{metric}")) for metric in ("war", "uar")}


def published_cell(value: float, reasons: list[str]) -> float | str:
    """What a published column holds: the number where the run is comparable, else the reason; never NaN."""
    if value is None or math.isnan(value):
        return NOT_PUBLISHED
    return verdict(reasons) if reasons else value


def number_text(value: float | str, fmt: str = ".2f") -> str:
    """A published number (or a difference) as people read it: 'not published' for NaN, never 'nan'."""
    if isinstance(value, str):
        return value
    return NOT_PUBLISHED if value is None or math.isnan(value) else format(value, fmt)
