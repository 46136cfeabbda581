"""What a feature file says of its utterances and their source audio: the facts the published-number gate
(`core.published`) judges a run by.

`timnet preprocess` records the source audio's sample rates and shortest/longest file (`source_audio`) in the
feature file's .json; files written before that have neither, and the gate says the rate is unknown.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from ..core.config import DatasetConfig
from ..core.published import FeatureFacts
from .corpora import CORPORA, canonical_stems, corpus_caveat
from .feature_files import read_feature_record, sidecars

AUTHORS_ORDER = "not the authors' sample order"


def source_audio(paths: list[str]) -> dict:
    """The sample rates (Hz) of the audio files and their shortest and longest duration (s), from their headers."""
    import soundfile as sf

    infos = [sf.info(str(p)) for p in paths]
    seconds = [round(i.frames / i.samplerate, 4) for i in infos]
    return {
        "source_sample_rates": sorted({int(i.samplerate) for i in infos}),
        "source_seconds": [min(seconds), max(seconds)] if seconds else [],
    }


def _order(dataset: DatasetConfig, manifest: pd.DataFrame, canonical: pd.DataFrame | None) -> str:
    """Why the manifest's sample order is not the authors' ("" when it is, or cannot be told)."""
    if "file" in manifest and (caveat := corpus_caveat(dataset, manifest)):
        return f"{AUTHORS_ORDER} ({caveat.split(':')[0]})"
    if canonical is not None and len(manifest) == len(canonical):
        if list(manifest.stem) != list(canonical.stem):
            return AUTHORS_ORDER
    return ""


def feature_facts(npy: Path, dataset: DatasetConfig, manifest: pd.DataFrame | None = None) -> FeatureFacts:
    """The facts of a feature file (its .json and manifest; `manifest`: the one already read) for `dataset`."""
    record = read_feature_record(Path(npy)) or {}
    if manifest is None:
        csv = sidecars(Path(npy))[0]
        manifest = pd.read_csv(csv, dtype=str, keep_default_na=False) if csv.is_file() else pd.DataFrame()
        if "status" in manifest:
            manifest = manifest[manifest.status == "ok"].reset_index(drop=True)
    authors = bool(record.get("imported_from_authors_npy"))
    ours = bool(record) and not authors  # a file timnet preprocessed: its manifest names the corpus's files
    canonical = canonical_stems(dataset) if ours else None
    found, complete = len(manifest), dataset.expected_count or None
    if canonical is not None:
        found = int(manifest.stem.isin(set(canonical.stem)).sum()) if "stem" in manifest else 0
        complete = len(canonical)
    rates = record.get("source_sample_rates")
    seconds = record.get("source_seconds")
    corpus = CORPORA.get(dataset.reader)
    return FeatureFacts(
        found=found,
        complete=complete,
        extra=len(manifest) - found,
        order=_order(dataset, manifest, canonical) if ours else "",
        authors_features=authors,
        source_rates=tuple(rates) if rates is not None else None,
        distributed_rate=corpus.rate if corpus is not None and corpus.name == dataset.name.upper() else None,
        source_seconds=tuple(seconds) if seconds else None,
    )
