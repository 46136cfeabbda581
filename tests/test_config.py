"""Settings: checked where they enter (one message format), one architecture description, earlier records read."""

from __future__ import annotations

import dataclasses
import re
from importlib import resources
from pathlib import Path

import numpy as np
import pytest
import tomllib

from timnet import load_config
from timnet.core.config import Config, DatasetConfig, FeatureSettings, TIMNetConfig, TrainSettings, known_datasets
from timnet.core.errors import TimnetError
from timnet.core.validation import check_choice, check_range, invalid


def test_check_range_names_the_setting_the_bound_and_the_value():
    assert check_range("train.epochs", 3, 1, integer=True) == 3
    assert check_range("train.lr", np.float32(0.5), 0, low_open=True) == 0.5  # NumPy scalars count
    assert check_range("train.folds", np.int64(5), 2, integer=True) == 5
    for args, kw, message in (
        (("train.epochs", -3, 1), {"integer": True}, "train.epochs: must be ≥ 1 (got -3)"),
        (("train.lr", 0, 0), {"low_open": True}, "train.lr: must be > 0 (got 0)"),
        (("model.dropout", 1.0, 0, 1), {"high_open": True}, "model.dropout: must be < 1 (got 1.0)"),
        (("x.p", 1.5, 0, 1), {}, "x.p: must be ≤ 1 (got 1.5)"),
        (("train.epochs", 2.5, 1), {"integer": True}, "train.epochs: must be an integer (got 2.5)"),
        (("train.epochs", True, 1), {"integer": True}, "train.epochs: must be an integer (got True)"),
        (("train.lr", "fast", 0), {}, "train.lr: must be a number (got 'fast')"),
    ):
        with pytest.raises(TimnetError) as err:
            check_range(*args, **kw)
        assert str(err.value) == message


def test_check_choice_and_invalid_share_the_format():
    assert check_choice("train.protocol", "speaker", ("random", "speaker")) == "speaker"
    with pytest.raises(TimnetError, match=r"^train\.protocol: must be one of random, speaker \(got 'x'\)$"):
        check_choice("train.protocol", "x", ("random", "speaker"))
    assert str(invalid("dataset.classes", "at least 2 class names", ["a"])) == (
        "dataset.classes: must be at least 2 class names (got ['a'])"
    )


@pytest.mark.parametrize(
    "setting, value, message",
    [
        ("train.epochs", -3, "train.epochs: must be ≥ 1 (got -3)"),
        ("train.batch_size", 0, "train.batch_size: must be ≥ 1 (got 0)"),
        ("train.folds", 1, "train.folds: must be ≥ 2 (got 1)"),
        ("train.lr", 0.0, "train.lr: must be > 0 (got 0.0)"),
        ("train.beta1", 1.0, "train.beta1: must be < 1 (got 1.0)"),
        ("train.label_smoothing", -0.1, "train.label_smoothing: must be ≥ 0 (got -0.1)"),
        ("train.val_fraction", 0.5, "train.val_fraction: must be < 0.5 (got 0.5)"),
        ("train.val_fraction", 0.0, "train.val_fraction: must be > 0 (got 0.0)"),
        ("train.patience", -1, "train.patience: must be ≥ 0 (got -1)"),
        ("train.test_every", -1, "train.test_every: must be ≥ 0 (got -1)"),
        ("train.checkpoint", "best", "train.checkpoint: must be one of last, best-val, best-test (got 'best')"),
        ("train.recompute", "maybe", "train.recompute: must be one of auto, on, off (got 'maybe')"),
        ("features.n_mfcc", 0, "features.n_mfcc: must be ≥ 1 (got 0)"),
        ("features.sample_rate", -1, "features.sample_rate: must be ≥ 1 (got -1)"),
        ("features.hop_length", 0, "features.hop_length: must be ≥ 1 (got 0)"),
        ("model.levels", 0, "model.levels: must be ≥ 1 (got 0)"),
        ("model.filters", 0, "model.filters: must be ≥ 1 (got 0)"),
        ("model.dropout", 1.0, "model.dropout: must be < 1 (got 1.0)"),
        ("dataset.reader", "nope", "dataset.reader: must be one of emodb, ravdess, savee, emovo, iemocap, casia, "),
        ("dataset.classes", ["a", "a"], "dataset.classes: must be at least 2 class names, none repeated"),
    ],
)
def test_every_section_is_checked_on_load_and_from_dict(setting, value, message):
    with pytest.raises(TimnetError) as err:
        load_config("EMODB", {setting: value})
    assert str(err.value).startswith(message)
    data = load_config("EMODB").to_dict()
    section, _, key = setting.partition(".")
    data[section][key] = value
    with pytest.raises(TimnetError) as err:
        Config.from_dict(data)
    assert str(err.value).startswith(message)


