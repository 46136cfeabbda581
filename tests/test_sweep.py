"""Sweeps: a grid of runs trained as one job, its record, status and resume (on Ray: tests/test_cluster_faults.py,
where a sweep loses a node)."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pandas as pd
import pytest
from conftest import tiny_grid

from timnet.core.errors import TimnetError


@pytest.mark.slow
def test_sweep_of_a_2x2_grid(mfcc, tmp_path, capsys):
    from timnet.cli import main

    grid = tmp_path / "grid.toml"
    tiny_grid(grid, "tiny", mfcc, grid='protocol = ["random", "speaker"]\ncheckpoint = ["last", "best-val"]')
    dirs = ["--models", str(tmp_path / "M"), "--logs", str(tmp_path / "L"), "--results", str(tmp_path / "R")]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert main(["sweep", str(grid), "--workers", "2", "--threads", "1", "--quiet", *dirs]) == 0
    record_file = next((tmp_path / "R" / "sweeps").glob("tiny_*.json"))
    record = json.loads(record_file.read_text())
    assert len(record["runs"]) == 4 and len({r["run_id"] for r in record["runs"]}) == 4
    table = pd.read_excel(record_file.with_suffix(".xlsx"), sheet_name="runs")
    assert list(zip(table.protocol, table.checkpoint)) == [
        ("random", "last"),
        ("random", "best-val"),
        ("speaker", "last"),
        ("speaker", "best-val"),
    ]
    assert table[["war_mean", "war_std", "uar_mean", "f1_mean"]].notna().all().all()
    summary = pd.read_excel(tmp_path / "R" / "Accuracy Analysis Summary.xlsx")
    assert sorted(summary.run) == sorted(table.run)
    for run in table.run:
        assert len(list((tmp_path / "M" / run).glob("fold_*.pt"))) == 2
    capsys.readouterr()
    assert main(["sweep", "--status", record_file.stem, *dirs]) == 0
    assert capsys.readouterr().out.count("2/2") == 4
    before = {p: p.stat().st_mtime_ns for p in (tmp_path / "M").glob("*/fold_*.pt")}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert main(["sweep", "--resume", record_file.stem, "--quiet", "--workers", "1", *dirs]) == 0
    assert {p: p.stat().st_mtime_ns for p in before} == before, "a finished unit must never be trained again"
    again = pd.read_excel(record_file.with_suffix(".xlsx"), sheet_name="runs")
    pd.testing.assert_frame_equal(again, table)


def test_grid_errors_are_one_line(tmp_path):
    from timnet.studies.sweep import expand, load_grid

    bad = tmp_path / "bad.toml"
    bad.write_text('[runs]\ndataset = "EMODB"\n[grid]\nlearning_rate = [1, 2]\n')
    with pytest.raises(TimnetError, match="grid key 'learning_rate' is not a setting"):
        load_grid(bad)
    bad.write_text('[grid]\nprotocol = ["random"]\n')
    with pytest.raises(TimnetError, match="say which dataset"):
        load_grid(bad)
    good = tmp_path / "good.toml"
    good.write_text('[runs]\ndataset = "EMODB"\n[grid]\nseed = [1, 2]\n"train.lr" = [0.1, 0.2]\n')
    specs = expand(load_grid(good))
    assert [s["overrides"] for s in specs] == [
        {"train.lr": 0.1, "train.seeds": [1]},
        {"train.lr": 0.2, "train.seeds": [1]},
        {"train.lr": 0.1, "train.seeds": [2]},
        {"train.lr": 0.2, "train.seeds": [2]},
    ]
    assert np.all([s["dataset"] == "EMODB" for s in specs])
