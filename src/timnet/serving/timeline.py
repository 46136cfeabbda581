"""Emotion over time on long audio: windows of the model's training length every `hop` seconds.

Each window gets the same recipe as a training utterance (MFCCs of exactly `signal_length` samples), so
the model sees what it was trained on; a window quieter than `silence_db` (RMS, dBFS) is marked `silent`
and not classified. A speaker-normalised model (`train.normalize = speaker`) takes the classified windows of
one recording as one speaker's (the table's `attrs["note"]` says so). Output: one row per window (file, start,
end, emotion, probability, one column per class) as CSV, and a PNG of the probabilities over time above the
waveform.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from ..core.atomic import atomic_path, unique_path
from ..core.errors import TimnetError
from ..data.mfcc_extraction import compute_mfcc, fix_length, load_signal
from .portable import PortableModel

HOP_SECONDS = 0.5  # between window starts
SILENCE_DB = -50.0  # RMS dBFS below which a window is silent, not classified
SILENT = "silent"


def window_starts(n_samples: int, length: int, hop: int) -> list[int]:
    """Window starts every `hop` samples; the last window ends at the end of the audio (none is cut short)."""
    if n_samples <= length:
        return [0]
    starts = list(range(0, n_samples - length + 1, hop))
    if starts[-1] + length < n_samples:
        starts.append(n_samples - length)
    return starts


def timeline(
    model: PortableModel, path: Path, hop: float = HOP_SECONDS, silence_db: float = SILENCE_DB
) -> tuple[pd.DataFrame, np.ndarray]:
    """(one row per window, the signal at the model's rate) for one audio file; a speaker-normalised model
    normalises its classified windows together, as one speaker (`attrs["note"]`)."""
    if hop <= 0:
        raise TimnetError(f"--hop {hop}: the hop between windows must be a positive number of seconds")
    settings = model.config.features
    sr, length = settings.sample_rate, settings.signal_length
    signal = load_signal(Path(path), settings)
    starts = window_starts(len(signal), length, max(1, round(hop * sr)))
    windows = [fix_length(signal[s : s + length], length) for s in starts]
    rms = np.array([np.sqrt(np.mean(np.square(w[: min(length, len(signal))], dtype=np.float64))) for w in windows])
    silent = 20 * np.log10(np.maximum(rms, 1e-12)) < silence_db
    probs = np.full((len(starts), len(model.classes)), np.nan, np.float32)
    note = None
    if not silent.all():
        x = np.stack([compute_mfcc(w, settings) for w, quiet in zip(windows, silent) if not quiet])
        x, note = model.given_together(x, "window", f"of {Path(path).name}")
        probs[~silent] = model.predict_proba(x)
    table = pd.DataFrame(
        {
            "file": str(path),
            "start": np.array(starts) / sr,
            "end": np.minimum(np.array(starts) + length, len(signal)) / sr,
            "emotion": [
                SILENT if quiet else model.classes[i] for quiet, i in zip(silent, np.nan_to_num(probs).argmax(1))
            ],
            "probability": np.where(silent, np.nan, np.nan_to_num(probs).max(1)),
        }
    )
    for c, name in enumerate(model.classes):
        table[name] = probs[:, c]
    if note:
        table.attrs["note"] = note
    return table, signal


def plot_timeline(table: pd.DataFrame, signal: np.ndarray, sr: int, classes: list[str], path: Path) -> Path:
    """Class probabilities at the window centres (silent windows shaded) above the waveform."""
    from ..core.report import pyplot, save_figure

    plt = pyplot()
    fig, (top, bottom) = plt.subplots(
        2, 1, figsize=(11, 5), sharex=True, gridspec_kw={"height_ratios": [2, 1]}, constrained_layout=True
    )
    centres = (table.start + table.end) / 2
    colours = plt.get_cmap("tab10")
    for c, name in enumerate(classes):
        top.plot(centres, table[name], color=colours(c), label=name, marker=".", markersize=4)
    for _, row in table[table.emotion == SILENT].iterrows():
        top.axvspan(row.start, row.end, color="0.9", zorder=0)
    top.set_ylim(0, 1)
    top.set_ylabel("probability")
    top.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.0, 1.0), frameon=False)
    top.set_title(f"{Path(table.file.iloc[0]).name}: emotion per window (grey: silent)", fontsize=10)
    step = max(1, len(signal) // 4000)  # min/max per block of samples: the envelope without aliasing
    blocks = signal[: len(signal) // step * step].reshape(-1, step)
    t = (np.arange(len(blocks)) + 0.5) * step / sr
    bottom.fill_between(t, blocks.min(1), blocks.max(1), color="0.3", linewidth=0)
    bottom.set_xlabel("time (s)")
    bottom.set_ylabel("waveform")
    return save_figure(fig, path)


def write_timeline(
    model: PortableModel, path: Path, out_dir: Path, hop: float = HOP_SECONDS, silence_db: float = SILENCE_DB
) -> tuple[pd.DataFrame, Path, Path]:
    """Timeline of one file as `<out_dir>/<stem>_timeline.csv` and `.png`, never over earlier ones."""
    table, signal = timeline(model, path, hop, silence_db)
    csv = unique_path(Path(out_dir) / f"{Path(path).stem}_timeline.csv")
    with atomic_path(csv) as tmp:
        table.to_csv(tmp, index=False)
    png = plot_timeline(table, signal, model.config.features.sample_rate, model.classes, csv.with_suffix(".png"))
    return table, csv, png
