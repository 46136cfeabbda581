"""`timnet` command line: a thin shell over the library. Errors the user can fix print one line."""

from __future__ import annotations

import argparse
import sys
import warnings
from pathlib import Path

from .config import TrainSettings, load_config
from .errors import TimnetError


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
        "--workers", type=int, help="processes for feature extraction (default: all cores); `run`: and for folds"
    )
    p.add_argument(
        "--skip-bad", action="store_true", help="skip unreadable/silent/misnamed files and list them in the manifest"
    )
    p.add_argument("--trust-pickle", action="store_true", help="allow reading a pickled .npy not written by timnet")
    p.add_argument("--quiet", action="store_true", help="no progress bar")


def _train_args(p: argparse.ArgumentParser) -> None:
    """Options of every command that trains."""
    p.add_argument("--folds", type=int, help="number of folds (authors: 10)")
    p.add_argument("--epochs", type=int, help="epochs per fold (authors: 500)")
    p.add_argument("--batch-size", type=int)
    p.add_argument(
        "--protocol", choices=["random", "speaker"], help="random = authors' KFold; speaker = speaker-independent"
    )
    p.add_argument(
        "--checkpoint",
        choices=["last", "best-val", "best-test"],
        help="which epoch's weights are evaluated; best-test is the paper's optimistic protocol",
    )
    p.add_argument("--patience", type=int, help="early stopping on validation accuracy (0 = off)")
    p.add_argument("--seeds", help="comma-separated seeds, e.g. 46,1,2: results as mean ± std")
    p.add_argument("--device", default="auto", help="auto (CUDA, then MPS, then CPU), cpu, cuda, cuda:1, mps")
    p.add_argument("--threads", type=int, help="CPU threads per worker (default: the cores divided among the workers)")
    p.add_argument(
        "--compile",
        choices=TrainSettings.SWITCHES,
        help="torch.compile the model (auto: for folds of "
        ">= 1000 epochs on CPU, >= 200 on CUDA, where it repays its 1-2 minutes)",
    )
    p.add_argument("--models", type=Path, default=Path("Models"))
    p.add_argument("--logs", type=Path, default=Path("logs"))
    p.add_argument("--results", type=Path, default=Path("Results"))


def _workers_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--workers",
        type=int,
        help="units trained at once in worker processes (default: one per CPU "
        "core, one per GPU; 1 = one after another in this process)",
    )


def _refuse_existing(path: Path | None) -> None:
    """Checked before any work starts: results are never overwritten."""
    if path is not None and path.exists():
        raise TimnetError(f"{path} already exists — earlier results are never overwritten; choose another file name")


def _config(args, **overrides):
    source = args.config or args.dataset
    if source is None:
        raise TimnetError("say which dataset: --dataset EMODB (or --config configs/emodb.toml)")
    pairs = {}
    for item in args.set:
        key, sep, value = item.partition("=")
        if not sep:
            raise TimnetError(f"--set {item!r}: expected SECTION.KEY=VALUE")
        pairs[key.strip()] = value.strip()
    pairs.update({k: v for k, v in overrides.items() if v is not None})
    return load_config(source, pairs)


def _preprocess(cfg, data: Path, out: Path, args):
    """Corpus audio -> MFCC trio, reporting what it found (shared by `preprocess` and `run`)."""
    from .features import preprocess

    result = preprocess(
        cfg,
        data,
        out,
        workers=args.workers,
        skip_bad=args.skip_bad,
        overwrite=args.overwrite,
        progress=not args.quiet,
        trust_pickle=args.trust_pickle,
    )
    state = "up to date (nothing changed)" if result.up_to_date else "written"
    print(f"{result.npy}: {result.count} utterances, {state}")
    for file, reason in result.skipped:
        print(f"  skipped {file}: {reason}")
    return result


def cmd_preprocess(args) -> None:
    cfg = _config(args)
    _preprocess(cfg, args.data or Path("Datasets") / cfg.dataset.name, args.out, args)


def _feature_set(cfg, data: Path, args):
    """An MFCC .npy, or a corpus folder whose features are computed on the fly."""
    from .features import load_or_extract

    features, skipped = load_or_extract(
        cfg, data, workers=args.workers, skip_bad=args.skip_bad, trust_pickle=args.trust_pickle, progress=not args.quiet
    )
    for file, reason in skipped:
        print(f"  skipped {file}: {reason}")
    return features


