"""Corpus readers: read a corpus in the layout it is distributed in and return a manifest.

A manifest is a DataFrame, one row per utterance, in the authors' sample order (class by class in
the config's class order; inside a class, natsort of `<stem>_raw.csv`, the names they sorted):

    file         path relative to the corpus root (posix), e.g. "wav/03a01Wa.wav"
    path         absolute path
    stem         file name without extension (the key that ties features, folds and weights together)
    label        class name;   class_index: position in the class order
    speaker      speaker id ("" when unknown); gender "m"/"f"/""; session ("" when none)
    sentence     the text spoken ("" when unknown): EMO-DB's 10 texts, RAVDESS's 2 statements, EMOVO's 14 sentences,
                 CASIA's 50 texts (SAVEE's unknown: `SAVEE_TEXTS`); the leakage audit and sentence protocols use it

Labels come from file names (or IEMOCAP's EmoEvaluation files), never from hand-sorted folders; the readers
whose labels come from folders or your own pattern (CASIA as released, a folder per class, `reader = "pattern"`)
are in `corpus_scan`, with what every reader finds (`Row`, `Scan`).
"""

from __future__ import annotations

import re
import warnings
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Callable

import natsort
import pandas as pd

from ..core.config import DatasetConfig
from ..core.errors import TimnetError
from .corpus_scan import AUDIO_SUFFIXES, Row, Scan, audio_files, scan_casia, scan_folders, scan_pattern

COLUMNS = ["file", "path", "stem", "label", "class_index", "speaker", "gender", "session", "sentence"]
CASIA_ORDER = (
    "CASIA from audio: the authors' sample order is unknown (their MFCC file is the reference), so the folds are "
    "not the authors' and the numbers do not compare to the paper's"
)


def authors_order(df: pd.DataFrame, classes: list[str]) -> pd.DataFrame:
    """Sort class by class, then natsort of `<stem>_raw.csv` with ns.PATH, as the authors did."""
    rank = {c: i for i, c in enumerate(classes)}
    keyed = natsort.natsort_keygen(alg=natsort.ns.PATH)
    order = sorted(range(len(df)), key=lambda i: (rank[df.label.iat[i]], keyed(f"{df.stem.iat[i]}_raw.csv")))
    return df.iloc[order].reset_index(drop=True)


def to_manifest(rows: list[Row], root: Path, classes: list[str]) -> pd.DataFrame:
    rank = {c: i for i, c in enumerate(classes)}
    df = pd.DataFrame(
        {
            "file": [r.path.relative_to(root).as_posix() for r in rows],
            "path": [str(r.path.resolve()) for r in rows],
            "stem": [r.stem or r.path.stem for r in rows],
            "label": [r.label for r in rows],
            "class_index": [rank[r.label] for r in rows],
            "speaker": [r.speaker for r in rows],
            "gender": [r.gender for r in rows],
            "session": [r.session for r in rows],
            "sentence": [r.sentence for r in rows],
        },
        columns=COLUMNS,
    )
    return authors_order(df, classes)


def _by_pattern(root: Path, corpus: str, example: str, parse: Callable[[Path], Row | None | str]) -> Scan:
    """Apply a file-name parser to every audio file; a parser returns a Row, None (not a name of
    this corpus) or a string (a valid file that is not part of the task, e.g. RAVDESS song)."""
    rows, skipped = [], []
    for path in audio_files(root):
        row = parse(path)
        if isinstance(row, Row):
            rows.append(row)
        elif row is None:
            skipped.append(
                (path.relative_to(root).as_posix(), f"name does not follow the {corpus} pattern (e.g. {example})")
            )
    return Scan(rows, skipped)


# --- EMO-DB: wav/03a01Wa.wav -------------------------------------------------------------
EMODB_EMOTIONS = {"W": "angry", "L": "boredom", "E": "disgust", "A": "fear", "F": "happy", "T": "sad", "N": "neutral"}
EMODB_GENDER = dict(zip(("03", "08", "09", "10", "11", "12", "13", "14", "15", "16"), "mffmmmffmf"))
_EMODB = re.compile(r"^(?P<speaker>\d\d)(?P<text>[ab]\d\d)(?P<emotion>[WLEAFTN])(?P<version>[a-z])$")


