"""t-SNE of the penultimate embedding ([N, 39], the weighted sum over levels).

By default each utterance is embedded by the fold model for which it was a TEST sample, so the picture shows
unseen data. Ten fold models have ten embedding spaces, though: raw, each emotion splits into per-fold islands.
So each model's space is first mapped into one reference space (the first fold's) by orthogonal Procrustes,
fitted on the utterances both models trained on (`align="procrustes"`, the default; `"none"` shows the raw
islands). How well emotions separate is measured by the silhouette score (by emotion, -1..1) of the
embeddings and of the t-SNE plane, written under the figure and beside its CSV. `fold=k` embeds every utterance
with one model instead (its training files included).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from ..core.atomic import atomic_path, unique_path, write_json
from ..core.config import Config, load_config
from ..core.errors import TimnetError
from ..data.feature_files import FeatureSet, load_features
from ..data.mfcc_extraction import load_or_extract
from ..data.speaker_normalization import model_inputs
from ..serving.loading import load_model
from ..serving.portable import PortableModel
from ..training.run_store import latest_run, read_run_record, run_dir
from .evaluate import model_test_folds

ALIGNMENTS = ("procrustes", "none")
PERPLEXITY = 30.0  # scikit-learn's default; clipped to what the number of utterances allows
TSNE_SEED = 0


def procrustes_map(source: np.ndarray, reference: np.ndarray, points: np.ndarray) -> np.ndarray:
    """Map `points` from one embedding space into another: the rotation (orthogonal Procrustes, after centring)
    that best takes `source` onto `reference` — the same utterances embedded by the two models."""
    from scipy.linalg import orthogonal_procrustes

    src_mean, ref_mean = source.mean(axis=0), reference.mean(axis=0)
    rotation, _ = orthogonal_procrustes(source - src_mean, reference - ref_mean)
    return (points - src_mean) @ rotation + ref_mean


def held_out_embeddings(
    model: PortableModel, tests: dict[str, np.ndarray], x: np.ndarray, align: str = "procrustes"
) -> tuple[np.ndarray, np.ndarray]:
    """([N, C] aligned, [N, C] raw): each utterance embedded by the fold model (unit) it was a TEST file of (NaN
    where none held it out). Raw, every model has its own space, so each emotion splits into per-fold islands. With
    `align="procrustes"` every model's space is mapped into the first one's, fitted on the utterances that BOTH
    models trained on (on all utterances where fewer than 2 x C are, as with 2 folds), before its held-out
    utterances are mapped: only unseen data, in one space. `align="none"` returns the raw embeddings twice."""
    if align not in ALIGNMENTS:
        raise TimnetError(f"unknown alignment {align!r}; choose one of {', '.join(ALIGNMENTS)}")
    raw = np.full((len(x), model.config.model.filters), np.nan, dtype=np.float32)
    out = raw.copy()
    reference = None
    for unit in model.units:
        held = tests[unit]
        if align == "none":
            raw[held] = model.unit_outputs(unit, x[held])[1]
            continue
        everything = model.unit_outputs(unit, x)[1]
        raw[held] = everything[held]
        if reference is None:
            reference, ref_unit = everything, unit
            out[held] = everything[held]
            continue
        fit = np.ones(len(x), dtype=bool)
        fit[held] = False
        fit[tests[ref_unit]] = False
        if fit.sum() < 2 * everything.shape[1]:  # e.g. 2 folds: no utterance trained both models; fit on all
            fit[:] = True
        out[held] = procrustes_map(everything[fit], reference[fit], everything[held])
    return (raw, raw) if align == "none" else (out, raw)


def _one_model_notes(fold: int, embeddings: np.ndarray, labels: np.ndarray) -> dict:
    return {"align": f"one model (fold {fold})", "silhouette_embedding": silhouette(embeddings, labels)}


def silhouette(embeddings: np.ndarray, labels: np.ndarray) -> float:
    """How well the emotions separate: silhouette score by class (-1..1), NaN for fewer than two classes."""
    from sklearn.metrics import silhouette_score  # imported when used (see metrics.scores)

    return float(silhouette_score(embeddings, labels)) if 1 < len(np.unique(labels)) < len(labels) else float("nan")


@dataclass
class TsneInput:
    """What a t-SNE figure shows, where it goes, and how it was made (`notes`: alignment, silhouettes)."""

    config: Config
    features: FeatureSet
    embeddings: np.ndarray
    out_dir: Path
    title: str
    notes: dict = field(default_factory=dict)

    @property
    def silhouette(self) -> float:
        return self.notes["silhouette_embedding"]


def _held_out(features: FeatureSet, model: PortableModel, tests: dict, align: str):
    """(kept features, aligned embeddings, notes) for the utterances some fold model held out."""
    aligned, raw = held_out_embeddings(model, tests, features.x, align)
    done = ~np.isnan(aligned).any(axis=1)
    if not done.any():
        raise TimnetError("no finished fold model held out any of these utterances — nothing to embed")
    kept = FeatureSet(
        features.x[done], features.y[done], features.manifest[done].reset_index(drop=True), features.classes
    )
    notes = {"align": align, "models": len(model.units), "silhouette_embedding": silhouette(aligned[done], kept.y)}
    if align != "none":
        notes["silhouette_unaligned"] = silhouette(raw[done], kept.y)
    return kept, aligned[done], notes


def run_embeddings(
    run: str | Path,
    models_root: Path = Path("Models"),
    fold: int | None = None,
    seed: int | None = None,
    align: str = "procrustes",
) -> tuple[Config, FeatureSet, np.ndarray, dict]:
    """(config, features, [N, C] embeddings, notes) of a training run's models of one seed (default: the run's
    first): each utterance from the fold model it was a test file of, or (`fold=k`) every utterance from fold k's."""
    path = run_dir(run, models_root)
    record = read_run_record(path)
    seeds = list(dict.fromkeys(unit["seed"] for unit in record["folds"]))
    seed = seeds[0] if seed is None else seed
    if seed not in seeds:
        raise TimnetError(f"run {Path(run).name} has no seed {seed}; its seeds: {', '.join(map(str, seeds))}")
    model = load_model(path, fold=fold, seed=seed, engine="torch", models_root=models_root)
    features = load_features(Path(record["mfcc"]), model.config.dataset.classes)
    features = model_inputs(features, model.config.train.normalize)  # what the run's models read
    if fold is not None:
        embeddings = model.embed(features.x)
        return (model.config, features, embeddings, _one_model_notes(fold, embeddings, features.y))
    where = {s: i for i, s in enumerate(features.manifest.stem)}
    tests = {
        u["unit"]: np.array([where[s] for s in u["test_stems"]], dtype=np.int64)
        for u in record["folds"]
        if u["unit"] in model.fold_of
    }
    return (model.config, *_held_out(features, model, tests, align))