def cmd_evaluate(args) -> None:
    from .evaluate import evaluate_weights
    from .report import write_evaluation

    cfg = _config(args)
    _refuse_existing(args.out)
    features = _feature_set(cfg, args.data or Path("MFCC") / f"{cfg.dataset.name}.npy", args)
    ev = evaluate_weights(args.weights, cfg, features, seed=args.seed, device=args.device)
    print(ev.folds.to_string(index=False, float_format=lambda v: f"{v:.2f}"))
    o = ev.overall
    print(
        f"overall on {len(ev.predictions)} test files ({ev.missing} of the authors' test files missing): "
        f"WAR {o['war']:.2f} %  UAR {o['uar']:.2f} %  macro-F1 {o['f1']:.2f} %"
    )
    if args.out:
        write_evaluation(args.out, ev, cfg, source=str(args.weights))
        print(f"wrote {args.out}")


# `timnet train` / `timnet run` option -> the config setting it overrides
TRAIN_OPTIONS = {
    "folds": "train.folds",
    "epochs": "train.epochs",
    "protocol": "train.protocol",
    "checkpoint": "train.checkpoint",
    "seeds": "train.seeds",
    "patience": "train.patience",
    "batch_size": "train.batch_size",
    "compile": "train.compile",
}


def _training_overrides(args) -> dict:
    return {key: getattr(args, name) for name, key in TRAIN_OPTIONS.items()}


def _print_run(result) -> None:
    print(result.folds.to_string(index=False, float_format=lambda v: f"{v:.2f}"))
    s = result.summary
    print(
        f"run {result.run_id}, checkpoint {s['checkpoint']}: WAR {s['war_mean']:.2f} ± {s['war_std']:.2f}  "
        f"UAR {s['uar_mean']:.2f} ± {s['uar_std']:.2f}  macro-F1 {s['f1_mean']:.2f} ± {s['f1_std']:.2f} "
        "(mean ± sample std over folds)"
    )
    print(f"wrote {result.workbook}")


def cmd_train(args) -> None:
    from .train import run_training

    changed = [n for n in ("dataset", "config", "mfcc", *TRAIN_OPTIONS) if getattr(args, n) is not None]
    changed += ["set"] if args.set else []
    if args.resume and changed:
        raise TimnetError(
            "--resume continues a run with its saved config; drop "
            f"--{', --'.join(n.replace('_', '-') for n in changed)}"
        )
    cfg = None if args.resume else _config(args, **_training_overrides(args))
    mfcc = args.mfcc or (Path("MFCC") / f"{cfg.dataset.name}.npy" if cfg else None)
    result = run_training(
        cfg,
        mfcc,
        args.models,
        args.logs,
        args.results,
        resume=args.resume,
        device=args.device,
        progress=not args.quiet,
        only_folds=args.only_folds,
        workers=args.workers,
        threads=args.threads,
        backend=args.backend,
        address=args.address,
    )
    _print_run(result)


def cmd_sweep(args) -> None:
    from .runs import Roots
    from .sweep import run_sweep, sweep_status

    roots = Roots(args.models, args.logs, args.results)
    if args.status:
        print(sweep_status(args.status, roots).to_string(index=False))
        return
    if (args.grid is None) == (args.resume is None):
        raise TimnetError("give a grid file (timnet sweep GRID.toml) or --resume SWEEP (or --status SWEEP)")
    record, table, workbook = run_sweep(
        args.grid,
        args.resume,
        roots,
        args.backend,
        args.address,
        args.device,
        args.workers,
        args.threads,
        progress=not args.quiet,
    )
    print(table.to_string(index=False, float_format=lambda v: f"{v:.2f}"))
    print(f"sweep {record['sweep']}: {len(table)} runs; wrote {workbook} and {len(table)} rows of the summary workbook")


def _backend_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--backend",
        choices=["local", "ray"],
        default="local",
        help="local: worker processes on this machine; ray: one Ray task per unit on a cluster",
    )
    p.add_argument(
        "--address",
        help="with --backend ray: auto (the cluster `ray start` made here), ray://HEAD:10001, or none = start one",
    )


