"""The paper's study in one command: every corpus x protocol (x model variant) trained at once, reported the way
the paper reports it, with honest statistics beside it (`study_report`).

    timnet study studies/paper.toml [--quick] [--backend local|ray] [--resume ID]

A study file (TOML):
    name = "paper"
    datasets = ["EMODB", "RAVDESS", ...]       # a corpus without features (MFCC/<NAME>.npy) is listed as missing
    protocols = ["random", "speaker"]
    checkpoints = ["best-test", "last"]        # policies reported; one training per unit gives them all (best-test's
                                               # units also evaluate their last epoch; best-val's, tested every
                                               # epoch, keep the best-test epoch's predictions too)
    baseline = "TIM-Net"                       # the variant every other is compared with (paired, on the same folds)
    [variants]                                 # name -> settings; default: TIM-Net alone
    "TIM-Net" = {}
    "w/o TAB" = { "model.gate" = false }
    [set]                                      # settings of every run, e.g. { "train.epochs" = 500 }
    [per_corpus.RAVDESS.speaker]               # settings of one corpus (of datasets) under one protocol (of
                                               # protocols), on top of [set]:
    "train.folds" = 6                          # e.g. its speaker folds (6 groups of 4 actors, in their order)
    [quick]                                    # what --quick sets on top (default: 2 folds x 3 epochs)
    [mfcc]                                     # where a corpus's features are, if not MFCC/<NAME>.npy

The study's record, `Results/studies/<id>.json`, names its runs; `--resume ID` trains what is left of them and
writes the report again: `Results/studies/<id>.xlsx` and `<id>.html`.
"""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

from ..core.atomic import write_json
from ..core.config import TrainSettings, load_config, read_toml
from ..core.errors import TimnetError
from ..data.splits import check_protocol
from ..training.execution import Execution
from ..training.run import prepare_run
from ..training.run_store import Roots, read_run_record, run_dir
from .study_report import write_report
from .sweep import reopen_runs, train_runs

QUICK = {"train.folds": 2, "train.epochs": 3}
KEYS = {"name", "datasets", "protocols", "checkpoints", "baseline", "variants", "set", "per_corpus", "quick", "mfcc"}


def _strings(path: Path, key: str, value, allowed=None) -> list[str]:
    if not isinstance(value, list) or not value or not all(isinstance(v, str) for v in value):
        raise TimnetError(f"{path}: {key} must be a non-empty list of names, got {value!r}")
    wrong = [v for v in value if allowed is not None and v not in allowed]
    if wrong:
        raise TimnetError(f"{path}: {key}: {wrong[0]!r} is not one of {', '.join(allowed)}")
    return value


def load_study(path: Path) -> dict:
    """The study file, checked: every key known, every value of its kind (one line naming what is wrong)."""
    path = Path(path)
    data = read_toml(path, "study file")
    if unknown := sorted(set(data) - KEYS):
        raise TimnetError(f"{path}: unknown key(s) {unknown}; a study file has {', '.join(sorted(KEYS))}")
    variants = data.get("variants", {"TIM-Net": {}})
    if not isinstance(variants, dict) or not all(isinstance(v, dict) for v in variants.values()) or not variants:
        raise TimnetError(f'{path}: [variants] must be a table of name = {{ "model.gate" = false }} entries')
    for key in ("set", "quick", "mfcc"):
        if not isinstance(data.get(key, {}), dict):
            raise TimnetError(f"{path}: [{key}] must be a table, got {data[key]!r}")
    datasets = _strings(path, "datasets", data.get("datasets"))
    protocols = _strings(path, "protocols", data.get("protocols", ["random"]), TrainSettings.PROTOCOLS)
    per_corpus = data.get("per_corpus", {})
    if not isinstance(per_corpus, dict):
        raise TimnetError(f"{path}: [per_corpus] must hold tables such as [per_corpus.EMODB.speaker]")
    for corpus, by_protocol in per_corpus.items():
        if not isinstance(by_protocol, dict) or not all(isinstance(v, dict) for v in by_protocol.values()):
            raise TimnetError(f"{path}: [per_corpus.{corpus}] must hold tables such as [per_corpus.{corpus}.speaker]")
        if corpus not in datasets:  # a typo would otherwise set nothing, silently
            raise TimnetError(
                f"{path}: [per_corpus.{corpus}]: {corpus!r} is not one of the datasets ({', '.join(datasets)})"
            )
        _strings(path, f"per_corpus.{corpus}", list(by_protocol) or [""], protocols)
    baseline = data.get("baseline", next(iter(variants)))
    if baseline not in variants:
        raise TimnetError(f"{path}: baseline {baseline!r} is not one of the variants ({', '.join(variants)})")
    return {
        "name": str(data.get("name", path.stem)),
        "datasets": datasets,
        "protocols": protocols,
        "checkpoints": _strings(path, "checkpoints", data.get("checkpoints", ["last"]), TrainSettings.CHECKPOINTS),
        "baseline": baseline,
        "variants": variants,
        "set": data.get("set", {}),
        "per_corpus": per_corpus,
        "quick": data.get("quick", QUICK),
        "mfcc": data.get("mfcc", {}),
    }