def _parse_emodb(path: Path) -> Row | None:
    m = _EMODB.match(path.stem)
    if not m:
        return None
    return Row(path, EMODB_EMOTIONS[m["emotion"]], m["speaker"], EMODB_GENDER.get(m["speaker"], ""))


def scan_emodb(root: Path, dataset: DatasetConfig) -> Scan:
    return _by_pattern(root, "EMODB", "03a01Wa.wav", _parse_emodb)


# --- RAVDESS: Actor_01/03-01-05-01-01-01-01.wav (modality-channel-emotion-intensity-statement-rep-actor)
# fmt: off
RAVDESS_EMOTIONS = {"01": "neutral", "02": "calm", "03": "happy", "04": "sad", "05": "angry", "06": "fear",
                    "07": "disgust", "08": "surprise"}
# fmt: on
_RAVDESS = re.compile(
    r"^(?P<mod>0[1-3])-(?P<chan>0[12])-(?P<emo>0[1-8])-(?P<int>0[12])-(?P<stmt>0[12])-(?P<rep>0[12])-(?P<actor>\d\d)$"
)


def _parse_ravdess(path: Path) -> Row | str | None:
    m = _RAVDESS.match(path.stem)
    if not m:
        return None
    if m["mod"] != "03" or m["chan"] != "01":
        return "not audio-only speech"
    actor = int(m["actor"])
    return Row(path, RAVDESS_EMOTIONS[m["emo"]], f"{actor:02d}", "m" if actor % 2 else "f")


def scan_ravdess(root: Path, dataset: DatasetConfig) -> Scan:
    return _by_pattern(root, "RAVDESS", "Actor_01/03-01-05-01-01-01-01.wav", _parse_ravdess)


# --- SAVEE: AudioData/DC/a01.wav or flat DC_a01.wav ---------------------------------------
# fmt: off
SAVEE_EMOTIONS = {"a": "angry", "d": "disgust", "f": "fear", "h": "happy", "n": "neutral", "sa": "sad",
                  "su": "surprise"}
# fmt: on
SAVEE_SPEAKERS = ("DC", "JE", "JK", "KL")
_SAVEE = re.compile(r"^(?:(?P<spk>DC|JE|JK|KL)_)?(?P<emo>sa|su|a|d|f|h|n)(?P<num>\d\d)$")


def _parse_savee(path: Path) -> Row | None:
    m = _SAVEE.match(path.stem)
    speaker = m["spk"] if m and m["spk"] else path.parent.name
    if not m or speaker not in SAVEE_SPEAKERS:
        return None
    return Row(path, SAVEE_EMOTIONS[m["emo"]], speaker, "m")


def scan_savee(root: Path, dataset: DatasetConfig) -> Scan:
    return _by_pattern(root, "SAVEE", "AudioData/DC/a01.wav or DC_a01.wav", _parse_savee)


def savee_stem(row_stem: str, speaker: str) -> str:
    """Nested SAVEE files (`DC/a01.wav`) collide across speakers; the canonical stem is `DC_a01`."""
    return row_stem if row_stem.startswith(f"{speaker}_") else f"{speaker}_{row_stem}"


# --- EMOVO: f1/dis-f1-b1.wav ----------------------------------------------------------------
# fmt: off
EMOVO_EMOTIONS = {"dis": "disgust", "gio": "happy", "neu": "neutral", "pau": "fear", "rab": "angry", "sor": "surprise",
                  "tri": "sad"}
# fmt: on
_EMOVO = re.compile(r"^(?P<emo>dis|gio|neu|pau|rab|sor|tri)-(?P<spk>[fm][1-3])-(?P<sent>[a-z]\d)$")


def _parse_emovo(path: Path) -> Row | None:
    m = _EMOVO.match(path.stem)
    return Row(path, EMOVO_EMOTIONS[m["emo"]], m["spk"], m["spk"][0]) if m else None


def scan_emovo(root: Path, dataset: DatasetConfig) -> Scan:
    return _by_pattern(root, "EMOVO", "f1/dis-f1-b1.wav", _parse_emovo)