def cmd_run(args) -> None:
    """The three notebooks' work in one go: preprocess -> train -> t-SNE, then where every output is."""
    from .example import write_example_corpus
    from .train import run_training
    from .tsne import embeddings_of, write_tsne

    if args.dataset is None and args.config is None:
        args.dataset = "EXAMPLE"
    cfg = _config(args, **_training_overrides(args))
    data = args.data or Path("Datasets") / cfg.dataset.name
    if cfg.dataset.name == "EXAMPLE" and not (data.is_dir() and any(data.iterdir())):
        write_example_corpus(data)
        print(f"no corpus given: wrote the synthetic example corpus to {data} (for a real one: --dataset EMODB)")
    print("1/3 features")
    prep = _preprocess(cfg, data, args.mfcc_dir, args)
    print("2/3 training")
    result = run_training(
        cfg,
        prep.npy,
        args.models,
        args.logs,
        args.results,
        device=args.device,
        progress=not args.quiet,
        workers=args.workers,
        threads=args.threads,
    )
    _print_run(result)
    t = embeddings_of(run=result.run_id, models_root=args.models, results_root=args.results)
    png, csv = write_tsne(t.out_dir, t.config, t.features, t.embeddings, t.title, notes=t.notes)
    print(f"3/3 t-SNE of {len(t.features)} held-out utterances: {png}")
    print(
        f"\noutputs of run {result.run_id}:\n"
        f"  features  {prep.npy} (+ .csv manifest, .json settings)\n"
        f"  models    {args.models / result.run_id}/ (fold_<k>.pt, config.json)\n"
        f"  curves    {args.logs / result.run_id}/ (per-epoch CSV and PNG per fold)\n"
        f"  results   {result.workbook}, {args.results / 'Accuracy Analysis Summary.xlsx'}\n"
        f"  t-SNE     {png}, {csv}\n"
        f"next: timnet predict --run {result.run_id} <audio files>"
    )


def cmd_tsne(args) -> None:
    from .tsne import embeddings_of, write_tsne

    cfg = features = None
    if args.weights:
        cfg = _config(args)
        features = _feature_set(cfg, args.data or Path("MFCC") / f"{cfg.dataset.name}.npy", args)
    t = embeddings_of(
        args.run, args.weights, cfg, features, args.fold, args.seed, args.models, args.results, args.align
    )
    png, csv = write_tsne(
        t.out_dir,
        t.config,
        t.features,
        t.embeddings,
        t.title,
        args.perplexity,
        args.tsne_seed,
        args.speaker_markers,
        t.notes,
    )
    print(
        f"t-SNE of {len(t.features)} utterances ({t.notes['align']}; silhouette by emotion "
        f"{t.silhouette:.2f}): wrote {png}, {csv} and {csv.with_suffix('.json')}"
    )


def cmd_predict(args) -> None:
    from .predict import collect_audio, open_models

    _refuse_existing(args.csv)
    dataset = args.dataset or (str(args.config) if args.config else None)
    model = open_models(
        args.run, args.weights, dataset, args.model, args.engine, args.fold, args.seed, args.models, args.device
    )
    files = collect_audio(args.files)
    fold = args.fold if args.model is not None else None  # a run's or the weights' fold was chosen when loading
    if args.timeline:
        from .timeline import write_timeline

        for f in files:
            table, csv, png = write_timeline(model, f, args.out_dir, args.hop, args.silence_db)
            print(table.to_string(index=False, float_format=lambda v: f"{v:.3f}"))
            print(f"wrote {csv} and {png}")
        return
    table = model.predict(files, fold, args.workers, args.skip_bad, progress=not args.quiet and len(files) > 1)
    print(table.to_string(index=False, float_format=lambda v: f"{v:.3f}"))
    if args.csv:
        from .atomic import atomic_path

        with atomic_path(args.csv) as tmp:
            table.to_csv(tmp, index=False)
        print(f"wrote {args.csv}")