def restrict(study: dict, only: dict[str, list[str]] | None) -> dict:
    """The study with its datasets / protocols restricted to `only`'s (which must be among the file's)."""
    study = dict(study)
    for key in ("datasets", "protocols"):
        if chosen := (only or {}).get(key):
            if wrong := [c for c in chosen if c not in study[key]]:
                raise TimnetError(f"--{key} {wrong[0]}: not among the study's {key} ({', '.join(study[key])})")
            study[key] = [c for c in study[key] if c in chosen]
    return study


def trained_policy(checkpoints: list[str]) -> dict:
    """The settings of the one training that gives every policy listed: best-test or best-val units evaluate their
    last epoch too, and best-val units tested every epoch keep the best-test epoch's predictions (`training.unit`)."""
    watched = [c for c in checkpoints if c != "last"]
    if not watched:
        return {"train.checkpoint": "last"}
    if len(watched) == 1:
        return {"train.checkpoint": watched[0]}
    return {"train.checkpoint": "best-val", "train.test_every": 1}


def plan_study(study: dict, quick: bool) -> list[dict]:
    """One spec per dataset x protocol x variant: {dataset, protocol, variant, overrides}."""
    policy = trained_policy(study["checkpoints"])
    specs = []
    for dataset in study["datasets"]:
        for protocol in study["protocols"]:
            for variant, settings in study["variants"].items():
                corpus = study.get("per_corpus", {}).get(dataset, {}).get(protocol, {})
                overrides = {**study["set"], **corpus, **settings, "train.protocol": protocol, **policy}
                overrides |= study["quick"] if quick else {}
                specs.append({"dataset": dataset, "protocol": protocol, "variant": variant, "overrides": overrides})
    return specs


def _record_path(roots: Roots, study_id: str) -> Path:
    return roots.results / "studies" / f"{study_id}.json"


def new_record(study: dict, study_file: Path, roots: Roots, quick: bool) -> dict:
    """A new study's record, its id new under Results/studies (name, quick, date and time)."""
    study_id = f"{study['name']}{'_quick' if quick else ''}_{datetime.now():%Y%m%d-%H%M%S}"
    while _record_path(roots, study_id).exists():
        study_id += "_2"
    record = {"study": study_id, "study_file": str(study_file), "quick": quick, "created": datetime.now().isoformat()}
    return record | {"definition": study, "runs": [], "missing": []}


def start_study(study_file: Path, roots: Roots, device: str, quick: bool, only: dict | None = None) -> tuple:
    """Create every run the machine has features for (the others are listed as missing) -> (record, runs)."""
    study = restrict(load_study(study_file), only)
    specs = plan_study(study, quick)
    configs = [load_config(s["dataset"], s["overrides"]) for s in specs]  # every error before any run exists
    features = [Path(study["mfcc"].get(c.dataset.name, Path("MFCC") / f"{c.dataset.name}.npy")) for c in configs]
    for cfg in (c for c, mfcc in zip(configs, features) if mfcc.is_file()):
        check_protocol(cfg)  # e.g. SAVEE under a sentence protocol
    record = new_record(study, study_file, roots, quick)
    runs = []
    for spec, cfg, mfcc in zip(specs, configs, features):
        name = cfg.dataset.name
        if not mfcc.is_file():
            if name not in [m["dataset"] for m in record["missing"]]:
                why = f"no features at {mfcc} (timnet preprocess --dataset {name}, or [mfcc] {name} = ...)"
                record["missing"].append({"dataset": name, "reason": why})
            continue
        run = prepare_run(cfg, mfcc, roots, device=device)
        runs.append(run)
        record["runs"].append({"run_id": run.paths.run_id, **{k: spec[k] for k in ("dataset", "protocol", "variant")}})
        write_json(_record_path(roots, record["study"]), record)
    if not runs:
        missing = "; ".join(m["reason"] for m in record["missing"])
        raise TimnetError(f"{study_file}: nothing to train on this machine — {missing}")
    return record, runs


def _setting(config: dict, key: str):
    section, name = key.split(".", 1)
    return config.get(section, {}).get(name)


