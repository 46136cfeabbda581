"""The `timnet` command's options. Every choice and default comes from the library (settings classes, module
constants, the TOMLs), so the help cannot drift from what the code does; timnet.cli runs the commands."""

from __future__ import annotations

import argparse
import functools
from pathlib import Path

from .analysis.tsne import ALIGNMENTS, PERPLEXITY, TSNE_SEED
from .core.config import TrainSettings, load_config
from .core.version import __version__
from .serving.loading import ENGINES
from .serving.timeline import HOP_SECONDS, SILENCE_DB
from .training.compiling import COMPILE_MIN_EPOCHS
from .training.device_timing import DEVICE_SECONDS
from .training.run import BACKENDS

DEVICES = (
    "auto (training: the fastest `timnet devices` measured; else CUDA, then MPS, then CPU), cpu, cuda, cuda:1, mps"
)


def _config_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--dataset", help="dataset name (EMODB, RAVDESS, ...) or configs/<name>.toml")
    p.add_argument("--config", type=Path, help="a TOML config (default: the built-in one of --dataset)")
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="SECTION.KEY=VALUE",
        help="override any config value, e.g. --set features.res_type=soxr_vhq (repeatable)",
    )


def _audio_args(p: argparse.ArgumentParser) -> None:
    """Options of every command that may compute features from audio."""
    p.add_argument(
        "--workers",
        type=int,
        help="processes for feature extraction (default: all cores); the pipeline (`run`): and for training units",
    )
    p.add_argument(
        "--skip-bad", action="store_true", help="skip unreadable/silent/misnamed files and list them in the manifest"
    )
    p.add_argument("--trust-pickle", action="store_true", help="allow reading a pickled .npy not written by timnet")
    _quiet_arg(p)


def _quiet_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--quiet", action="store_true", help="no progress bar")


def _device_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--device", default="auto", help=f"{DEVICES} (default: %(default)s)")


def _roots_args(p: argparse.ArgumentParser, *names: str) -> None:
    """Where runs live: --models (unit models, run records), --logs (curves), --results (workbooks, figures)."""
    what = {
        "models": "unit models and run records",
        "logs": "per-epoch curves (CSV, PNG)",
        "results": "workbooks and figures",
    }
    for name in names:
        default = Path(name.capitalize() if name != "logs" else name)
        p.add_argument(f"--{name}", type=Path, default=default, help=f"folder of {what[name]} (default: %(default)s)")


@functools.lru_cache
def _from_toml(key: str) -> str:
    """'default: the dataset's TOML (e.g. EMODB: 10, EXAMPLE: 4)', the values read from the TOMLs, not retyped."""
    section, _, name = key.partition(".")
    shown = ", ".join(f"{d}: {getattr(getattr(load_config(d), section), name)}" for d in ("EMODB", "EXAMPLE"))
    return f"default: the dataset's TOML, e.g. {shown}"


def _train_args(p: argparse.ArgumentParser) -> None:
    """Options of every command that trains; choices and defaults come from the library, not retyped here."""
    p.add_argument("--folds", type=int, help=f"number of folds ({_from_toml('train.folds')})")
    p.add_argument("--epochs", type=int, help=f"epochs per unit, one fold of one seed ({_from_toml('train.epochs')})")
    p.add_argument("--batch-size", type=int, help=f"utterances per optimiser step ({_from_toml('train.batch_size')})")
    p.add_argument(
        "--protocol",
        choices=TrainSettings.PROTOCOLS,
        help="random = authors' KFold; speaker = speaker-independent; sentence = text-independent; "
        f"speaker-sentence = both ({_from_toml('train.protocol')})",
    )
    p.add_argument(
        "--checkpoint",
        choices=TrainSettings.CHECKPOINTS,
        help="which epoch's weights are evaluated; best-test is the paper's optimistic protocol "
        f"({_from_toml('train.checkpoint')})",
    )
    p.add_argument(
        "--patience", type=int, help=f"early stopping on validation accuracy, 0 = off ({_from_toml('train.patience')})"
    )
    p.add_argument("--seeds", help="comma-separated training seeds, e.g. 46,1,2: results as mean ± std")
    _device_arg(p)
    p.add_argument("--threads", type=int, help="CPU threads per worker (default: the cores divided among the workers)")
    minimum = ", ".join(f">= {n} epochs on {d.upper()}" for d, n in COMPILE_MIN_EPOCHS.items())
    p.add_argument(
        "--compile",
        choices=TrainSettings.SWITCHES,
        help=f"torch.compile the model (auto: where a worker's units together train {minimum}, so that its "
        "1-2 minutes, once per worker, repay themselves)",
    )
    _roots_args(p, "models", "logs", "results")


