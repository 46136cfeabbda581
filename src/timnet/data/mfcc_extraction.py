"""The authors' MFCC recipe, parallel extraction, and `preprocess`: a corpus to the `MFCC/<DATASET>.npy` trio.

Recipe (the spec: ../shared/reference/TIMNET_FACTS.md beside the repo; README, "Faithfulness"): librosa.load
at 22.05 kHz mono with soxr_hq resampling; centred zero-pad or crop to a fixed length; 39 MFCCs with
librosa's defaults passed explicitly; [frames, 39] float32. The trio on disk (npy, csv manifest, json
settings) is written and read by `feature_files`; the units of a run share it with workers by `shared_features`.
"""

from __future__ import annotations

import dataclasses
import multiprocessing
import os
import sys
import warnings
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from threadpoolctl import threadpool_limits

from ..core.atomic import write_json
from ..core.config import Config, FeatureSettings
from ..core.errors import BadAudioError, TimnetError
from ..core.progress import Bar
from ..core.version import __version__
from .corpora import build_manifest
from .feature_facts import source_audio
from .feature_files import (
    FeatureSet,
    fingerprint,
    load_features,
    read_feature_record,
    sha256,
    sidecars,
    write_feature_files,
)

SILENCE_PEAK = 1e-4  # below -80 dBFS everywhere: nothing to recognise
MIN_SECONDS = 0.1
MIN_SAMPLE_RATE = 1000  # below this a file is not speech but a broken header


def fix_length(y: np.ndarray, length: int) -> np.ndarray:
    """Centred zero-pad ((L-n)//2 on the left, the rest right) or centred crop (start (n-L)//2)."""
    n = len(y)
    if n < length:
        left = (length - n) // 2
        return np.pad(y, (left, length - n - left))
    start = (n - length) // 2
    return y[start : start + length]


def load_signal(path: Path, settings: FeatureSettings, min_seconds: float = MIN_SECONDS) -> np.ndarray:
    """Load mono float32 audio at the recipe's rate, or raise BadAudioError saying what is wrong.

    Stereo is averaged to mono, other rates are resampled and 8/16/24/32-bit PCM or float are
    read as float: exactly what the authors' `librosa.load` did, so those are not errors.
    """
    import librosa
    import soundfile as sf

    path = Path(path)
    if not path.is_file():
        raise BadAudioError(path, "file not found", "check the path")
    try:
        info = sf.info(str(path))
    except Exception:  # libsndfile's error type differs across versions
        raise BadAudioError(path, "cannot be read as audio (corrupt, truncated or not an audio file)") from None
    if info.frames == 0:
        raise BadAudioError(path, "is empty (0 samples)")
    if info.samplerate < MIN_SAMPLE_RATE:  # resampling a 1 Hz header to 16 kHz would take 16,000x the memory
        raise BadAudioError(
            path, f"claims a sample rate of {info.samplerate} Hz (speech needs ≥ {MIN_SAMPLE_RATE} Hz): a broken header"
        )
    try:
        y, _ = librosa.load(str(path), sr=settings.sample_rate, mono=True, res_type=settings.res_type)
    except Exception as err:
        raise BadAudioError(path, f"cannot be decoded ({type(err).__name__}: {err})") from None
    if not np.all(np.isfinite(y)):
        raise BadAudioError(path, "contains NaN or infinite samples (corrupt float wav)")
    if len(y) < min_seconds * settings.sample_rate:
        raise BadAudioError(path, f"is too short ({info.frames / info.samplerate:.3f} s < {min_seconds} s)")
    if np.max(np.abs(y)) < SILENCE_PEAK:
        raise BadAudioError(path, "is silent (peak below -80 dBFS)")
    return y


def compute_mfcc(signal: np.ndarray, settings: FeatureSettings) -> np.ndarray:
    """[frames, n_mfcc] float32 MFCCs of an already fixed-length signal."""
    import librosa

    m = librosa.feature.mfcc(
        y=signal,
        sr=settings.sample_rate,
        n_mfcc=settings.n_mfcc,
        dct_type=2,
        norm="ortho",
        lifter=0,
        n_fft=settings.n_fft,
        hop_length=settings.hop_length,
        win_length=None,
        window=settings.window,
        center=settings.center,
        pad_mode=settings.pad_mode,
        power=2.0,
        n_mels=settings.n_mels,
        fmin=0.0,
        fmax=None,
        htk=False,
    )
    return np.ascontiguousarray(m.T, dtype=np.float32)


def extract_file(path: Path, settings: FeatureSettings) -> np.ndarray:
    """Audio file -> [frames, n_mfcc] with the authors' recipe."""
    return compute_mfcc(fix_length(load_signal(path, settings), settings.signal_length), settings)