# --- IEMOCAP: Session1/dialog/EmoEvaluation/*.txt + Session1/sentences/wav/<dialog>/<utt>.wav --
IEMOCAP_LABELS = {"ang": "angry", "hap": "happy", "exc": "happy", "neu": "neutral", "sad": "sad"}
_IEMOCAP_LINE = re.compile(r"^\[\s*[\d.]+\s*-\s*[\d.]+\s*\]\s+(?P<utt>Ses\d\d[FM]_\S+)\s+(?P<lab>\w+)\s+\[")


def scan_iemocap(root: Path, dataset: DatasetConfig) -> Scan:
    sessions = sorted(root.glob("Session[1-5]"))
    if not sessions:
        raise TimnetError(f"{root}: no Session1..Session5 folders — point --data at the IEMOCAP_full_release folder")
    rows, skipped = [], []
    for session in sessions:
        for txt in sorted((session / "dialog" / "EmoEvaluation").glob("*.txt")):
            for line in txt.read_text(encoding="utf-8", errors="replace").splitlines():
                m = _IEMOCAP_LINE.match(line)
                if not m:
                    continue
                if m["lab"] not in IEMOCAP_LABELS:  # the other emotions are not part of the 4-class task
                    continue
                utt = m["utt"]
                dialog = utt.rsplit("_", 1)[0]
                wav = session / "sentences" / "wav" / dialog / f"{utt}.wav"
                if not wav.is_file():
                    skipped.append(
                        (wav.relative_to(root).as_posix(), f"labelled in {txt.name} but the wav file is missing")
                    )
                    continue
                gender = utt.rsplit("_", 1)[1][0]
                rows.append(Row(wav, IEMOCAP_LABELS[m["lab"]], f"{utt[:5]}{gender}", gender.lower(), session.name))
    return Scan(rows, skipped)


def build_manifest(
    root: Path, dataset: DatasetConfig, skip_bad: bool = False
) -> tuple[pd.DataFrame, list[tuple[str, str]]]:
    """Scan `root` with the dataset's reader; return (manifest, skipped [(file, reason)]).

    Files whose names carry no valid label are an error (naming the first) unless `skip_bad`.
    A count different from the complete corpus is reported as a warning with the numbers.
    """
    root = Path(root)
    if not root.is_dir():
        raise TimnetError(
            f"{root}: corpus folder not found — put {dataset.name} there (see docs/manual.md, 'Corpora') or pass --data"
        )
    corpus = corpus_of(dataset)
    scan = corpus.scan(root, dataset)
    if corpus.strict:  # a label that is neither a class nor dropped is a naming problem, not a quiet omission
        scan.skipped += [
            (r.path.relative_to(root).as_posix(), _not_a_class(r.label, dataset))
            for r in scan.rows
            if r.label not in dataset.classes and r.label not in dataset.drop
        ]
    if scan.skipped and not skip_bad:
        file, reason = scan.skipped[0]
        more = f" (and {len(scan.skipped) - 1} more)" if len(scan.skipped) > 1 else ""
        raise TimnetError(
            f"{root / file}: {reason}{more} — rename or remove it, or pass --skip-bad to skip and list such files"
        )
    rows = [r for r in scan.rows if r.label in dataset.classes]
    if not rows:
        raise TimnetError(
            f"{root}: no {dataset.name} audio files found — check the folder layout (see docs/manual.md, 'Corpora')"
        )
    manifest = to_manifest(rows, root, dataset.classes)
    if corpus.stem is not None:
        manifest["stem"] = [corpus.stem(s, spk) for s, spk in zip(manifest.stem, manifest.speaker)]
        manifest = authors_order(manifest, dataset.classes)
    manifest["sentence"] = sentences(manifest, dataset)
    duplicated = manifest.stem[manifest.stem.duplicated()].tolist()
    if duplicated:
        raise TimnetError(f"{root}: the same utterance appears twice ({duplicated[0]}) — keep one copy")
    if corpus.caveat:
        warnings.warn(corpus.caveat, stacklevel=2)
    if dataset.expected_count and len(manifest) != dataset.expected_count:
        warnings.warn(
            f"{dataset.name}: found {len(manifest)} utterances in {root}, the complete corpus has "
            f"{dataset.expected_count} "
            f"({len(manifest) - dataset.expected_count:+d}); results will not be comparable to the paper",
            stacklevel=2,
        )
    return manifest, scan.skipped