def _workers_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--workers",
        type=int,
        help="units trained at once in worker processes (default: one per CPU "
        "core, one per GPU; 1 = one after another in this process)",
    )


def _many_runs_args(p: argparse.ArgumentParser) -> None:
    """Options of the commands that train many runs at once (sweep, study)."""
    _device_arg(p)
    p.add_argument("--threads", type=int, help="CPU threads per unit (default: the cores divided among the workers)")
    _workers_arg(p)
    _backend_args(p)
    _roots_args(p, "models", "logs", "results")
    _quiet_arg(p)


def _backend_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--backend",
        choices=list(BACKENDS),
        default=next(iter(BACKENDS)),
        help="local: worker processes on this machine; ray: one Ray task per unit on a cluster (default: %(default)s)",
    )
    p.add_argument(
        "--address",
        help="with --backend ray: auto (the cluster `ray start` made here), ray://HEAD:10001, or none = start one",
    )


def _add_data_commands(sub) -> None:
    """example-data, preprocess, evaluate: corpora, features and the authors' weights."""
    p = sub.add_parser("example-data", help="write a small synthetic corpus for the quickstart (Datasets/EXAMPLE)")
    p.add_argument("--out", type=Path, default=Path("Datasets/EXAMPLE"), help="where to write (default: %(default)s)")

    p = sub.add_parser("preprocess", help="corpus audio -> MFCC/<DATASET>.npy (+ .csv manifest, .json settings)")
    _config_args(p)
    p.add_argument(
        "--data",
        type=Path,
        help="corpus folder in its distributed layout (default Datasets/<DATASET>), or the authors' MFCC .npy (CASIA)",
    )
    p.add_argument("--out", type=Path, default=Path("MFCC"), help="output folder (default: %(default)s)")
    p.add_argument("--overwrite", action="store_true", help="replace features computed from other data or settings")
    _audio_args(p)

    p = sub.add_parser(
        "evaluate",
        help="the authors' weights on their own test folds (--weights), or a model on a corpus it never saw (--model)",
    )
    _config_args(p)
    p.add_argument("--weights", type=Path, help="the authors' zip (EMODB_46.zip), its folder, or one .hdf5")
    p.add_argument(
        "--model",
        help="cross-corpus: a model folder (timnet export), hub id or run id, scored on --dataset (another corpus)",
    )
    p.add_argument(
        "--map",
        action="append",
        default=[],
        metavar="TARGET=MODEL",
        help="with --model: score the target's class as the model's, e.g. --map calm=neutral; --map calm= leaves it "
        "out (repeatable; default: classes matched by name)",
    )
    p.add_argument(
        "--data",
        type=Path,
        help="corpus folder or MFCC .npy (default MFCC/<DATASET>.npy; with --model: Datasets/<DATASET>)",
    )
    p.add_argument("--seed", type=int, help="KFold seed (default: from the weights' name, e.g. _46)")
    p.add_argument(
        "--out",
        type=Path,
        help="also write the per-fold table and predictions to this .xlsx (--model: default "
        "Results/cross_corpus/<model>_on_<DATASET>_<time>.xlsx)",
    )
    _device_arg(p)
    _roots_args(p, "models", "results")
    _audio_args(p)

    p = sub.add_parser(
        "corpus-check", help="what a corpus reader finds in a folder (per class and speaker) and the TOML to use"
    )
    _config_args(p)
    p.add_argument("--data", type=Path, help="the corpus folder (default Datasets/<DATASET>)")


def _add_training_commands(sub) -> None:
    """train, sweep, run (the pipeline): everything that trains."""
    p = sub.add_parser("train", help="train and evaluate TIM-Net over k folds; writes Models/, logs/, Results/")
    _config_args(p)
    p.add_argument("--mfcc", type=Path, help="features from `timnet preprocess` (default MFCC/<DATASET>.npy)")
    _train_args(p)
    p.add_argument(
        "--only-folds", type=lambda v: [int(i) for i in v.split(",")], help="train only these folds, e.g. 1,2"
    )
    p.add_argument("--resume", metavar="RUN", help="continue an interrupted run (its saved config is used)")
    _workers_arg(p)
    _backend_args(p)
    _quiet_arg(p)

    p = sub.add_parser("sweep", help="a grid of runs (datasets x protocols x policies x seeds x settings), all at once")
    p.add_argument("grid", nargs="?", type=Path, help="the grid file (TOML), e.g. examples/sweep_emodb.toml")
    p.add_argument("--resume", metavar="SWEEP", help="continue a sweep (Results/sweeps/SWEEP.json)")
    p.add_argument("--status", metavar="SWEEP", help="only show how far each run of a sweep is")
    _many_runs_args(p)

    p = sub.add_parser(
        "run",
        help="the pipeline: preprocess -> train -> t-SNE in one go (the three notebooks); "
        "without a corpus, on generated example data",
    )
    _config_args(p)
    p.add_argument("--data", type=Path, help="corpus folder (default Datasets/<DATASET>; EXAMPLE is generated there)")
    p.add_argument("--mfcc-dir", type=Path, default=Path("MFCC"), help="where the features go (default: %(default)s)")
    p.add_argument("--overwrite", action="store_true", help="replace features computed from other data or settings")
    _train_args(p)
    _audio_args(p)
    _backend_args(p)


