"""Fold construction: the authors' random KFold, and folds that keep speakers, sentences or both apart. Pure
functions.

A fold is (train indices, test indices) into the feature set. `random` reproduces the authors' test
sets exactly: KFold(n_splits, shuffle=True, random_state=seed) over the COMPLETE corpus in their
order, then restricted to the files present, so a partial corpus keeps the authors' test sets.
`speaker` (speaker-independent) and `sentence` (text-independent) put every speaker / sentence in one test part.
`speaker-sentence` crosses K_s speaker groups with K_t = min(K_s, sentences) sentence groups: cell (i, j) tests
group i's speakers on group j's sentences and trains on the other speakers' other sentences, so every utterance is
tested once, by a model that heard neither its voice nor its text. Fold i is speaker group i: its K_t cells are
units of their own (`Split.cell`), and its results pool their predictions, so statistics are over K_s folds.
"""

from __future__ import annotations

from typing import NamedTuple

import natsort
import numpy as np
import pandas as pd

from ..core.config import Config, TrainSettings
from ..core.errors import TimnetError
from ..core.validation import invalid
from .corpora import canonical_stems, corpus_of, sentences

Fold = tuple[np.ndarray, np.ndarray]


class Split(NamedTuple):
    """One unit's parts: fold k (1-based), its cell (0 where the protocol has none; under `speaker-sentence` the
    sentence group j, 1-based, of fold k's speaker group) and the fold's (train, test) indices."""

    fold: int
    cell: int
    train: np.ndarray
    test: np.ndarray


def kfold(n: int, n_splits: int, seed: int) -> list[Fold]:
    """The authors' split of n ordered samples (fold k of the paper = element k-1)."""
    if n < n_splits:
        raise TimnetError(f"{n} utterances cannot be split into {n_splits} folds")
    from sklearn.model_selection import KFold  # imported when used: ~2 s of start-up (see metrics.scores)

    return [(tr, te) for tr, te in KFold(n_splits=n_splits, shuffle=True, random_state=seed).split(np.zeros((n, 1)))]


def canonical_positions(stems: pd.Series, canonical: pd.DataFrame | None) -> np.ndarray | None:
    """Position of each present utterance in the complete corpus, or None if it cannot be known."""
    if canonical is None:
        return None
    where = {s: i for i, s in enumerate(canonical.stem)}
    unknown = [s for s in stems if s not in where]
    if unknown:
        return None
    return np.array([where[s] for s in stems], dtype=np.int64)


def random_folds(stems: pd.Series, canonical: pd.DataFrame | None, n_splits: int, seed: int) -> list[Fold]:
    """Authors' folds, restricted to the utterances present (identity when the corpus is complete)."""
    positions = canonical_positions(stems, canonical)
    if positions is None:
        return kfold(len(stems), n_splits, seed)
    folds = []
    for tr, te in kfold(len(canonical), n_splits, seed):
        folds.append((np.flatnonzero(np.isin(positions, tr)), np.flatnonzero(np.isin(positions, te))))
    return folds


def group_chunks(groups: pd.Series, n_splits: int, seed: int, what: str, contiguous: bool = False) -> list[list[str]]:
    """The groups (speakers, sessions, sentences) of each fold's test part: one each when there are no more groups
    than folds, else shuffled with `seed` and dealt into n_splits, or (`contiguous`, `train.speaker_groups`) cut
    in their natural order into n_splits runs of consecutive groups (EmoBox's RAVDESS folds: actors 1-4, 5-8, ...)."""
    groups = groups.astype(str)
    if (groups == "").any():
        raise TimnetError(
            f"{what}-independent folds need a {what} for every utterance, and this feature set has none for "
            f"{int((groups == '').sum())} of them (e.g. the authors' CASIA npy, or your corpus without a {what} in "
            "its pattern) — use --protocol random"
        )
    names = natsort.natsorted(groups.unique())
    if len(names) < 2:
        raise TimnetError(f"only one {what} ({names[0]}) — {what}-independent folds need at least two")
    if n_splits >= len(names):
        return [[g] for g in names]
    dealt = names if contiguous else np.random.default_rng(seed).permutation(names)
    return [list(c) for c in np.array_split(np.asarray(dealt), n_splits)]


def group_folds(
    groups: pd.Series, n_splits: int, seed: int, what: str = "speaker", contiguous: bool = False
) -> list[Fold]:
    """Folds that share no group (speaker, IEMOCAP session, sentence): leave-one-group-out when there are no more
    groups than folds, else groups dealt into n_splits folds (`group_chunks`)."""
    values = groups.astype(str).to_numpy()
    chunks = group_chunks(groups, n_splits, seed, what, contiguous)
    return [(np.flatnonzero(~np.isin(values, c)), np.flatnonzero(np.isin(values, c))) for c in chunks]