def _not_a_class(label: str, dataset: DatasetConfig) -> str:
    return (
        f"label {label!r} is not a class ({', '.join(dataset.classes)}) — add it to classes, map it in "
        "dataset.label_map, or list it in dataset.drop"
    )


def corpus_caveat(dataset: DatasetConfig, manifest: pd.DataFrame) -> str:
    """What a run on these features must say about its folds ("" when nothing): CASIA read from audio."""
    corpus = CORPORA.get(dataset.reader)
    from_audio = any(Path(f).suffix.lower() in AUDIO_SUFFIXES for f in manifest.file)
    return corpus.caveat if corpus is not None and corpus.caveat and from_audio else ""


# --- complete file lists, in the authors' terms: what rebuilds their folds from a subset -------
def _emodb_files() -> tuple[list[str], list[str]]:
    stems = resources.files("timnet").joinpath("data/emodb_files.txt").read_text().split()
    return stems, [EMODB_EMOTIONS[s[5]] for s in stems]


def _ravdess_files() -> tuple[list[str], list[str]]:
    stems = [
        f"03-01-{emo}-{inten}-{stmt}-{rep}-{actor:02d}"
        for actor in range(1, 25)
        for emo in RAVDESS_EMOTIONS
        for inten in ("01", "02")
        for stmt in ("01", "02")
        for rep in ("01", "02")
        if not (emo == "01" and inten == "02")
    ]
    return stems, [RAVDESS_EMOTIONS[s.split("-")[2]] for s in stems]


def _emovo_files() -> tuple[list[str], list[str]]:
    sentences = ["b1", "b2", "b3", "d1", "d2", "l1", "l2", "l3", "l4", "n1", "n2", "n3", "n4", "n5"]
    stems = [f"{e}-{s}-{t}" for e in EMOVO_EMOTIONS for s in ("f1", "f2", "f3", "m1", "m2", "m3") for t in sentences]
    return stems, [EMOVO_EMOTIONS[s.split("-")[0]] for s in stems]


def _savee_files() -> tuple[list[str], list[str]]:
    counts = {"a": 15, "d": 15, "f": 15, "h": 15, "n": 30, "sa": 15, "su": 15}
    stems = [f"{spk}_{e}{i:02d}" for spk in SAVEE_SPEAKERS for e, n in counts.items() for i in range(1, n + 1)]
    return stems, [SAVEE_EMOTIONS[s.split("_")[1].rstrip("0123456789")] for s in stems]


# --- the sentence (text) of an utterance, from its stem ("" for a stem not in the corpus's naming) ----
def _matched(pattern: re.Pattern, group: str) -> Callable[[str], str]:
    def sentence(stem: str) -> str:
        m = pattern.match(stem)
        return m[group] if m else ""

    return sentence


# SAVEE numbers its sentences per emotion (DC_a01, DC_d01, DC_n01: three numberings); neither what it ships
# (AudioData/Info.txt: "the following digits represent the sentence number") nor Haq & Jackson (per emotion 3 common,
# 2 emotion-specific, 10 generic sentences; neutral 30, repeating the common and emotion-specific ones) say which
# numbers are one text: its sentences are unknown, and the sentence protocols refuse it (`Corpus.texts_unknown`).
SAVEE_TEXTS = (
    "SAVEE numbers its sentences per emotion (a01, d01 and n01 are separate lists), and neither its files nor its "
    "documentation say which numbers are the 3 sentences common to every emotion or the emotion-specific ones "
    "repeated as neutral, so no split can be checked to keep texts apart — use --protocol random or speaker"
)
# IEMOCAP: a scripted turn is a line of one of the scripts every session performs (Ses01F_script01_1_F000 ->
# script01_1_F000, the same id in every session: an approximation, as turns follow the script); an improvised turn's
# words are its own (its id).
_IEMOCAP_STEM = re.compile(r"^Ses\d\d[FM]_(?:(?P<script>script\w+_[FM]\d+)|impro.*)$")


