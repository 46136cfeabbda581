"""Progress: `Bar` (tqdm's, plus a line every 10 % in a notebook, where a widget leaves a headless log
empty), and the one progress view of a run: one bar over all unit-epochs, fed by the units' events wherever they
run (this process, pool workers through a queue, Ray tasks through a Ray queue)."""

from __future__ import annotations

import sys
import warnings
from pathlib import Path

from tqdm.auto import tqdm

MILESTONE_PERCENT = 10

# helpers


def in_notebook() -> bool:
    """Running inside a Jupyter notebook (the browser, or papermill headless)."""
    return "ipykernel" in sys.modules


def drain(messages, view: "ProgressView", empty: type[Exception]) -> None:
    """Show every event waiting in a queue (`empty`: the exception its `get_nowait` raises when there is none)."""
    while True:
        try:
            view.update(messages.get_nowait())
        except empty:
            return


# classes


class Bar(tqdm):
    """tqdm.auto's bar (a widget in Jupyter, text in a terminal) that, in a notebook or when `milestones`,
    also prints `<desc>: 30 % (120/400 <unit>, 12 s)` at every MILESTONE_PERCENT: papermill's log of a widget
    shows only its first state."""

    def __init__(self, *args, milestones: bool | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        wanted = in_notebook() if milestones is None else milestones
        self.milestone = MILESTONE_PERCENT if wanted and not self.disable and self.total else 0

    def update(self, n: float = 1):
        shown = super().update(n)
        if self.milestone and 100 * self.n >= self.milestone * self.total:
            percent = int(100 * self.n / self.total)
            elapsed = self.format_dict["elapsed"]
            print(f"{self.desc or 'progress'}: {percent} % ({self.n}/{self.total} {self.unit}, {elapsed:.0f} s)")
            self.milestone = (percent // MILESTONE_PERCENT + 1) * MILESTONE_PERCENT
        return shown


class ProgressView:
    """One bar over all unit-epochs of a run, with each running unit's latest epoch, loss and accuracy."""

    def __init__(self, jobs: list, desc: str, enabled: bool):
        self.epochs = {j.key: j.config["train"]["epochs"] for j in jobs}
        self.one_run = len({Path(j.models_dir) for j in jobs}) <= 1
        self.done = dict.fromkeys(self.epochs, 0)
        self.latest: dict[str, str] = {}
        self.pids: dict[str, int] = {}
        self.started: set[str] = set()
        self.bar = Bar(
            total=sum(self.epochs.values()), desc=desc, unit="unit-epoch", disable=not enabled, smoothing=0.05
        )

    def label(self, key: str) -> str:
        """How a unit is named to the user: `fold_2`, or `<run>/fold_2` when several runs train at once."""
        return key.split("/", 1)[1] if self.one_run else key

    def update(self, event: dict) -> None:
        unit = event["key"]
        self.pids[unit] = event["pid"]
        finished = event["event"] == "done"
        epoch = self.epochs[unit] if finished else event["epoch"]
        self.bar.update(epoch - self.done[unit])
        self.done[unit] = epoch
        if finished:
            self.latest.pop(unit, None)
        elif "row" in event:
            row = event["row"]
            self.latest[unit] = f"{epoch} {row['loss']:.3f}/{row['train_acc']:.0f}%"
        if event["event"] == "start" and event["epoch"] > 0 and unit in self.started:
            warnings.warn(f"{self.label(unit)}: started again, from its saved epoch {event['epoch']}", stacklevel=2)
        self.started.add(unit)
        self.bar.set_postfix_str(
            " | ".join(f"{self.label(u).replace('fold_', 'f')} {s}" for u, s in sorted(self.latest.items())),
            refresh=False,
        )

    def running(self) -> list[str]:
        """Units that started and have not finished."""
        return [u for u in self.pids if self.done[u] < self.epochs[u]]

    def close(self) -> None:
        self.bar.close()
