"""`timnet` command line: a thin shell over the library. Errors the user can fix print one line."""

from __future__ import annotations

import sys
from pathlib import Path

from .cli_options import build_parser
from .core.config import TRAIN_SHORTCUTS, load_config, shortcut_overrides
from .core.errors import TimnetError, one_line_warnings


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
    """Corpus audio -> MFCC trio, reporting what it found."""
    from .data.mfcc_extraction import preprocess
    from .pipeline import preprocess_lines

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
    print("\n".join(preprocess_lines(result)))
    return result


def cmd_preprocess(args) -> None:
    cfg = _config(args)
    _preprocess(cfg, args.data or Path("Datasets") / cfg.dataset.name, args.out, args)


def _feature_set(cfg, data: Path, args):
    """An MFCC .npy, or a corpus folder whose features are computed on the fly."""
    from .data.mfcc_extraction import load_or_extract

    features, skipped = load_or_extract(
        cfg, data, workers=args.workers, skip_bad=args.skip_bad, trust_pickle=args.trust_pickle, progress=not args.quiet
    )
    for file, reason in skipped:
        print(f"  skipped {file}: {reason}")
    return features


def cmd_evaluate(args) -> None:
    from .analysis.evaluate import evaluate_model
    from .core.report import write_evaluation
    from .serving.loading import load_model

    if (args.weights is None) == (args.model is None):
        raise TimnetError("give --weights ZIP (the authors' folds) or --model MODEL (cross-corpus), not both")
    if args.model is not None:
        return _cross_corpus(args)
    cfg = _config(args)
    _refuse_existing(args.out)
    model = load_model(args.weights, dataset=cfg, engine="torch", device=args.device)
    features = _feature_set(cfg, args.data or Path("MFCC") / f"{cfg.dataset.name}.npy", args)
    ev = evaluate_model(model, features, seed=args.seed)
    print(ev.folds.to_string(index=False, float_format=lambda v: f"{v:.2f}"))
    o = ev.overall
    print(
        f"overall on {len(ev.predictions)} test files ({ev.missing} of the authors' test files missing): "
        f"WAR {o['war']:.2f} %  UAR {o['uar']:.2f} %  macro-F1 {o['f1']:.2f} %"
    )
    if args.out:
        write_evaluation(args.out, ev, cfg, source=str(args.weights))
        print(f"wrote {args.out}")


def _cross_corpus(args) -> None:
    """`timnet evaluate --model M --dataset B`: M on corpus B, over the classes both share."""
    from .analysis.cross_corpus import evaluate_cross_corpus, parse_maps, write_cross_corpus

    target = _config(args)
    _refuse_existing(args.out)
    result = evaluate_cross_corpus(
        args.model,
        target,
        args.data or Path("Datasets") / target.dataset.name,
        parse_maps(args.map),
        workers=args.workers,
        skip_bad=args.skip_bad,
        progress=not args.quiet,
        models_root=args.models,
        device=args.device,
    )
    for file, reason in result.skipped:
        print(f"  skipped {file}: {reason}")
    print("\n".join(result.lines()))
    workbook = write_cross_corpus(result, args.results, args.out)
    print(f"wrote {workbook} and its row of {args.results / 'Accuracy Analysis Summary.xlsx'}")


def cmd_download(args) -> None:
    from .data.download import download

    folder = download(args.name, args.data, args.url, progress=not args.quiet)
    print(f"{folder.name} is in {folder}; next: timnet preprocess --dataset {folder.name} --data {folder}")


def cmd_corpus_check(args) -> None:
    from .data.corpus_check import check_corpus

    cfg = _config(args)
    print("\n".join(check_corpus(cfg, args.data or Path("Datasets") / cfg.dataset.name).lines()))


def cmd_audit(args) -> None:
    from .data.leakage import audit_corpus, audit_lines

    _refuse_existing(args.csv)
    cfg = _config(args, **shortcut_overrides({"protocol": args.protocol, "folds": args.folds}))
    table, source = audit_corpus(cfg, args.data, args.mfcc, args.trust_pickle)
    print("\n".join(audit_lines(cfg, table, source)))
    _write_csv(table, args.csv)