def _add_download_command(sub) -> None:
    from .data.download import FREE, LICENSED

    p = sub.add_parser("download", help=f"a free corpus ({', '.join(FREE)}) from its official archive, checked")
    p.add_argument("name", help=f"{', '.join(FREE)} (licensed, where to ask: {', '.join(LICENSED)})")
    p.add_argument("--data", type=Path, default=Path("Datasets"), help="where <NAME>/ goes (default: %(default)s)")
    p.add_argument("--url", help="another address of the same archive (a mirror)")
    _quiet_arg(p)


def _add_study_commands(sub) -> None:
    """audit, compare, study: the paper's study and what it is made of."""
    p = sub.add_parser(
        "audit", help="leakage per fold: test utterances sharing a speaker, a sentence or identical audio with training"
    )
    _config_args(p)
    source = p.add_mutually_exclusive_group()
    source.add_argument("--data", type=Path, help="the corpus folder (identical audio: the decoded samples)")
    source.add_argument(
        "--mfcc", type=Path, help="a feature file (identical audio: identical features; default MFCC/<DATASET>.npy)"
    )
    p.add_argument("--protocol", choices=TrainSettings.PROTOCOLS, help=f"({_from_toml('train.protocol')})")
    p.add_argument("--folds", type=int, help=f"number of folds ({_from_toml('train.folds')})")
    p.add_argument("--csv", type=Path, help="also write the table here: fold, n_test, shared_speaker, ...")
    p.add_argument("--trust-pickle", action="store_true", help="allow reading a pickled .npy not written by timnet")

    p = sub.add_parser(
        "compare", help="two runs on the folds they share: paired differences, CIs, t, corrected t, Wilcoxon, McNemar"
    )
    p.add_argument("run_a", help="run id (folder under --models) or run folder: A")
    p.add_argument("run_b", help="run id or folder: B (differences are B − A)")
    p.add_argument(
        "--policy", choices=TrainSettings.CHECKPOINTS, help="read both runs at this policy (default: their own)"
    )
    p.add_argument(
        "--allow-mixed-policies", action="store_true", help="compare runs read at different policies (else refused)"
    )
    p.add_argument("--csv", type=Path, help="also write the table here: metric, mean_a, mean_b, diff, t_ci_low, ...")
    _roots_args(p, "models")

    p = sub.add_parser("study", help="the paper's study: corpora x protocols x variants, its tables beside the paper's")
    p.add_argument("study", nargs="?", type=Path, help="the study file (TOML), e.g. studies/paper.toml")
    p.add_argument("--quick", action="store_true", help="few folds and epochs ([quick] of the file): a first look")
    for key, example in (("datasets", "EMODB,SAVEE"), ("protocols", "random,speaker")):
        p.add_argument(f"--{key}", type=lambda v: v.split(","), help=f"only these of the file's {key}, e.g. {example}")
    p.add_argument("--resume", metavar="ID", help="continue a study (Results/studies/ID.json) and write its report")
    p.add_argument(
        "--report-only", action="store_true", help="with --resume: the report of the units trained so far, no training"
    )
    p.add_argument(
        "--run",
        action="append",
        metavar="VARIANT=RUN",
        help="runs trained apart, one per variant (repeatable): the study file's runs, reported as one study",
    )
    _many_runs_args(p)