def test_one_architecture_derived_from_the_dataset_and_features():
    cfg = load_config("EMODB", {"dataset.classes": "a,b,c", "features.n_mfcc": 20})
    assert isinstance(cfg.model, TIMNetConfig)
    assert (cfg.model.n_classes, cfg.model.n_mfcc, cfg.model.levels) == (3, 20, 8)
    assert TIMNetConfig.from_config(cfg) == cfg.model and TIMNetConfig.from_config(cfg) is not cfg.model
    from timnet.model.network import TIMNetConfig as same

    assert same is TIMNetConfig
    with pytest.raises(TimnetError, match=r"^model\.n_classes: must be left out: it is derived from dataset\.classes"):
        load_config("EMODB", {"model.n_classes": 3})
    with pytest.raises(TimnetError, match=r"^model\.n_mfcc: must be left out: it is derived from features\.n_mfcc"):
        load_config("EMODB", {"model.n_mfcc": "20"})
    with pytest.raises(TimnetError, match="model.n_classes: must be left out"):
        dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, n_classes=7))


def test_saved_configs_and_architectures_of_earlier_versions_still_read():
    cfg = load_config("EMODB")
    saved = cfg.to_dict()
    assert saved["model"] == {
        "n_classes": 7,
        "n_mfcc": 39,
        "filters": 39,
        "kernel_size": 2,
        "levels": 8,
        "dropout": 0.1,
        "directions": "both",  # the paper's ablations, since issue 37: TIM-Net itself by default
        "fusion": "dynamic",
        "gate": True,
    }
    assert Config.from_dict(saved) == cfg  # run records and exported folders: the whole [model]
    six = {k: v for k, v in saved["model"].items() if k not in ("directions", "fusion", "gate")}
    assert TIMNetConfig(**six) == cfg.model  # models saved before the ablations were settings: TIM-Net itself
    earlier = dataclasses.replace(cfg).to_dict()
    earlier["dataset"]["recipe"] = earlier["dataset"].pop("reader")  # `recipe` until the reader was named so
    del earlier["model"]["n_classes"], earlier["model"]["n_mfcc"]  # the four-field [model] of earlier versions
    assert Config.from_dict(earlier) == cfg
    typed = {"filters": 39, "kernel_size": 2, "levels": 8, "dropout": 0.1, "directions": "both", "fusion": "dynamic"}
    assert cfg.settings()["model"] == typed | {"gate": True}  # as typed
    assert Config.from_dict(cfg.settings()) == cfg
    assert TIMNetConfig(**saved["model"]) == cfg.model  # fold checkpoints' model_config, exports' architecture
    assert load_config("EMODB", {"dataset.recipe": "folders"}).dataset.reader == "folders"
    bad = cfg.to_dict()
    bad["model"]["n_classes"] = 5  # a record whose architecture disagrees with its classes
    with pytest.raises(TimnetError, match=r"model\.n_classes: must be left out.* \(got 5\)"):
        Config.from_dict(bad)


def test_readers_named_by_configs_are_the_corpus_registry():
    from timnet.data.corpora import CORPORA

    assert set(DatasetConfig.READERS) == set(CORPORA)
    assert all(load_config(name).dataset.reader in CORPORA for name in known_datasets())


def test_toml_comments_say_what_the_code_does():
    """The compile setting's comment (beside its default, in core/train_settings.py) quotes the thresholds the code
    uses (it once said 200 for every device); the TOMLs hold only what differs for their corpus."""
    import timnet.core.train_settings
    from timnet.training.compiling import COMPILE_MIN_EPOCHS

    cpu, cuda = COMPILE_MIN_EPOCHS["cpu"], COMPILE_MIN_EPOCHS["cuda"]
    said = f"auto (a worker's units together, of >= {cpu} epochs on CPU, >= {cuda} on CUDA)"
    assert said in Path(timnet.core.train_settings.__file__).read_text()
    defaults = {"train": TrainSettings(), "features": FeatureSettings()}
    for toml in resources.files("timnet.configs").iterdir():
        if toml.name.endswith(".toml"):
            text = toml.read_text(encoding="utf-8")
            data = tomllib.loads(text)
            for section, default in defaults.items():
                same = [k for k, v in data.get(section, {}).items() if getattr(default, k) == v]
                assert not same, f"{toml.name}: [{section}] {same} repeat the defaults"
            assert not re.search(r"^recipe\s*=", text, re.M), f"{toml.name}: `recipe` is now `reader`"