def _write_csv(table, path: Path | None) -> None:
    """A table as CSV, written whole or not at all (the path was refused before any work if it existed)."""
    if path is not None:
        from .core.atomic import atomic_path

        with atomic_path(path) as tmp:
            table.to_csv(tmp, index=False)
        print(f"wrote {path}")


def cmd_compare(args) -> None:
    from .analysis.compare import compare_runs, comparison_lines

    _refuse_existing(args.csv)
    table = compare_runs(args.run_a, args.run_b, args.models, args.policy, args.allow_mixed_policies)
    print("\n".join(comparison_lines(table)))
    _write_csv(table, args.csv)


def _training_overrides(args) -> dict:
    """The training options given (`--folds 2` -> train.folds = 2); those left out keep the dataset's settings."""
    return shortcut_overrides({name: getattr(args, name) for name in TRAIN_SHORTCUTS})


def _print_run(result) -> None:
    from .core.report import summary_lines

    print(result.folds.to_string(index=False, float_format=lambda v: f"{v:.2f}"))
    print("\n".join(summary_lines(result.run_id, result.summary)))
    print(f"wrote {result.workbook}")


def cmd_train(args) -> None:
    from .training.run import check_resume, run_training

    changed = [n for n in ("dataset", "config", "mfcc", *TRAIN_SHORTCUTS) if getattr(args, n) is not None]
    changed += ["set"] if args.set else []
    check_resume(args.resume, [f"--{n.replace('_', '-')}" for n in changed])
    cfg = None if args.resume else _config(args, **_training_overrides(args))
    mfcc = args.mfcc or (Path("MFCC") / f"{cfg.dataset.name}.npy" if cfg else None)
    result = run_training(cfg, mfcc, _execution(args), resume=args.resume, only_folds=args.only_folds)
    _print_run(result)


def _execution(args):
    """The options of every command that trains (train, run, sweep, study), as one `training.execution.Execution`."""
    from .training.execution import Execution
    from .training.run_store import Roots

    roots = Roots(args.models, args.logs, args.results)
    return Execution(roots, args.backend, args.address, args.device, args.workers, args.threads, not args.quiet)


def cmd_sweep(args) -> None:
    from .studies.sweep import run_sweep, sweep_status

    how = _execution(args)
    if args.status:
        print(sweep_status(args.status, how.roots).to_string(index=False))
        return
    if (args.grid is None) == (args.resume is None):
        raise TimnetError("give a grid file (timnet sweep GRID.toml) or --resume SWEEP (or --status SWEEP)")
    record, table, workbook = run_sweep(args.grid, args.resume, how)
    print(table.to_string(index=False, float_format=lambda v: f"{v:.2f}"))
    print(f"sweep {record['sweep']}: {len(table)} runs; wrote {workbook} and {len(table)} rows of the summary workbook")


def _variant_run(text: str) -> tuple[str, str]:
    variant, sep, run = text.partition("=")
    if not sep or not variant or not run:
        raise TimnetError(f"--run {text}: give VARIANT=RUN, e.g. --run 'speaker norm=EMODB_speaker_best-val_<time>'")
    return variant, run


def cmd_study(args) -> None:
    from .studies.study import run_study
    from .studies.study_report import study_lines

    if (args.study is None) == (args.resume is None):
        raise TimnetError("give a study file (timnet study studies/paper.toml) or --resume ID")
    adopt = dict(_variant_run(text) for text in args.run or [])
    how = _execution(args)
    record, report = run_study(args.study, args.resume, args.quick, vars(args), how, args.report_only, adopt)
    print("\n".join(study_lines(record, report)))


def cmd_run(args) -> None:
    """The three notebooks' work in one go: preprocess -> train -> t-SNE, then where every output is."""
    from .pipeline import run_pipeline

    if args.dataset is None and args.config is None:
        args.dataset = "EXAMPLE"
    how = _execution(args)
    result = run_pipeline(
        _config(args, **_training_overrides(args)),
        args.data,
        args.mfcc_dir,
        how,
        skip_bad=args.skip_bad,
        overwrite=args.overwrite,
        trust_pickle=args.trust_pickle,
    )
    _print_run(result.run)
    print("\n" + result.outputs(how.roots))