def _add_tsne_command(sub) -> None:
    p = sub.add_parser("tsne", help="t-SNE of the penultimate layer (each utterance from its test-fold model)")
    _config_args(p)
    p.add_argument("--run", help="a training run id (folder under --models)")
    p.add_argument("--weights", type=Path, help="or the authors' weights zip (with --dataset and --data)")
    p.add_argument("--data", type=Path, help="with --weights: corpus folder or MFCC .npy")
    p.add_argument(
        "--perplexity", type=float, default=PERPLEXITY, help="t-SNE's neighbourhood size (default: %(default)s)"
    )
    p.add_argument("--seed", type=int, help="with --run: which training seed's models (default: the run's first)")
    p.add_argument("--tsne-seed", type=int, default=TSNE_SEED, help="t-SNE's random state (default: %(default)s)")
    p.add_argument(
        "--align",
        choices=ALIGNMENTS,
        default=ALIGNMENTS[0],
        help="procrustes: map every fold model's space into the first's; none: each model's raw space "
        "(default: %(default)s)",
    )
    p.add_argument("--speaker-markers", action="store_true", help="one marker shape per speaker")
    p.add_argument(
        "--fold", type=int, help="embed every utterance with this fold's model (default: each with its test-fold model)"
    )
    _roots_args(p, "models", "results")
    _audio_args(p)


def _add_predict_command(sub) -> None:
    p = sub.add_parser("predict", help="predict the emotion of audio files (or emotion over time: --timeline)")
    p.add_argument("files", nargs="+", type=Path, help="audio files, folders of them, or CSV lists (column path)")
    p.add_argument("--model", help="an exported model folder (timnet export) or a Hugging Face Hub id")
    p.add_argument("--run", help="or a training run id: its fold models and its preprocessing are used")
    p.add_argument("--weights", type=Path, help="or the authors' weights zip (needs --dataset)")
    p.add_argument("--dataset", help="with --weights: which corpus they were trained on")
    p.add_argument("--config", type=Path, help=argparse.SUPPRESS)
    p.add_argument(
        "--engine",
        choices=ENGINES,
        default=ENGINES[0],
        help="with --model: onnxruntime (auto: when the folder has ONNX graphs; the faster on CPU) or PyTorch "
        "(default: %(default)s)",
    )
    p.add_argument("--fold", type=int, help="use one fold model instead of averaging all")
    p.add_argument(
        "--seed", type=int, help="with --run: only this training seed's models (default: all seeds averaged)"
    )
    p.add_argument("--csv", type=Path, help="also write the table to this CSV")
    p.add_argument("--timeline", action="store_true", help="emotion per window over each (long) file: CSV + PNG")
    p.add_argument(
        "--hop",
        type=float,
        default=HOP_SECONDS,
        help="with --timeline: seconds between window starts (default: %(default)s)",
    )
    p.add_argument(
        "--silence-db",
        type=float,
        default=SILENCE_DB,
        help="with --timeline: windows quieter (RMS dBFS) are not classified (default: %(default)s)",
    )
    p.add_argument(
        "--out-dir", type=Path, default=Path("Results/timelines"), help="where --timeline writes (default: %(default)s)"
    )
    _roots_args(p, "models")
    _device_arg(p)
    p.add_argument("--workers", type=int, help="processes for feature extraction (default: all cores)")
    p.add_argument("--skip-bad", action="store_true", help="skip unreadable/silent files (listed as warnings)")
    _quiet_arg(p)


def _add_export_command(sub) -> None:
    p = sub.add_parser("export", help="a self-contained model folder: safetensors, ONNX, config, model card")
    p.add_argument("--run", help="a training run id (folder under --models)")
    p.add_argument("--weights", type=Path, help="or the authors' weights zip (needs --dataset)")
    p.add_argument("--dataset", help="with --weights: which corpus they were trained on")
    p.add_argument("--out", type=Path, required=True, help="the folder to write (must not exist)")
    p.add_argument("--fold", type=int, help="export one fold's model instead of all")
    p.add_argument("--seed", type=int, help="with --run: only this training seed's models")
    p.add_argument("--no-onnx", action="store_true", help="skip the ONNX graphs (the torch engine still works)")
    p.add_argument("--push-to-hub", metavar="OWNER/NAME", help="then upload the folder to the Hugging Face Hub")
    _roots_args(p, "models")


def _add_devices_command(sub) -> None:
    p = sub.add_parser(
        "devices",
        help="time each way to train here (CPU workers, MPS, each CUDA GPU; packed or not) for a dataset's shape",
    )
    _config_args(p)
    p.add_argument(
        "--seconds", type=float, default=DEVICE_SECONDS, help="timed per way to train (default: %(default)s)"
    )
    p.add_argument("--samples", type=int, help="utterances in the corpus (default: the dataset's expected count)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="timnet", description="TIM-Net speech emotion recognition (PyTorch).")
    parser.add_argument("--version", action="version", version=f"timnet {__version__}", help="print the version")
    sub = parser.add_subparsers(dest="command", required=True)
    _add_data_commands(sub)
    _add_training_commands(sub)
    _add_study_commands(sub)
    _add_download_command(sub)
    _add_tsne_command(sub)
    _add_predict_command(sub)
    _add_export_command(sub)
    _add_devices_command(sub)
    return parser