def speaker_sentence_cells(
    speakers: pd.Series, sentences: pd.Series, n_splits: int, seed: int, contiguous: bool = False
) -> list[Split]:
    """K_s speaker groups (`group_chunks`: n_splits, capped by the speakers) x K_t = min(K_s, sentences) sentence
    groups, both drawn from `seed`. Cell (i, j) tests speaker group i on sentence group j and trains on every other
    speaker's other sentences: neither a voice nor a text of its test part is heard in training, and every utterance
    is in exactly one test part. Cells without utterances (a speaker group that never said those sentences) are
    left out: they test nothing."""
    by_speaker = group_chunks(speakers, n_splits, seed, "speaker", contiguous)
    by_sentence = group_chunks(sentences, len(by_speaker), seed, "sentence")
    spk, sen = speakers.astype(str).to_numpy(), sentences.astype(str).to_numpy()
    cells = []
    for i, speaker_chunk in enumerate(by_speaker, start=1):
        heard = np.isin(spk, speaker_chunk)
        for j, sentence_chunk in enumerate(by_sentence, start=1):
            said = np.isin(sen, sentence_chunk)
            if (heard & said).any():
                cells.append(Split(i, j, np.flatnonzero(~heard & ~said), np.flatnonzero(heard & said)))
    return cells


def speaker_folds(groups: pd.Series, n_splits: int, seed: int, contiguous: bool = False) -> list[Fold]:
    """Speaker-independent folds (`group_folds` over speakers or IEMOCAP sessions)."""
    return group_folds(groups, n_splits, seed, "speaker", contiguous)


def validation_split(
    train: np.ndarray, labels: np.ndarray, groups: pd.Series | None, fraction: float, seed: int
) -> Fold:
    """Carve validation out of a fold's TRAINING part (never the test part).

    With groups (speakers, or sentences under the sentence protocol): whole groups are held out, as the protocol
    holds them out of the test part; without: stratified by class.
    """
    if groups is not None:
        spk = groups.to_numpy()[train].astype(str)
        names = natsort.natsorted(set(spk))
        if len(names) < 2:
            raise TimnetError("cannot hold out a validation group: the training part has only one speaker (sentence)")
        rng = np.random.default_rng(seed)
        held, count = [], 0
        for name in rng.permutation(names):
            if count >= fraction * len(train) or len(held) == len(names) - 1:
                break
            held.append(name)
            count += int((spk == name).sum())
        mask = np.isin(spk, held)
        return train[~mask], train[mask]
    y = labels[train]
    n_val = max(1, int(round(fraction * len(train))))
    counts = np.bincount(y)[np.unique(y)]
    if n_val >= len(counts) and counts.min() >= 2:  # stratification needs a sample of every class on both sides
        from sklearn.model_selection import StratifiedShuffleSplit  # imported when used (see metrics.scores)

        tr, va = next(StratifiedShuffleSplit(n_splits=1, test_size=n_val, random_state=seed).split(np.zeros(len(y)), y))
    else:
        order = np.random.default_rng(seed).permutation(len(train))
        tr, va = order[n_val:], order[:n_val]
    return train[np.sort(tr)], train[np.sort(va)]


def make_splits(
    protocol: str,
    manifest: pd.DataFrame,
    canonical: pd.DataFrame | None,
    n_splits: int,
    seed: int,
    contiguous: bool = False,
) -> list[Split]:
    """The units' parts for a protocol (`TrainSettings.PROTOCOLS`), in unit order; IEMOCAP's speaker protocol is
    leave-one-session-out. The sentence protocols need the manifest's `sentence` column (`corpora.sentences`);
    `contiguous`: speakers grouped in their order, not shuffled (`group_chunks`)."""
    sentence = manifest["sentence"] if "sentence" in manifest else pd.Series("", index=manifest.index)
    if protocol == "random":
        folds = random_folds(manifest.stem, canonical, n_splits, seed)
    elif protocol == "speaker":
        use_sessions = "session" in manifest and (manifest.session.astype(str) != "").all()
        folds = speaker_folds(manifest.session if use_sessions else manifest.speaker, n_splits, seed, contiguous)
    elif protocol == "sentence":
        folds = group_folds(sentence, n_splits, seed, "sentence")
    elif protocol == "speaker-sentence":
        return speaker_sentence_cells(manifest.speaker, sentence, n_splits, seed, contiguous)
    else:
        raise invalid("train.protocol", f"one of {', '.join(TrainSettings.PROTOCOLS)}", protocol)
    return [Split(k, 0, train, test) for k, (train, test) in enumerate(folds, start=1)]


def make_folds(protocol: str, manifest: pd.DataFrame, canonical, n_splits: int, seed: int, contiguous=False) -> list:
    """The (train, test) parts of `make_splits`'s units, in unit order."""
    return [(s.train, s.test) for s in make_splits(protocol, manifest, canonical, n_splits, seed, contiguous)]


def check_protocol(cfg: Config) -> None:
    """Refuse, in one line, a sentence protocol on a corpus whose text ids are not known (`Corpus.texts_unknown`)."""
    why = corpus_of(cfg.dataset).texts_unknown
    if why and cfg.train.protocol in ("sentence", "speaker-sentence"):
        raise TimnetError(f"{cfg.dataset.name}: protocol {cfg.train.protocol} cannot keep texts apart — {why}")


def protocol_splits(cfg: Config, manifest: pd.DataFrame) -> tuple[pd.DataFrame, list[Split]]:
    """(the manifest with its sentence ids, the units' parts of cfg's protocol, fold count and seed): what a run
    trains on and what the leakage audit checks, computed the one way (`check_protocol` first)."""
    check_protocol(cfg)
    t = cfg.train
    manifest = manifest.assign(sentence=sentences(manifest, cfg.dataset))
    contiguous = t.speaker_groups == "contiguous"
    return manifest, make_splits(t.protocol, manifest, canonical_stems(cfg.dataset), t.folds, t.seed, contiguous)