def _iemocap_sentence(stem: str) -> str:
    m = _IEMOCAP_STEM.match(stem)
    return "" if m is None else m["script"] or stem


_CASIA_STEM = re.compile(r"^.+_(?P<sentence>\d+)$")  # liuchanhg_angry_201 -> 201: the 50 texts of every emotion


@dataclass(frozen=True)
class Corpus:
    """Everything the project knows about one corpus: how to read its distributed layout (`scan`), its complete file
    list in the authors' terms (`files`: stems and labels; None when unknown), the rule turning a found file into
    that list's stem (`stem`, from the file's stem and speaker); `strict`: labels that are not classes are flagged
    (else left out); `caveat`: what every run on it must say; `sentence`: the text id of a stem (None: the reader's
    own, or unknown); `texts_unknown`: why its text ids cannot be told (the sentence protocols refuse it), "" when
    they can; `rate`: the sample rate (Hz) it is distributed at (None: unknown), what the published numbers used."""

    name: str
    scan: Callable[[Path, DatasetConfig], Scan]
    files: Callable[[], tuple[list[str], list[str]]] | None = None
    stem: Callable[[str, str], str] | None = None
    strict: bool = False
    caveat: str = ""
    sentence: Callable[[str], str] | None = None
    texts_unknown: str = ""
    rate: int | None = None


# Keyed by the config's `dataset.reader` (DatasetConfig.READERS names these keys, so a config is checked on load).
CORPORA: dict[str, Corpus] = {
    "emodb": Corpus("EMODB", scan_emodb, _emodb_files, sentence=_matched(_EMODB, "text"), rate=16000),
    "ravdess": Corpus("RAVDESS", scan_ravdess, _ravdess_files, sentence=_matched(_RAVDESS, "stmt"), rate=48000),
    "savee": Corpus(
        "SAVEE", scan_savee, _savee_files, savee_stem, sentence=lambda stem: "", texts_unknown=SAVEE_TEXTS, rate=44100
    ),
    "emovo": Corpus("EMOVO", scan_emovo, _emovo_files, sentence=_matched(_EMOVO, "sent"), rate=48000),
    "iemocap": Corpus("IEMOCAP", scan_iemocap, sentence=_iemocap_sentence, rate=16000),
    "casia": Corpus("CASIA", scan_casia, caveat=CASIA_ORDER, sentence=_matched(_CASIA_STEM, "sentence"), rate=16000),
    "folders": Corpus("", scan_folders),
    "pattern": Corpus("", scan_pattern, strict=True),
}


def corpus_of(dataset: DatasetConfig) -> Corpus:
    return CORPORA[dataset.reader]  # checked once, when the DatasetConfig was made (READERS == CORPORA: a test)


def sentences(manifest: pd.DataFrame, dataset: DatasetConfig) -> pd.Series:
    """The sentence (text) id of every utterance, "" where unknown: the corpus's own from its stems, else the
    manifest's (your own corpus's pattern); feature files written before sentences were recorded get them too."""
    corpus = CORPORA.get(dataset.reader)
    if corpus is not None and corpus.sentence is not None and "stem" in manifest:
        return pd.Series([corpus.sentence(str(s)) for s in manifest.stem], index=manifest.index, dtype=str)
    given = manifest["sentence"] if "sentence" in manifest else pd.Series("", index=manifest.index)
    return given.fillna("").astype(str)


def canonical_stems(dataset: DatasetConfig) -> pd.DataFrame | None:
    """The complete corpus as (stem, label) in the authors' order, or None when it is not known. The list
    belongs to the corpus itself: another dataset that only reuses its reader (EXAMPLE) has none."""
    corpus = corpus_of(dataset)
    if corpus.files is None or dataset.name.upper() != corpus.name:
        return None
    stems, labels = corpus.files()
    return authors_order(pd.DataFrame({"stem": stems, "label": labels}), dataset.classes)
