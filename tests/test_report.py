"""Workbooks: never overwritten, and concurrent runs never drop each other's summary row."""

from __future__ import annotations

import multiprocessing

import pandas as pd
import pytest

from timnet.core.errors import TimnetError
from timnet.core.locks import exclusive
from timnet.core.report import SUMMARY_NAME, append_summary, write_workbook


def _append(args):
    results, i = args
    append_summary(results, {"run": f"run{i}", "war_mean": float(i)})


@pytest.mark.slow
def test_concurrent_summary_updates_keep_every_row(tmp_path):
    with multiprocessing.get_context("spawn").Pool(4) as pool:
        pool.map(_append, [(tmp_path, i) for i in range(8)])
    table = pd.read_excel(tmp_path / SUMMARY_NAME)
    assert sorted(table.run) == [f"run{i}" for i in range(8)]
    assert [p.name for p in tmp_path.iterdir() if p.suffix == ".lock"] == [f".{SUMMARY_NAME}.lock"]  # hidden
    assert not list(tmp_path.glob(".*tmp*"))
    with exclusive(tmp_path / SUMMARY_NAME, timeout=0.1):  # and free again
        pass


def test_same_run_refreshes_its_row(tmp_path):
    append_summary(tmp_path, {"run": "a", "war_mean": 1.0})
    append_summary(tmp_path, {"run": "b", "war_mean": 2.0})
    append_summary(tmp_path, {"run": "a", "war_mean": 3.0})
    table = pd.read_excel(tmp_path / SUMMARY_NAME)
    assert table.run.tolist() == ["b", "a"] and table.war_mean.tolist() == [2.0, 3.0]


def test_workbook_is_never_overwritten(tmp_path):
    path = write_workbook(tmp_path / "a.xlsx", {"s": pd.DataFrame({"x": [1]})})
    with pytest.raises(TimnetError, match="never overwritten"):
        write_workbook(path, {"s": pd.DataFrame({"x": [2]})})
    assert pd.read_excel(path).x.tolist() == [1]
    with pytest.raises(TimnetError, match="written as .xlsx"):
        write_workbook(tmp_path / "a.csv", {"s": pd.DataFrame()})
