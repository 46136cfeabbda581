"""Locks between processes, from `filelock` (advisory OS locks: the OS releases them when their holder dies,
so a killed holder never leaves a lock behind and a live one is never declared stale).

    exclusive(path)      wait for the lock of a short read-modify-write (the summary workbook's append)
    sole_writer(folder)  the one process that trains a run: a second one is refused, naming the holder
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
from datetime import datetime
from pathlib import Path

from filelock import FileLock, Timeout

from .errors import TimnetError

WRITER_LOCK = "writer.lock"  # in a run's folder: held by the process training it
HOLDER = "writer.json"  # beside it: who holds it (host, pid, since), for the refusal's message


def _lock(path: Path) -> FileLock:
    # thread_local=False: a run's lock is taken in one thread and may be released in another
    return FileLock(str(path), thread_local=False)


@contextlib.contextmanager
def exclusive(path: Path, timeout: float = 600.0):
    """Hold `.<name>.lock` beside `path` for a read-modify-write shared between processes, waiting up to `timeout`
    s for it. The lock file stays (removing an OS lock's file races with its next holder), hidden."""
    lock_path = Path(path).parent / f".{Path(path).name}.lock"
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    lock = _lock(lock_path)
    try:
        lock.acquire(timeout=timeout)
    except Timeout:
        raise TimnetError(
            f"{path}: another process has held its lock for {timeout:.0f} s — wait for it to finish, then retry"
        ) from None
    try:
        yield
    finally:
        lock.release()


def holder(folder: Path) -> str:
    """Who holds a folder's writer lock, in words (from its holder file; the lock itself says nothing)."""
    try:
        who = json.loads((Path(folder) / HOLDER).read_text())
        return f"pid {who['pid']} on {who['host']}, since {who['since']}"
    except (OSError, ValueError, KeyError, TypeError):
        return "another process (its holder file is missing)"


@contextlib.contextmanager
def sole_writer(folder: Path, what: str):
    """Hold the writer lock of `folder` (a run) while training it; refused at once when another process holds it."""
    folder = Path(folder)
    lock = _lock(folder / WRITER_LOCK)
    try:
        lock.acquire(timeout=0)
    except Timeout:
        raise TimnetError(
            f"{what} is being trained by {holder(folder)} — wait for it to finish (or stop it), then resume"
        ) from None
    try:
        since = datetime.now().isoformat(timespec="seconds")
        (folder / HOLDER).write_text(json.dumps({"host": socket.gethostname(), "pid": os.getpid(), "since": since}))
        yield
    finally:
        with contextlib.suppress(OSError):
            (folder / HOLDER).unlink()
        lock.release()


@contextlib.contextmanager
def sole_writer_of_all(folders: list[tuple[Path, str]]):
    """`sole_writer` of several runs at once (a sweep): all of them, or a refusal naming the first one held."""
    with contextlib.ExitStack() as stack:
        for folder, what in folders:
            stack.enter_context(sole_writer(folder, what))
        yield