def _extract_job(job: tuple[int, str, FeatureSettings]) -> tuple[int, np.ndarray | None, str | None]:
    index, path, settings = job
    try:
        return index, extract_file(Path(path), settings), None
    except BadAudioError as err:
        return index, None, err.problem


def _pool_context():
    # fork hands workers the parent's warmed-up librosa (numba code, filter banks) at no cost;
    # macOS and Windows need spawn, where each worker warms up once.
    return multiprocessing.get_context("fork" if sys.platform.startswith("linux") else "spawn")


def _single_threaded_worker() -> None:
    """One BLAS thread per worker process: the processes already use every core."""
    threadpool_limits(1)


def extract_many(
    paths: list[str | Path], settings: FeatureSettings, workers: int | None = None, progress: bool = True
) -> tuple[np.ndarray, dict[int, str]]:
    """Features of many files, in order, using `workers` processes (default: all cores).

    Returns (x [N, frames, n_mfcc] with zeros for failed files, {index: problem} of failed files).
    """
    workers = max(1, workers or os.cpu_count() or 1)
    x = np.zeros((len(paths), settings.frames, settings.n_mfcc), dtype=np.float32)
    failed: dict[int, str] = {}
    jobs = [(i, str(p), settings) for i, p in enumerate(paths)]
    bar = Bar(total=len(jobs), desc="MFCC", unit="file", disable=not progress)

    def collect(results):
        for i, feat, problem in results:
            if problem is None:
                x[i] = feat
            else:
                failed[i] = problem
            bar.update()

    with threadpool_limits(1):  # same BLAS threading in every mode: features do not depend on `workers`
        collect([_extract_job(jobs[0])] if jobs else [])  # also warms up before forking: no worker pays the JIT again
    if workers == 1 or len(jobs) < 4 * workers:
        with threadpool_limits(1):
            collect(map(_extract_job, jobs[1:]))
    else:
        with ProcessPoolExecutor(
            max_workers=workers, mp_context=_pool_context(), initializer=_single_threaded_worker
        ) as pool:
            collect(pool.map(_extract_job, jobs[1:], chunksize=max(1, min(16, len(jobs) // (8 * workers)))))
    bar.close()
    return x, failed


def extract_manifest(
    manifest: pd.DataFrame,
    settings: FeatureSettings,
    workers: int | None = None,
    skip_bad: bool = False,
    progress: bool = True,
) -> tuple[np.ndarray, pd.DataFrame, list[tuple[str, str]]]:
    """Features of every manifest row: (x of the good rows, their manifest rows, [(file, problem)] skipped).

    Without `skip_bad` the first bad file raises BadAudioError, saying how many more there are.
    """
    x, failed = extract_many(list(manifest.path), settings, workers=workers, progress=progress)
    if failed and not skip_bad:
        i = min(failed)
        more = f" (and {len(failed) - 1} more bad file(s))" if len(failed) > 1 else ""
        raise BadAudioError(manifest.path.iat[i], failed[i] + more)
    good = np.array([i not in failed for i in range(len(manifest))], dtype=bool)
    if not good.any():
        raise TimnetError(f"every one of the {len(manifest)} files was bad; nothing to compute")
    skipped = [(manifest.file.iat[i], failed[i]) for i in sorted(failed)]
    return x[good], manifest[good].reset_index(drop=True), skipped


def features_from_audio(
    config: Config, data: Path, workers: int | None = None, skip_bad: bool = False, progress: bool = True
) -> tuple[FeatureSet, list[tuple[str, str]]]:
    """A corpus folder straight to features in memory (nothing written)."""
    manifest, skipped = build_manifest(Path(data), config.dataset, skip_bad=skip_bad)
    x, good, bad = extract_manifest(manifest, config.features, workers, skip_bad, progress)
    return FeatureSet(
        x, good.class_index.to_numpy().astype(np.int64), good, list(config.dataset.classes)
    ), skipped + bad


def load_or_extract(
    config: Config,
    data: Path,
    workers: int | None = None,
    skip_bad: bool = False,
    trust_pickle: bool = False,
    progress: bool = True,
) -> tuple[FeatureSet, list[tuple[str, str]]]:
    """Features from an MFCC `.npy`, or computed in memory from a corpus folder: (features, skipped files)."""
    data = Path(data)
    if data.suffix == ".npy":
        return load_features(data, config.dataset.classes, trust_pickle=trust_pickle), []
    return features_from_audio(config, data, workers=workers, skip_bad=skip_bad, progress=progress)


@dataclass
class PreprocessResult:
    npy: Path
    count: int
    skipped: list[tuple[str, str]]
    up_to_date: bool


def _describe_change(npy: Path, record: dict, manifest: pd.DataFrame, settings: FeatureSettings) -> str:
    old = record.get("settings", {})
    changed = [f"{k} {old.get(k)!r} -> {v!r}" for k, v in dataclasses.asdict(settings).items() if old.get(k) != v]
    csv = sidecars(npy)[0]
    if csv.is_file():
        before = set(pd.read_csv(csv, dtype=str, keep_default_na=False).file)
        now = set(manifest.file)
        if before != now:
            changed.append(f"{len(now - before)} file(s) added, {len(before - now)} removed")
    return (
        "; ".join(changed)
        or "an input file's size or modification time changed; copying a corpus changes the times too"
    )


def preprocess(
    config: Config,
    data: Path,
    out_dir: Path,
    *,
    workers: int | None = None,
    skip_bad: bool = False,
    overwrite: bool = False,
    progress: bool = True,
    trust_pickle: bool = False,
) -> PreprocessResult:
    """Corpus folder (or the authors' npy) -> `out_dir/<NAME>.npy/.csv/.json`. Idempotent."""
    data, out_dir = Path(data), Path(out_dir)
    npy = out_dir / f"{config.dataset.name}.npy"
    if data.suffix == ".npy":
        return _import_authors_npy(config, data, npy, trust_pickle, overwrite)
    manifest, name_problems = build_manifest(data, config.dataset, skip_bad=skip_bad)
    settings = config.features
    fp = fingerprint(manifest, settings)
    record = read_feature_record(npy)
    if npy.exists():
        if record and record.get("fingerprint") == fp and record.get("npy_sha256") == sha256(npy):
            skipped = [tuple(s) for s in record.get("skipped", [])]
            if "source_sample_rates" not in record:  # written before the source audio was recorded: add it now
                bad = {s[0] for s in skipped}
                paths = [path for file, path in zip(manifest.file, manifest.path) if file not in bad]
                write_json(sidecars(npy)[1], {**record, **source_audio(paths)})
            return PreprocessResult(npy, int(record["count"]), skipped, True)
        if not overwrite:
            why = _describe_change(npy, record, manifest, settings) if record else "it was not written by timnet"
            raise TimnetError(
                f"{npy} already exists and differs ({why}) — pass --overwrite to replace it, or --out for another "
                "folder"
            )
    x, good_manifest, skipped = extract_manifest(manifest, settings, workers, skip_bad, progress)
    skipped = list(name_problems) + skipped
    table = good_manifest.drop(columns=["path"]).astype({"class_index": str}).assign(status="ok")
    table = pd.concat(
        [table, pd.DataFrame({"file": [s[0] for s in skipped], "status": [f"skipped: {s[1]}" for s in skipped]})],
        ignore_index=True,
    ).fillna("")
    record = {
        "dataset": config.dataset.name,
        "classes": config.dataset.classes,
        "source": str(data.resolve()),
        "settings": dataclasses.asdict(settings),
        "fingerprint": fp,
        "skipped": skipped,
        **source_audio(list(good_manifest.path)),  # what the published-number gate judges the audio by
        "timnet_version": __version__,
        "librosa_version": _librosa_version(),
    }
    write_feature_files(npy, x, good_manifest.class_index.to_numpy(), config.n_classes, table, record)
    if skipped:
        warnings.warn(
            f"skipped {len(skipped)} bad file(s); they are listed in {sidecars(npy)[0]} with the reason", stacklevel=2
        )
    return PreprocessResult(npy, len(x), skipped, False)


def _import_authors_npy(config: Config, src: Path, npy: Path, trust_pickle: bool, overwrite: bool) -> PreprocessResult:
    """CASIA's raw audio is not public: users bring the authors' npy; we validate and adopt it."""
    fs = load_features(src, config.dataset.classes, trust_pickle=trust_pickle)
    if fs.x.shape[1:] != (config.features.frames, config.features.n_mfcc):
        raise TimnetError(
            f"{src}: features are {fs.x.shape[1:]} per utterance, {config.dataset.name} expects "
            f"({config.features.frames}, {config.features.n_mfcc}) — wrong --dataset?"
        )
    record = read_feature_record(npy)
    fp = sha256(src)
    if npy.exists():
        if record and record.get("fingerprint") == fp:
            return PreprocessResult(npy, int(record["count"]), [], True)
        if not overwrite:
            raise TimnetError(
                f"{npy} already exists and differs — pass --overwrite to replace it, or --out for another folder"
            )
    table = fs.manifest.drop(columns=["class_index"]).assign(status="ok")
    record = {
        "dataset": config.dataset.name,
        "classes": config.dataset.classes,
        "source": str(src.resolve()),
        "settings": dataclasses.asdict(config.features),
        "fingerprint": fp,
        "skipped": [],
        "imported_from_authors_npy": True,
        "timnet_version": __version__,
    }
    write_feature_files(npy, fs.x, fs.y, config.n_classes, table, record)
    return PreprocessResult(npy, len(fs), [], False)


def _librosa_version() -> str:
    import librosa

    return librosa.__version__
