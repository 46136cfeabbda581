"""Atomic, durable file writes: a crash, a kill or a power cut leaves either the old file or the new one, never
half of one; a full disk leaves the old one and says so in one line."""

from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
import tempfile
from pathlib import Path

from .errors import TimnetError

FULL = (errno.ENOSPC, errno.EDQUOT)  # no space left on the device; disk quota exceeded


def _fsync(path: Path, directory: bool = False) -> None:
    fd = os.open(path, os.O_RDONLY | (getattr(os, "O_DIRECTORY", 0) if directory else 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def sync_folder(folder: Path) -> None:
    """fsync a folder, so a rename in it survives a power cut (not possible, nor needed, on Windows)."""
    if os.name != "nt":
        _fsync(folder, directory=True)


def full_disk(path: Path, tmp: Path) -> TimnetError:
    """The one line for a full disk: which file, about how much it needs, how much is free, what to do."""
    sizes = [p.stat().st_size for p in (path, tmp) if p.exists()]
    need = max(sizes, default=0)
    free = shutil.disk_usage(path.parent).free
    return TimnetError(
        f"{path}: the disk is full (about {need / 1e6:.1f} MB needed, {free / 1e6:.1f} MB free) — its previous "
        "version is intact; free some space, then run again (a training run: --resume continues it)"
    )


def current_umask() -> int:
    """The process's umask (reading it means setting it: it is set straight back)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def atomic_path(path: Path):
    """Yield a temporary path beside `path`; on success it is fsynced and replaces `path` in one rename, and the
    folder is fsynced (the rename itself is then on disk)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp" + path.suffix, dir=path.parent)
    os.close(fd)
    tmp = Path(tmp)
    try:
        yield tmp
        os.chmod(tmp, 0o666 & ~current_umask())  # as any new file: mkstemp's 0600 would hide results from colleagues
        _fsync(tmp)
        os.replace(tmp, path)
        sync_folder(path.parent)
    except OSError as err:
        if err.errno in FULL:
            raise full_disk(path, tmp) from None
        raise
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)


def write_bytes(path: Path, data: bytes) -> None:
    """Write `data` to `path` atomically and durably."""
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            f.write(data)


def unique_path(path: Path) -> Path:
    """`path`, or `name_2.ext`, `name_3.ext`, ... so earlier results are never overwritten."""
    candidate, n = path, 1
    while candidate.exists():
        n += 1
        candidate = path.with_name(f"{path.stem}_{n}{path.suffix}")
    return candidate


def write_text(path: Path, text: str) -> None:
    write_bytes(path, text.encode("utf-8"))


def write_json(path: Path, obj) -> None:
    write_text(path, json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n")