def embeddings_of(
    run: str | Path | None = None,
    weights: Path | None = None,
    config: Config | None = None,
    features: FeatureSet | None = None,
    fold: int | None = None,
    seed: int | None = None,
    models_root: Path = Path("Models"),
    results_root: Path = Path("Results"),
    align: str = "procrustes",
) -> TsneInput:
    """The embeddings of a training run (`run`, its models of `seed`) or of the authors' weights (`weights` with the
    dataset's `config` and `features`, default MFCC/<DATASET>.npy): by default each utterance from the fold model
    it was a test file of, all in one aligned space; `fold=k` embeds every utterance with fold k's model.
    The CLI, `timnet run` and tsne.ipynb call this."""
    if (run is None) == (weights is None):
        raise TimnetError("give a training run (--run RUN), or the authors' weights (--weights ZIP with --dataset)")
    if run is not None:
        config, features, embeddings, notes = run_embeddings(run, models_root, fold, seed, align)
        out_dir, title = Path(results_root) / Path(run).name, f"{config.dataset.name} run {Path(run).name}"
    else:
        if config is None:
            raise TimnetError("--weights needs --dataset: the weights do not say which corpus they are for")
        if features is None:
            features = load_or_extract(config, Path("MFCC") / f"{config.dataset.name}.npy")[0]
        model = load_model(Path(weights), dataset=config, fold=fold, engine="torch")
        features = model_inputs(features, model.config.train.normalize)
        if fold is None:
            features, embeddings, notes = _held_out(features, model, model_test_folds(model, features)[0], align)
        else:
            embeddings = model.embed(features.x)
            notes = _one_model_notes(fold, embeddings, features.y)
        out_dir = Path(results_root) / f"{Path(weights).stem}_{config.dataset.name}"
        title = f"{config.dataset.name}, authors' weights {Path(weights).name}"
    if fold is not None:
        title += f", fold {fold} model for all"
    elif notes["align"] == "procrustes":
        title += ", held-out, aligned"
    return TsneInput(config, features, embeddings, out_dir, title, notes)


def project(embeddings: np.ndarray, perplexity: float = PERPLEXITY, seed: int = TSNE_SEED) -> np.ndarray:
    """[N, C] -> [N, 2] with scikit-learn's t-SNE (perplexity clipped to what N allows)."""
    if len(embeddings) < 3:
        raise TimnetError(f"t-SNE needs at least 3 utterances, got {len(embeddings)}")
    perplexity = min(perplexity, (len(embeddings) - 1) / 3)
    from sklearn.manifold import TSNE  # imported when used (see metrics.scores)

    return TSNE(n_components=2, perplexity=perplexity, random_state=seed, init="pca").fit_transform(embeddings)


