"""The free corpora in one command: `timnet download EMODB|RAVDESS [--data DIR] [--url URL]`.

The official archive is downloaded into `<DIR>/.<NAME>.zip.part` with a progress bar; an interrupted download
continues where it stopped (an HTTP Range request) when run again. The archive is then checked — its own CRC-32
checksums (zipfile) and the complete file list the corpus reader knows (535 EMO-DB, 1440 RAVDESS speech files) —
extracted into a temporary folder beside the target and renamed to `<DIR>/<NAME>` in one step, in the layout the
reader expects. A truncated, corrupt or wrong archive is one line, and nothing is left half-extracted; an existing
corpus folder is never overwritten. The licensed corpora (IEMOCAP, SAVEE, CASIA, EMOVO) say where to ask for them.
"""

from __future__ import annotations

import http.client
import os
import shutil
import tempfile
import urllib.error
import urllib.request
import zipfile
from dataclasses import dataclass
from pathlib import Path

from ..core.errors import TimnetError
from .corpora import CORPORA

CHUNK = 1 << 20


@dataclass(frozen=True)
class Source:
    url: str
    home: str  # where the corpus is described (and its licence)
    members: str  # how the archive's speech files are named, to find them whatever folder holds them
    layout: str  # where they go under Datasets/<NAME>


FREE = {
    "EMODB": Source(
        "http://emodb.bilderbar.info/download/download.zip",
        "http://emodb.bilderbar.info (Burkhardt et al., 2005; free for research)",
        "wav/",
        "wav/<name>.wav",
    ),
    "RAVDESS": Source(
        "https://zenodo.org/records/1188976/files/Audio_Speech_Actors_01-24.zip",
        "https://zenodo.org/records/1188976 (Livingstone & Russo, 2018; CC BY-NC-SA 4.0)",
        "Actor_",
        "Actor_XX/<name>.wav",
    ),
}
LICENSED = {
    "IEMOCAP": "https://sail.usc.edu/iemocap/ (release form, USC SAIL)",
    "SAVEE": "http://kahlan.eps.surrey.ac.uk/savee/ (registration, University of Surrey)",
    "CASIA": "the Institute of Automation, Chinese Academy of Sciences (the authors' MFCC file: their repository)",
    "EMOVO": "http://voice.fub.it/activities/corpora/emovo/ (Fondazione Ugo Bordoni; ask the authors)",
}


def source_of(name: str) -> Source:
    name = name.upper()
    if name in LICENSED:
        raise TimnetError(f"{name} is licensed and cannot be downloaded here — ask for it at {LICENSED[name]}")
    if name not in FREE:
        raise TimnetError(f"{name}: no download known — free corpora: {', '.join(FREE)}")
    return FREE[name]


def fetch(url: str, part: Path, progress: bool = True) -> Path:
    """`url` into `part`, continuing a partial file (Range) where the server allows it; `part` when complete."""
    from tqdm.auto import tqdm

    have = part.stat().st_size if part.is_file() else 0
    request = urllib.request.Request(url, headers={"Range": f"bytes={have}-"} if have else {})
    try:
        response = urllib.request.urlopen(request, timeout=60)
    except urllib.error.HTTPError as err:
        if err.code == 416 and have:  # nothing after what we have: the file is complete
            return part
        raise TimnetError(f"{url}: the server answered {err.code} {err.reason}") from None
    except (urllib.error.URLError, OSError) as err:
        raise TimnetError(
            f"{url}: cannot download ({getattr(err, 'reason', err)}) — check the address or --url"
        ) from None
    with response:
        resumed = response.status == 206
        total = response.length + (have if resumed else 0) if response.length is not None else None
        mode = "ab" if resumed else "wb"
        with open(part, mode) as out, tqdm(total=total, initial=have if resumed else 0, unit="B", unit_scale=True,
                                           desc=part.name, disable=not progress) as bar:  # fmt: skip
            try:
                while chunk := response.read(CHUNK):
                    out.write(chunk)
                    bar.update(len(chunk))
            except (OSError, http.client.HTTPException) as err:  # a reset, a timeout: what arrived is kept
                out.flush()
                got = part.stat().st_size
                raise TimnetError(f"{url}: the download stopped at {got} bytes ({err}) — run it again") from None
    if total is not None and part.stat().st_size < total:
        raise TimnetError(f"{url}: the download stopped at {part.stat().st_size} of {total} bytes — run it again")
    return part


