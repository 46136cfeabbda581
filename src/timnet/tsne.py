"""t-SNE of the penultimate embedding ([N, 39], the weighted sum over levels).

By default each utterance is embedded by the fold model for which it was a TEST sample, so the picture
shows unseen data; every fold model has its own embedding space, so expect a small cluster per fold
and emotion. `fold=k` embeds every utterance with one model instead (its training files included).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.manifold import TSNE

from .atomic import atomic_path
from .config import Config
from .errors import TimnetError
from .metrics import infer
from .predict import load_published
from .evaluate import evaluate_weights
from .features import FeatureSet, load_features, load_or_extract
from .runs import load_run, read_record, run_dir


def run_embeddings(run: str | Path, models_root: Path = Path("Models"), fold: int | None = None,
                   seed: int | None = None) -> tuple[Config, FeatureSet, np.ndarray]:
    """(config, features, [N, C] embeddings) of a training run's models of one seed (default: the run's first):
    each utterance from the fold model it was a test file of, or (`fold=k`) every utterance from fold k's."""
    record = read_record(run_dir(run, models_root))
    seeds = list(dict.fromkeys(unit["seed"] for unit in record["folds"]))
    seed = seeds[0] if seed is None else seed
    if seed not in seeds:
        raise TimnetError(f"run {Path(run).name} has no seed {seed}; its seeds: {', '.join(map(str, seeds))}")
    fold_models = load_run(run, models_root, fold, seed)
    config = fold_models.config
    features = load_features(Path(record["mfcc"]), config.dataset.classes)
    if fold is not None:
        return config, features, infer(next(iter(fold_models.models.values())), features.x)[1]
    embeddings = np.full((len(features), config.model.filters), np.nan, dtype=np.float32)
    where = {s: i for i, s in enumerate(features.manifest.stem)}
    for unit in record["folds"]:
        if unit["seed"] != seed or unit["unit"] not in fold_models.models:
            continue
        idx = np.array([where[s] for s in unit["test_stems"]], dtype=np.int64)
        embeddings[idx] = infer(fold_models.models[unit["unit"]], features.x[idx])[1]
    done = ~np.isnan(embeddings).any(axis=1)
    if not done.any():
        raise TimnetError(f"{fold_models.source}: no finished fold — nothing to embed")
    kept = FeatureSet(features.x[done], features.y[done], features.manifest[done].reset_index(drop=True), features.classes)
    return config, kept, embeddings[done]


@dataclass
class TsneInput:
    """What a t-SNE figure shows, and where it goes."""

    config: Config
    features: FeatureSet
    embeddings: np.ndarray
    out_dir: Path
    title: str


def embeddings_of(run: str | Path | None = None, weights: Path | None = None, config: Config | None = None,
                  features: FeatureSet | None = None, fold: int | None = None, seed: int | None = None,
                  models_root: Path = Path("Models"), results_root: Path = Path("Results")) -> TsneInput:
    """The embeddings of a training run (`run`, its models of `seed`) or of the authors' weights (`weights` with the
    dataset's `config` and `features`, default MFCC/<DATASET>.npy): by default each utterance from the fold model
    it was a test file of; `fold=k` embeds every utterance with fold k's model. The CLI and tsne.ipynb call this."""
    if (run is None) == (weights is None):
        raise TimnetError("give a training run (--run RUN), or the authors' weights (--weights ZIP with --dataset)")
    if run is not None:
        config, features, embeddings = run_embeddings(run, models_root, fold, seed)
        out_dir, title = Path(results_root) / Path(run).name, f"{config.dataset.name} run {Path(run).name}"
    else:
        if config is None:
            raise TimnetError("--weights needs --dataset: the weights do not say which corpus they are for")
        if features is None:
            features = load_or_extract(config, Path("MFCC") / f"{config.dataset.name}.npy")[0]
        if fold is None:
            embeddings = evaluate_weights(Path(weights), config, features).embeddings
        else:
            (model,) = load_published(Path(weights), config.dataset.name, fold).models.values()
            embeddings = infer(model, features.x)[1]
        out_dir = Path(results_root) / f"{Path(weights).stem}_{config.dataset.name}"
        title = f"{config.dataset.name}, authors' weights {Path(weights).name}"
    if fold is not None:
        title += f", fold {fold} model for all"
    return TsneInput(config, features, embeddings, out_dir, title)


def project(embeddings: np.ndarray, perplexity: float = 30.0, seed: int = 0) -> np.ndarray:
    """[N, C] -> [N, 2] with scikit-learn's t-SNE (perplexity clipped to what N allows)."""
    if len(embeddings) < 3:
        raise TimnetError(f"t-SNE needs at least 3 utterances, got {len(embeddings)}")
    perplexity = min(perplexity, (len(embeddings) - 1) / 3)
    return TSNE(n_components=2, perplexity=perplexity, random_state=seed, init="pca").fit_transform(embeddings)


def unique_path(path: Path) -> Path:
    """`path`, or `name_2.ext`, `name_3.ext`, ... so earlier results are never overwritten."""
    candidate, n = path, 1
    while candidate.exists():
        n += 1
        candidate = path.with_name(f"{path.stem}_{n}{path.suffix}")
    return candidate


def plot(coords: np.ndarray, labels: list[str], classes: list[str], path: Path, title: str, speakers: list[str] | None = None) -> Path:
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
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=120, format="png")
    plt.close(fig)
    return path


def write_tsne(out_dir: Path, config: Config, features: FeatureSet, embeddings: np.ndarray, title: str,
               perplexity: float = 30.0, seed: int = 0, speaker_markers: bool = False) -> tuple[Path, Path]:
    """Project, then write `tsne.png` and `tsne.csv` (file, label, speaker, x, y) under out_dir."""
    coords = project(embeddings, perplexity, seed)
    out_dir = Path(out_dir)
    png = unique_path(out_dir / f"tsne_perplexity{perplexity:g}_seed{seed}.png")
    csv = png.with_suffix(".csv")
    labels = [config.dataset.classes[i] for i in features.y]
    speakers = [str(s) for s in features.manifest.speaker] if speaker_markers and "speaker" in features.manifest else None
    plot(coords, labels, config.dataset.classes, png, title, speakers)
    table = pd.DataFrame({"file": features.manifest.file, "label": labels,
                          "speaker": features.manifest.get("speaker", ""), "x": coords[:, 0], "y": coords[:, 1]})
    with atomic_path(csv) as tmp:
        table.to_csv(tmp, index=False)
    return png, csv
