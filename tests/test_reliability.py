"""Nothing lost on one machine: a full disk mid-run, two processes resuming one run, a killed lock holder."""

from __future__ import annotations

import errno
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pandas as pd
import pytest
import torch
from conftest import UNINTERRUPTED, assert_same_units, train, train_cli

from timnet.core.errors import TimnetError
from timnet.core.locks import exclusive

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="names files by /proc/self/fd")


def full_disk_at(monkeypatch, nth: int, matches) -> dict:
    """fsync of the `nth` temporary file whose path `matches` fails with ENOSPC, as on a disk that just filled up."""
    real, seen = os.fsync, {"count": 0}

    def fsync(fd):
        name = os.readlink(f"/proc/self/fd/{fd}")
        if ".tmp" in name and matches(name):
            seen["count"] += 1
            if seen["count"] == nth:
                raise OSError(errno.ENOSPC, "No space left on device")
        return real(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    return seen


@pytest.mark.slow
def test_a_full_disk_then_two_resumes_at_once_then_a_killed_holder(tmp_path, mfcc, uninterrupted_run, monkeypatch):
    """ENOSPC at fold 1's 6th per-epoch state: one line naming the file, the 5th epoch's state intact. Then a
    resume runs in another process, and a second one is refused naming it; that holder is killed (kill -9), and
    its lock is taken over by a third resume, which finishes the run with an uninterrupted run's numbers."""
    root = tmp_path / "run"
    full_disk_at(monkeypatch, 6, lambda name: "in_progress" in name)
    with pytest.raises(TimnetError) as full:
        train(root, mfcc, **UNINTERRUPTED)
    monkeypatch.undo()
    message = str(full.value)
    assert (
        "\n" not in message and message.startswith("fold_1: ") and "in_progress/fold_1.pt: the disk is full" in message
    )
    assert "MB needed" in message and "--resume" in message
    (run,) = (root / "Models").iterdir()
    state = run / "in_progress" / "fold_1.pt"
    assert torch.load(state, weights_only=True)["progress"]["epoch"] == 5
    assert sorted(p.name for p in state.parent.iterdir()) == ["fold_1.pt"], "no temporary file is left behind"

    dirs = ["--models", str(root / "Models"), "--logs", str(root / "logs"), "--results", str(root / "Results")]
    holder = subprocess.Popen(train_cli("--resume", run.name, *dirs), stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 180  # the holder starts (imports) on a loaded machine
        while not (run / "writer.json").exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        with pytest.raises(TimnetError) as refused:
            train(root, None, resume=run.name)
        assert f"run {run.name} is being trained by pid {holder.pid} on " in str(refused.value)
        assert ", since 20" in str(refused.value) and "\n" not in str(refused.value)
    finally:
        holder.kill()  # kill -9: the lock file stays, the OS releases the lock
        holder.wait()
    assert (run / "writer.lock").exists()
    train(root, None, resume=run.name)
    assert_same_units(uninterrupted_run, run)
    assert not (run / "writer.json").exists()


def test_the_state_written_in_the_background_is_the_saved_epochs(tmp_path):
    """`StateWriter` snapshots at save: tensors the next epoch changes in place while the thread still writes do not
    reach the file; a failed write raises in the training thread at the next save, the file keeps the last state."""
    from timnet.training.run_store import save_pt
    from timnet.training.state_writer import StateWriter

    path, writer, gate = tmp_path / "state.pt", StateWriter(), threading.Event()
    live = {"model": {"w": torch.zeros(1000)}, "optimizer": {"state": [torch.ones(3)]}, "epoch": 1}

    def after_the_next_epoch(state):
        assert gate.wait(10)
        save_pt(path, state)

    writer.submit(live, after_the_next_epoch)
    live["model"]["w"] += 5  # the next epoch trains while the state is written
    live["optimizer"]["state"][0].mul_(7)
    live["epoch"] = 2
    gate.set()
    writer.wait()
    saved = torch.load(path, weights_only=True)
    assert torch.equal(saved["model"]["w"], torch.zeros(1000)) and saved["epoch"] == 1
    assert torch.equal(saved["optimizer"]["state"][0], torch.ones(3))

    def full_disk(state):
        raise OSError(errno.ENOSPC, "No space left on device")

    writer.submit(live, full_disk)
    with pytest.raises(OSError, match="No space left"):
        writer.submit(live, lambda state: save_pt(path, state))
    writer.close()
    assert torch.load(path, weights_only=True)["epoch"] == 1


def test_a_full_disk_while_writing_a_workbook_keeps_the_previous_one(tmp_path, monkeypatch):
    from timnet.core.report import write_workbook

    path = tmp_path / "Results" / "book.xlsx"
    before = pd.DataFrame({"war": [1.5, 2.5]})
    write_workbook(path, {"runs": before})
    full_disk_at(monkeypatch, 1, lambda name: name.endswith(".xlsx"))
    with pytest.raises(TimnetError, match=r"book\.xlsx: the disk is full \(about [\d.]+ MB needed, [\d.]+ MB free\)"):
        write_workbook(path, {"runs": pd.DataFrame({"war": [3.0]})}, overwrite=True)
    monkeypatch.undo()
    pd.testing.assert_frame_equal(pd.read_excel(path, sheet_name="runs"), before)
    assert [p.name for p in path.parent.iterdir()] == ["book.xlsx"]


HOLD = """import sys, time
from timnet.core.locks import exclusive
with exclusive(sys.argv[1]):
    print("held", flush=True)
    time.sleep(120)
"""


@pytest.mark.slow
def test_the_summary_lock_waits_for_a_live_holder_and_is_free_once_it_is_killed(tmp_path):
    """The hand-written lock deleted a live holder's lock after 60 s; an OS lock is never stolen, and is free the
    moment its holder dies (kill -9), with no staleness rule."""
    book = tmp_path / "summary.xlsx"
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(book)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(TimnetError, match=r"summary\.xlsx: another process has held its lock for 1 s"):
            with exclusive(book, timeout=1):
                pass
    finally:
        holder.kill()
        holder.wait()
    started = time.monotonic()
    with exclusive(book, timeout=5):
        assert time.monotonic() - started < 1


def test_durable_writes_leave_no_temporary_files(tmp_path):
    """write_json: the file is whole after the call (fsynced, renamed, folder fsynced) and nothing else is there."""
    from timnet.core.atomic import write_json

    for n in range(3):
        write_json(tmp_path / "record.json", {"n": n})
    assert [p.name for p in tmp_path.iterdir()] == ["record.json"]
    assert Path(tmp_path / "record.json").read_text().strip().endswith("}")


def test_outputs_get_the_users_umask_not_mkstemps_0600(tmp_path, trained_run):
    """A lab's shared results folder stays readable: every file written atomically has the mode any new file gets
    (0666 less the umask), like the run's workbook, unit files and figures."""
    from timnet.core.atomic import atomic_path

    old = os.umask(0o027)
    try:
        with atomic_path(tmp_path / "group.txt") as tmp:
            tmp.write_text("x")
    finally:
        os.umask(old)
    assert (tmp_path / "group.txt").stat().st_mode & 0o777 == 0o640
    root, _, result = trained_run
    expected = 0o666 & ~old
    written = [result.workbook, result.confusion_png, root / "Models" / result.run_id / "fold_1.pt"]
    written += [root / "Models" / result.run_id / "config.json", root / "logs" / result.run_id / "fold_1.png"]
    assert {p.name: p.stat().st_mode & 0o777 for p in written} == {p.name: expected for p in written}