def cmd_tsne(args) -> None:
    from .analysis.tsne import embeddings_of, write_tsne

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
    from .serving.loading import load_model
    from .serving.predict import collect_audio, model_source

    _refuse_existing(args.csv)
    dataset = args.dataset or (str(args.config) if args.config else None)
    model = load_model(
        model_source(args.run, args.weights, args.model, args.models),
        dataset=dataset,
        fold=args.fold,
        seed=args.seed,
        engine=args.engine,
        device=args.device,
        models_root=args.models,
    )
    files = collect_audio(args.files)
    if args.timeline:
        import pandas as pd

        from .serving.timeline import write_timeline

        tables = []
        for f in files:
            table, csv, png = write_timeline(model, f, args.out_dir, args.hop, args.silence_db)
            _print_note(table)
            print(table.to_string(index=False, float_format=lambda v: f"{v:.3f}"))
            print(f"wrote {csv} and {png}")
            tables.append(table)
        table = pd.concat(tables, ignore_index=True)  # --csv: every file's windows in one table
    else:
        table = model.predict(files, None, args.workers, args.skip_bad, progress=not args.quiet and len(files) > 1)
        _print_note(table)
        print(table.to_string(index=False, float_format=lambda v: f"{v:.3f}"))
    _write_csv(table, args.csv)


def _print_note(table) -> None:
    """How a speaker-normalised model took the audio (`PortableModel.given_together`), in one line."""
    if table.attrs.get("note"):
        print(table.attrs["note"])


def cmd_export(args) -> None:
    from .serving.export import export_run, export_weights
    from .serving.hub import push_to_hub

    if (args.run is None) == (args.weights is None):
        raise TimnetError("export either a run (--run RUN) or the authors' weights (--weights ZIP --dataset D)")
    if args.run is not None:
        out = export_run(args.run, args.out, args.models, args.fold, args.seed, onnx=not args.no_onnx)
    else:
        out = export_weights(args.weights, args.dataset, args.out, args.fold, onnx=not args.no_onnx)
    print(f"wrote {out}/: config.json, model.safetensors{'' if args.no_onnx else ', onnx/'}, README.md")
    print(f"next: timnet predict --model {out} <audio files, folders or a CSV list>")
    if args.push_to_hub:
        print(f"uploaded to {push_to_hub(out, args.push_to_hub)}")


def cmd_example_data(args) -> None:
    from .data.example import write_example_corpus

    if args.out.exists() and any(args.out.iterdir()):
        raise TimnetError(f"{args.out} already exists and is not empty — choose another --out")
    root = write_example_corpus(args.out)
    print(
        f"wrote {len(list(root.rglob('*.wav')))} synthetic utterances to {root} (EMO-DB layout; use --dataset EXAMPLE)"
    )


def cmd_devices(args) -> None:
    from .core.validation import check_range
    from .training.device_timing import cached_or_measured, table

    cfg = _config(args)
    samples = args.samples if args.samples is not None else (cfg.dataset.expected_count or None)
    if samples is None:
        raise TimnetError(f"--samples: {cfg.dataset.name} has no expected utterance count; say how many there are")
    check_range("--samples", samples, cfg.train.folds, integer=True)
    check_range("--seconds", args.seconds, 0, low_open=True)
    measured, _ = cached_or_measured(cfg, args.seconds, refresh=True)
    print("\n".join(table(cfg, measured, samples)))


# subcommand -> what runs it (its options: timnet.cli_options)
COMMANDS = {
    "example-data": cmd_example_data,
    "preprocess": cmd_preprocess,
    "corpus-check": cmd_corpus_check,
    "download": cmd_download,
    "audit": cmd_audit,
    "compare": cmd_compare,
    "evaluate": cmd_evaluate,
    "train": cmd_train,
    "sweep": cmd_sweep,
    "study": cmd_study,
    "run": cmd_run,
    "tsne": cmd_tsne,
    "predict": cmd_predict,
    "export": cmd_export,
    "devices": cmd_devices,
}


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    one_line_warnings()
    try:
        COMMANDS[args.command](args)
    except TimnetError as err:
        print(f"timnet: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("timnet: interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