def _adopted(study: dict, study_file: Path, runs: dict[str, str], roots: Roots, quick: bool) -> list[dict]:
    """The record's entries of `runs` if each is the run the study plans (quick or not) for its variant, corpus and
    protocol — every setting the plan sets, as set — else one line naming the first setting that differs."""
    entries = []
    for variant, run_id in runs.items():
        config = read_run_record(run_dir(run_id, roots.models))["config"]
        dataset, protocol = config["dataset"]["name"], config["train"]["protocol"]
        where = (dataset, protocol, variant)
        spec = next((s for s in plan_study(study, quick) if (s["dataset"], s["protocol"], s["variant"]) == where), None)
        if spec is None:
            raise TimnetError(f"run {run_id}: {dataset} under {protocol} is not in {study_file}")
        for key, value in spec["overrides"].items():
            if _setting(config, key) != value:
                raise TimnetError(
                    f"run {run_id}: {key} = {_setting(config, key)!r}, but {study_file} sets {value!r} for "
                    f"{variant}{' (--quick)' if quick else ''} — not the study's run"
                )
        entries.append({"run_id": run_id, "dataset": dataset, "protocol": protocol, "variant": variant})
    return entries


def adopt_runs(study_file: Path, runs: dict[str, str], roots: Roots, only: dict | None = None) -> dict:
    """A study's record over runs trained apart (`runs`: variant -> run id, e.g. on two machines), each checked to be
    the study's (`_adopted`: as planned in full, or all as planned by --quick). The study is restricted to those
    variants, corpora and protocols -> the record."""
    study = restrict(load_study(study_file), only)
    if unknown := [v for v in runs if v not in study["variants"]]:
        raise TimnetError(f"--run {unknown[0]}=...: not a variant of {study_file} ({', '.join(study['variants'])})")
    try:
        quick, entries = False, _adopted(study, study_file, runs, roots, quick=False)
    except TimnetError as full:
        if not any(f" {key} = " in str(full) for key in study["quick"]):
            raise  # not a quick run either: a setting --quick does not set differs
        quick, entries = True, _adopted(study, study_file, runs, roots, quick=True)
    study["variants"] = {v: study["variants"][v] for v in study["variants"] if v in runs}
    study["baseline"] = study["baseline"] if study["baseline"] in runs else next(iter(study["variants"]))
    study["datasets"] = [d for d in study["datasets"] if d in {e["dataset"] for e in entries}]
    study["protocols"] = [p for p in study["protocols"] if p in {e["protocol"] for e in entries}]
    record = new_record(study, study_file, roots, quick) | {"runs": entries, "adopted": True}
    write_json(_record_path(roots, record["study"]), record)
    return record


def resume_study_record(study_id: str, roots: Roots) -> dict:
    """The record of study `study_id` (`Results/studies/<id>.json`), or one line listing the studies there."""
    import json

    path = _record_path(roots, study_id)
    if not path.is_file():
        known = ", ".join(sorted(p.stem for p in path.parent.glob("*.json"))) or "none yet"
        raise TimnetError(f"{path}: no such study (studies in {path.parent}: {known})")
    return json.loads(path.read_text())


def resume_study(study_id: str, roots: Roots, device: str) -> tuple[dict, list]:
    record = resume_study_record(study_id, roots)
    return record, reopen_runs(record, roots, device)


def run_study(
    study_file: Path | None = None,
    resume: str | None = None,
    quick: bool = False,
    only: dict[str, list[str]] | None = None,
    how: Execution | None = None,
    report_only: bool = False,
    adopt: dict[str, str] | None = None,
) -> tuple[dict, dict]:
    """Start (or resume) a study, train every unit of every run at once, then write each run's outputs and the
    study's report -> (record, {"xlsx": path, "html": path, "tables": {...}}); `only`: {"datasets": [...],
    "protocols": [...]} restricts the file's lists; `report_only` (with `resume`): the report of the units trained
    so far, training nothing (a long study's partial tables, while it trains elsewhere); `adopt`: {variant: run id}
    of runs trained apart, made one study (`adopt_runs`) and then resumed."""
    how = how or Execution()
    roots, device = how.roots, how.resolved_device()
    if adopt:  # runs trained apart, reported (and finished) as the study they are
        resume = adopt_runs(study_file, adopt, roots, only)["study"]
    if report_only:
        if not resume:
            raise TimnetError("--report-only needs --resume ID (or --run): the study whose trained units to report")
        record = resume_study_record(resume, roots)
        return record, write_report(record, roots)
    if resume:
        record, runs = resume_study(resume, roots, device)
    else:
        record, runs = start_study(study_file, roots, device, quick, only)
    train_runs(runs, "study", record["study"], device, how)
    return record, write_report(record, roots)