def cmd_export(args) -> None:
    from .export import export_run, export_weights, push_to_hub

    if (args.run is None) == (args.weights is None):
        raise TimnetError("export either a run (--run RUN) or the authors' weights (--weights ZIP --dataset D)")
    if args.weights is not None and args.dataset is None:
        raise TimnetError("--weights needs --dataset: the weights do not say which corpus they are for")
    if args.run is not None:
        out = export_run(args.run, args.out, args.models, args.fold, args.seed, onnx=not args.no_onnx)
    else:
        out = export_weights(args.weights, args.dataset, args.out, args.fold, onnx=not args.no_onnx)
    print(f"wrote {out}/: config.json, model.safetensors{'' if args.no_onnx else ', onnx/'}, README.md")
    print(f"next: timnet predict --model {out} <audio files, folders or a CSV list>")
    if args.push_to_hub:
        print(f"uploaded to {push_to_hub(out, args.push_to_hub)}")


def cmd_example_data(args) -> None:
    from .example import write_example_corpus

    if args.out.exists() and any(args.out.iterdir()):
        raise TimnetError(f"{args.out} already exists and is not empty — choose another --out")
    root = write_example_corpus(args.out)
    print(
        f"wrote {len(list(root.rglob('*.wav')))} synthetic utterances to {root} (EMO-DB layout; use --dataset EXAMPLE)"
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="timnet", description="TIM-Net speech emotion recognition (PyTorch).")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("example-data", help="write a small synthetic corpus for the quickstart (Datasets/EXAMPLE)")
    p.add_argument("--out", type=Path, default=Path("Datasets/EXAMPLE"))
    p.set_defaults(func=cmd_example_data)

    p = sub.add_parser("preprocess", help="corpus audio -> MFCC/<DATASET>.npy (+ .csv manifest, .json settings)")
    _config_args(p)
    p.add_argument(
        "--data",
        type=Path,
        help="corpus folder in its distributed layout (default Datasets/<DATASET>), or the authors' MFCC .npy (CASIA)",
    )
    p.add_argument("--out", type=Path, default=Path("MFCC"), help="output folder (default MFCC)")
    p.add_argument("--overwrite", action="store_true", help="replace features computed from other data or settings")
    _audio_args(p)
    p.set_defaults(func=cmd_preprocess)

    p = sub.add_parser("evaluate", help="evaluate the authors' published weights on their own test folds")
    _config_args(p)
    p.add_argument(
        "--weights", type=Path, required=True, help="the authors' zip (EMODB_46.zip), its folder, or one .hdf5"
    )
    p.add_argument("--data", type=Path, help="corpus folder or MFCC .npy (default MFCC/<DATASET>.npy)")
    p.add_argument("--seed", type=int, help="KFold seed (default: from the weights' name, e.g. _46)")
    p.add_argument("--out", type=Path, help="also write the per-fold table and predictions to this .xlsx")
    p.add_argument("--device", default="auto", help="auto (CUDA, then MPS, then CPU), cpu, cuda, cuda:1, mps")
    _audio_args(p)
    p.set_defaults(func=cmd_evaluate)

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
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("sweep", help="a grid of runs (datasets x protocols x policies x seeds x settings), all at once")
    p.add_argument("grid", nargs="?", type=Path, help="the grid file (TOML), e.g. examples/sweep_emodb.toml")
    p.add_argument("--resume", metavar="SWEEP", help="continue a sweep (Results/sweeps/SWEEP.json)")
    p.add_argument("--status", metavar="SWEEP", help="only show how far each run of a sweep is")
    p.add_argument("--device", default="auto", help="auto (CUDA, then MPS, then CPU), cpu, cuda, mps")
    p.add_argument("--threads", type=int, help="CPU threads per unit (default: the cores divided among the workers)")
    _workers_arg(p)
    _backend_args(p)
    p.add_argument("--models", type=Path, default=Path("Models"))
    p.add_argument("--logs", type=Path, default=Path("logs"))
    p.add_argument("--results", type=Path, default=Path("Results"))
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=cmd_sweep)

    p = sub.add_parser(
        "run",
        help="preprocess -> train -> t-SNE in one go (the three notebooks); "
        "without a corpus, on generated example data",
    )
    _config_args(p)
    p.add_argument("--data", type=Path, help="corpus folder (default Datasets/<DATASET>; EXAMPLE is generated there)")
    p.add_argument("--mfcc-dir", type=Path, default=Path("MFCC"))
    p.add_argument("--overwrite", action="store_true", help="replace features computed from other data or settings")
    _train_args(p)
    _audio_args(p)
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("tsne", help="t-SNE of the penultimate layer (each utterance from its test-fold model)")
    _config_args(p)
    p.add_argument("--run", help="a training run id (folder under --models)")
    p.add_argument("--weights", type=Path, help="or the authors' weights zip (with --dataset and --data)")
    p.add_argument("--data", type=Path, help="with --weights: corpus folder or MFCC .npy")
    p.add_argument("--perplexity", type=float, default=30.0)
    p.add_argument("--seed", type=int, help="with --run: which training seed's models (default: the run's first)")
    p.add_argument("--tsne-seed", type=int, default=0, help="t-SNE's random state")
    p.add_argument(
        "--align",
        choices=["procrustes", "none"],
        default="procrustes",
        help="map every fold model's space into the first's (default), or show each model's raw space",
    )
    p.add_argument("--speaker-markers", action="store_true", help="one marker shape per speaker")
    p.add_argument(
        "--fold", type=int, help="embed every utterance with this fold's model (default: each with its test-fold model)"
    )
    p.add_argument("--models", type=Path, default=Path("Models"))
    p.add_argument("--results", type=Path, default=Path("Results"))
    _audio_args(p)
    p.set_defaults(func=cmd_tsne)

    p = sub.add_parser("predict", help="predict the emotion of audio files (or emotion over time: --timeline)")
    p.add_argument("files", nargs="+", type=Path, help="audio files, folders of them, or CSV lists (column path)")
    p.add_argument("--model", help="an exported model folder (timnet export) or a Hugging Face Hub id")
    p.add_argument("--run", help="or a training run id: its fold models and its preprocessing are used")
    p.add_argument("--weights", type=Path, help="or the authors' weights zip (needs --dataset)")
    p.add_argument("--dataset", help="with --weights: which corpus they were trained on")
    p.add_argument("--config", type=Path, help=argparse.SUPPRESS)
    p.add_argument(
        "--engine",
        choices=["auto", "torch", "onnx"],
        default="auto",
        help="with --model: onnxruntime (auto: when the folder has ONNX graphs; the faster on CPU) or PyTorch",
    )
    p.add_argument("--fold", type=int, help="use one fold model instead of averaging all")
    p.add_argument(
        "--seed", type=int, help="with --run: only this training seed's models (default: all seeds averaged)"
    )
    p.add_argument("--csv", type=Path, help="also write the table to this CSV")
    p.add_argument("--timeline", action="store_true", help="emotion per window over each (long) file: CSV + PNG")
    p.add_argument("--hop", type=float, default=0.5, help="with --timeline: seconds between window starts")
    p.add_argument(
        "--silence-db", type=float, default=-50.0, help="with --timeline: windows quieter (RMS dBFS) are not classified"
    )
    p.add_argument("--out-dir", type=Path, default=Path("Results/timelines"), help="where --timeline writes")
    p.add_argument("--models", type=Path, default=Path("Models"))
    p.add_argument("--device", default="auto", help="auto (CUDA, then MPS, then CPU), cpu, cuda, cuda:1, mps")
    p.add_argument("--workers", type=int, help="processes for feature extraction (default: all cores)")
    p.add_argument("--skip-bad", action="store_true", help="skip unreadable/silent files (listed as warnings)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_predict)

    p = sub.add_parser("export", help="a self-contained model folder: safetensors, ONNX, config, model card")
    p.add_argument("--run", help="a training run id (folder under --models)")
    p.add_argument("--weights", type=Path, help="or the authors' weights zip (needs --dataset)")
    p.add_argument("--dataset", help="with --weights: which corpus they were trained on")
    p.add_argument("--out", type=Path, required=True, help="the folder to write (must not exist)")
    p.add_argument("--fold", type=int, help="export one fold's model instead of all")
    p.add_argument("--seed", type=int, help="with --run: only this training seed's models")
    p.add_argument("--no-onnx", action="store_true", help="skip the ONNX graphs (the torch engine still works)")
    p.add_argument("--push-to-hub", metavar="OWNER/NAME", help="then upload the folder to the Hugging Face Hub")
    p.add_argument("--models", type=Path, default=Path("Models"))
    p.set_defaults(func=cmd_export)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    warnings.formatwarning = lambda message, *rest, **kw: f"warning: {message}\n"
    try:
        args.func(args)
    except TimnetError as err:
        print(f"timnet: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("timnet: interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