def speech_members(archive: zipfile.ZipFile, source: Source) -> dict[str, str]:
    """{member name: the file's name (stem.wav)} of the archive's speech files."""
    found = {}
    for info in archive.infolist():
        name = info.filename.rsplit("/", 1)[-1]
        if info.filename.startswith("__MACOSX/") or name.startswith("._"):  # macOS metadata, not audio
            continue
        if not info.is_dir() and name.lower().endswith(".wav") and source.members in info.filename:
            found[info.filename] = name
    return found


def check_archive(zip_path: Path, name: str, source: Source) -> dict[str, str]:
    """The archive's speech members, after its CRCs and its file list are checked (one line naming what is wrong)."""
    try:
        with zipfile.ZipFile(zip_path) as archive:
            broken = archive.testzip()
            members = speech_members(archive, source)
    except (zipfile.BadZipFile, OSError, EOFError) as err:
        raise TimnetError(f"{zip_path}: not a complete zip archive ({err}) — delete it and download again") from None
    if broken is not None:
        raise TimnetError(f"{zip_path}: {broken} fails its checksum — delete the archive and download again")
    expected, _ = CORPORA[name.lower()].files()
    stems = sorted(Path(m).stem for m in members.values())
    if twice := sorted({s for s in stems if stems.count(s) > 1}):
        raise TimnetError(
            f"{zip_path}: not the {name} archive: {len(twice)} speech files appear twice (e.g. {twice[0]})"
        )
    missing, extra = sorted(set(expected) - set(stems)), sorted(set(stems) - set(expected))
    if missing or len(stems) != len(expected):
        what = f"{len(missing)} of its {len(expected)} speech files are missing (e.g. {missing[0]})" if missing else (
            f"{len(stems)} speech files where {name} has {len(expected)} (e.g. {extra[0]})")  # fmt: skip
        raise TimnetError(f"{zip_path}: not the {name} archive: {what} — check --url")
    return members


def _destination(name: str, member_name: str) -> str:
    """Where a speech file goes under Datasets/<NAME>, as the reader expects it."""
    if name == "RAVDESS":
        return f"Actor_{Path(member_name).stem.rsplit('-', 1)[-1]}/{member_name}"
    return f"wav/{member_name}"


def extract(zip_path: Path, target: Path, name: str, members: dict[str, str]) -> Path:
    """The speech files into a temporary folder beside `target`, renamed to `target` when all are there."""
    work = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    umask = os.umask(0)
    os.umask(umask)
    work.chmod(0o777 & ~umask)  # a folder as any other the user makes (mkdtemp's is private)
    try:
        with zipfile.ZipFile(zip_path) as archive:
            for member, file_name in members.items():
                out = work / _destination(name, file_name)
                out.parent.mkdir(parents=True, exist_ok=True)
                with archive.open(member) as src, open(out, "wb") as dst:
                    shutil.copyfileobj(src, dst, CHUNK)
        work.rename(target)
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
    return target


def download(name: str, data: Path = Path("Datasets"), url: str | None = None, progress: bool = True) -> Path:
    """Download, check and extract a free corpus into `data/<NAME>` -> that folder. The archive stays beside it
    (`data/.<NAME>.zip.part` while incomplete, `data/<NAME>.zip` after) until the corpus is in place."""
    name = name.upper()
    source = source_of(name)
    target = Path(data) / name
    if target.exists():
        raise TimnetError(f"{target} already exists — a corpus is never overwritten; remove it or choose --data")
    target.parent.mkdir(parents=True, exist_ok=True)
    zip_path = target.parent / f"{name}.zip"
    if not zip_path.is_file():
        part = fetch(url or source.url, target.parent / f".{name}.zip.part", progress)
        try:
            members = check_archive(part, name, source)
        except TimnetError:  # complete but wrong or corrupt: of no use to a later try
            part.unlink()
            raise
        part.rename(zip_path)
    else:
        members = check_archive(zip_path, name, source)
    extract(zip_path, target, name, members)
    zip_path.unlink()
    return target