def plot(
    coords: np.ndarray,
    labels: list[str],
    classes: list[str],
    path: Path,
    title: str,
    speakers: list[str] | None = None,
    caption: str = "",
) -> Path:
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 6))
    colours = plt.get_cmap("tab10")
    markers = "o^sDvP*Xh<>p"
    speaker_marker = {s: markers[i % len(markers)] for i, s in enumerate(sorted(set(speakers)))} if speakers else None
    labels = np.asarray(labels)
    for c, name in enumerate(classes):
        mask = labels == name
        if not mask.any():
            continue
        if speaker_marker:
            for spk, marker in speaker_marker.items():
                sel = mask & (np.asarray(speakers) == spk)
                ax.scatter(coords[sel, 0], coords[sel, 1], s=14, color=colours(c), marker=marker, alpha=0.8)
            ax.scatter([], [], color=colours(c), label=name)
        else:
            ax.scatter(coords[mask, 0], coords[mask, 1], s=14, color=colours(c), label=name, alpha=0.8)
    ax.legend(title="emotion", fontsize=8, markerscale=1.5)
    ax.set_title(title)
    ax.set_xticks([])
    ax.set_yticks([])
    if caption:
        ax.set_xlabel(caption, fontsize=9)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=120, format="png")
    plt.close(fig)
    return path


def write_tsne(
    out_dir: Path,
    config: Config,
    features: FeatureSet,
    embeddings: np.ndarray,
    title: str,
    perplexity: float = PERPLEXITY,
    seed: int = TSNE_SEED,
    speaker_markers: bool = False,
    notes: dict | None = None,
) -> tuple[Path, Path]:
    """Project, then write `tsne_*.png`, `tsne_*.csv` (file, label, speaker, x, y) and `tsne_*.json` (how it was
    made: alignment, silhouette of the embeddings and of the t-SNE plane) under out_dir, never over earlier ones."""
    coords = project(embeddings, perplexity, seed)
    out_dir = Path(out_dir)
    png = unique_path(out_dir / f"tsne_perplexity{perplexity:g}_seed{seed}.png")
    csv = png.with_suffix(".csv")
    notes = {
        **(notes or {}),
        "perplexity": perplexity,
        "tsne_seed": seed,
        "utterances": len(features),
        "silhouette_tsne": silhouette(coords, features.y),
    }
    caption = "silhouette by emotion: " + ", ".join(
        f"{name} {notes[key]:.2f}"
        for key, name in (
            ("silhouette_embedding", "embedding"),
            ("silhouette_unaligned", "unaligned"),
            ("silhouette_tsne", "t-SNE plane"),
        )
        if key in notes
    )
    labels = [config.dataset.classes[i] for i in features.y]
    speakers = (
        [str(s) for s in features.manifest.speaker] if speaker_markers and "speaker" in features.manifest else None
    )
    plot(coords, labels, config.dataset.classes, png, title, speakers, caption)
    table = pd.DataFrame(
        {
            "file": features.manifest.file,
            "label": labels,
            "speaker": features.manifest.get("speaker", ""),
            "x": coords[:, 0],
            "y": coords[:, 1],
        }
    )
    with atomic_path(csv) as tmp:
        table.to_csv(tmp, index=False)
    write_json(csv.with_suffix(".json"), notes)
    return png, csv


@dataclass
class TsneFigure:
    """A written t-SNE: the figure, its table, and the line that says what it shows."""

    png: Path
    csv: Path
    summary: str


def tsne_figure(
    dataset: str,
    run: str | None = None,
    weights: Path | None = None,
    data: Path | None = None,
    models_root: Path = Path("Models"),
    results_root: Path = Path("Results"),
    perplexity: float = 30.0,
    tsne_seed: int = 0,
    speaker_markers: bool = False,
) -> TsneFigure:
    """tsne.ipynb in one call: the t-SNE of the authors' `weights` for `dataset` (features from `data`, a corpus
    folder or MFCC .npy, default MFCC/<DATASET>.npy), or else of a training run (`run`, default the latest of
    `dataset` under `models_root`)."""
    if weights:
        cfg = load_config(dataset)
        features, _ = load_or_extract(cfg, Path(data or f"MFCC/{cfg.dataset.name}.npy"))
        t = embeddings_of(weights=Path(weights), config=cfg, features=features, results_root=Path(results_root))
    else:
        run = run or latest_run(Path(models_root), dataset)
        t = embeddings_of(run=run, models_root=Path(models_root), results_root=Path(results_root))
    png, csv = write_tsne(
        t.out_dir, t.config, t.features, t.embeddings, t.title, perplexity, tsne_seed, speaker_markers, t.notes
    )
    summary = f"{len(t.features)} utterances, silhouette by emotion {t.silhouette:.2f} ({t.notes['align']})"
    return TsneFigure(png, csv, summary)
