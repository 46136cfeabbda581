"""Scanning a corpus folder: what every corpus reader finds (`Row`, `Scan`, the audio files), and the readers whose
labels and speakers come from where files lie rather than from a naming scheme: CASIA as released, a folder per
class (`reader = "folders"`) and your own corpus (`reader = "pattern"`). The readers of the published corpora's
naming schemes, and the corpus registry, are in `corpora`.

Your own corpus says in its `[dataset]` section where the label, the speaker and the sentence (the text spoken,
which the leakage audit and the sentence protocols need) come from (docs/manual.md, "Your own corpus"): a regular
expression searched in the file's path relative to the corpus root, with named groups `(?P<label>…)`,
`(?P<speaker>…)` and `(?P<sentence>…)`, or a folder level (`label_level = 0`: the top folder; -1: the file's folder);
`label_map` turns codes in names into class names (`ps = "surprise"`), `drop` leaves labels out of the task.
Its stems are the relative path without the extension, `/` -> `_`, so names repeating in several folders stay
distinct utterances. The keys are checked when the config is read (`core.layout_check`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

from ..core.config import DatasetConfig
from ..core.errors import TimnetError

AUDIO_SUFFIXES = {".wav", ".flac", ".ogg", ".mp3", ".aiff", ".aif", ".aifc", ".au", ".caf", ".w64"}
CASIA_GENDER = {"liuchanhg": "f", "zhaoquanyin": "f", "wangzhe": "m", "zhaozuoxiang": "m"}
CASIA_EXAMPLE = "liuchanhg/angry/201.wav or angry/liuchanhg/201.wav"


@dataclass(frozen=True)
class Row:
    """One labelled file; `stem` names the utterance when the file's own name does not (names repeating)."""

    path: Path
    label: str
    speaker: str = ""
    gender: str = ""
    session: str = ""
    stem: str = ""
    sentence: str = ""  # the text spoken ("" when unknown): the same id wherever the same words are said


@dataclass
class Scan:
    """What a reader found: the usable rows and the files it had to leave out, with the reason."""

    rows: list[Row]
    skipped: list[tuple[str, str]] = field(default_factory=list)


def audio_files(root: Path) -> list[Path]:
    """Candidate audio under `root` (by extension; the content is decoded by what it is, whatever the name)."""
    return sorted(
        p for p in root.rglob("*") if p.is_file() and p.suffix.lower() in AUDIO_SUFFIXES and not p.name.startswith("._")
    )


def _level(folders: tuple[str, ...], level: int) -> str | None:
    return folders[level] if -len(folders) <= level < len(folders) else None


def label_of(relative: Path, dataset: DatasetConfig) -> tuple[str, str, str] | str:
    """(label after label_map, speaker, sentence) of a path relative to the corpus root, or why it has no label."""
    rel, folders = relative.as_posix(), relative.parts[:-1]
    match = re.search(dataset.pattern, rel) if dataset.pattern else None
    if dataset.pattern and match is None:
        return f"path does not match dataset.pattern {dataset.pattern!r}"
    found = match.groupdict() if match else {}
    label = found.get("label") if dataset.label_level is None else _level(folders, dataset.label_level)
    if not label:
        return f"no folder at dataset.label_level = {dataset.label_level} (the file lies in {len(folders)})"
    named = {key: found.get(key) or "" for key in ("speaker", "sentence")}
    for key in named:
        level = getattr(dataset, f"{key}_level")
        if level is not None:
            named[key] = _level(folders, level)
            if named[key] is None:
                return f"no folder at dataset.{key}_level = {level} (the file lies in {len(folders)})"
    label = label if label in dataset.drop else dataset.label_map.get(label, label)
    return label, named["speaker"], named["sentence"]


def scan_pattern(root: Path, dataset: DatasetConfig) -> Scan:
    """Your own corpus: label and speaker from the dataset's pattern / folder levels. Labels that are not classes
    are kept here (corpus-check shows them); `corpora.build_manifest` leaves out the dropped and flags the rest."""
    rows, skipped = [], []
    for path in audio_files(root):
        relative = path.relative_to(root)
        found = label_of(relative, dataset)
        if isinstance(found, str):
            skipped.append((relative.as_posix(), found))
            continue
        stem = relative.with_suffix("").as_posix().replace("/", "_")
        rows.append(Row(path, found[0], found[1], stem=stem, sentence=found[2]))
    return Scan(rows, skipped)


def scan_casia(root: Path, dataset: DatasetConfig) -> Scan:
    """CASIA as released, `<speaker>/<emotion>/201.wav`, or `<emotion>/<speaker>/201.wav`: the folder that is a class
    is the label, the other the speaker. The same names (201..250) repeat for every speaker, so an utterance is
    `<speaker>_<emotion>_<name>` (e.g. liuchanhg_angry_201), the same in both layouts."""
    classes = set(dataset.classes)
    rows, skipped = [], []
    for path in audio_files(root):
        relative = path.relative_to(root)
        folders = relative.parts[:-1]
        labels = [f for f in folders if f in classes]
        if len(folders) not in (1, 2) or len(labels) != 1:
            why = f"not in <speaker>/<emotion>/ folders, emotion one of {', '.join(dataset.classes)}"
            why += f" (e.g. {CASIA_EXAMPLE})"
            skipped.append((relative.as_posix(), why))
            continue
        label = labels[0]
        speaker = next((f for f in folders if f != label), "")
        stem = "_".join(p for p in (speaker, label, path.stem) if p)
        rows.append(Row(path, label, speaker, CASIA_GENDER.get(speaker.lower(), ""), stem=stem, sentence=path.stem))
    if not rows and skipped:
        raise TimnetError(f"{root}: no CASIA audio in <speaker>/<emotion>/<file>.wav folders (e.g. {CASIA_EXAMPLE})")
    return Scan(rows, skipped)


# --- folder per class: <root>/<class>/<any>.wav (CASIA raw audio, any new corpus) -----------
def scan_folders(root: Path, dataset: DatasetConfig) -> Scan:
    classes = dataset.classes
    missing = [c for c in classes if not (root / c).is_dir()]
    if len(missing) == len(classes):
        raise TimnetError(f"{root}: expected one folder per class ({', '.join(classes)}) — none found")
    rows, skipped = [], []
    for c in classes:
        for path in audio_files(root / c) if (root / c).is_dir() else []:
            rows.append(Row(path, c, speaker=path.parent.name if path.parent != root / c else ""))
    for path in audio_files(root):
        if path.relative_to(root).parts[0] not in classes:
            skipped.append((path.relative_to(root).as_posix(), f"not inside a class folder ({', '.join(classes)})"))
    return Scan(rows, skipped)
