"""Calibration: the expected calibration error on cases with a known answer, temperature scaling that finds the
temperature that made the probabilities, and a run's workbook, summary and reliability diagram."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import pixels_of, train

from timnet.core.calibration import (
    calibration_sheets,
    expected_calibration_error,
    fit_temperature,
    reliability_table,
    scaled,
)


def test_ece_of_a_constructed_case():
    """100 predictions at confidence 0.8, 60 right: ECE = |0.6 - 0.8| = 20 %; all right at 1.0: 0 %. Two bins:
    50 at 0.9 (45 right: gap 0) and 50 at 0.55 (all right: gap 0.45) -> 0.5 x 0.45 = 22.5 %."""
    probs = np.tile([0.8, 0.2], (100, 1))
    y = np.r_[np.zeros(60, int), np.ones(40, int)]
    assert expected_calibration_error(probs, y) == pytest.approx(20.0)
    assert expected_calibration_error(np.tile([1.0, 0.0], (10, 1)), np.zeros(10, int)) == pytest.approx(0.0)
    two = np.r_[np.tile([0.9, 0.1], (50, 1)), np.tile([0.55, 0.45], (50, 1))]
    truth = np.r_[np.zeros(45, int), np.ones(5, int), np.zeros(50, int)]
    assert expected_calibration_error(two, truth) == pytest.approx(22.5)
    table = reliability_table(two, truth)
    assert table["count"].sum() == 100 and (table["count"] > 0).sum() == 2
    assert table.loc[table["count"] > 0, "accuracy"].tolist() == pytest.approx([1.0, 0.9])


def test_temperature_scaling_finds_the_temperature_that_made_the_probabilities():
    """Labels drawn from softmax(z); the model reports softmax(3 z), overconfident: T = 3 undoes it."""
    rng = np.random.default_rng(0)
    z = rng.normal(size=(4000, 5)) * 1.5
    true_p = np.exp(z) / np.exp(z).sum(1, keepdims=True)
    y = np.array([rng.choice(5, p=p) for p in true_p])
    reported = scaled(true_p, 1 / 3)
    assert fit_temperature(reported, y) == pytest.approx(3.0, rel=0.1)
    assert expected_calibration_error(scaled(reported, 3.0), y) < expected_calibration_error(reported, y) / 3
    assert np.allclose(scaled(reported, 1.0), reported)


@pytest.mark.slow
def test_a_calibrated_run_reports_before_and_after(tmp_path, mfcc):
    run = train(tmp_path, mfcc, folds=2, epochs=3, calibrate=True)
    units = sorted((tmp_path / "Models" / run.run_id).glob("fold_*.pt"))
    temperatures = [torch.load(u, weights_only=True)["temperature"] for u in units]
    assert len(temperatures) == 2 and all(0.05 <= t <= 20 for t in temperatures)
    sheets = pd.read_excel(run.workbook, sheet_name=None)
    table = sheets["calibration"]
    assert table.temperature.iloc[:2].tolist() == pytest.approx(temperatures)
    assert table.iloc[-1].fold == "pooled" and table[["ece_before", "ece_after"]].notna().all().all()
    assert set(sheets["reliability"].probabilities) == {"before", "after"}
    assert sheets["reliability"].groupby("probabilities")["count"].sum().tolist() == [84, 84]
    assert "after temperature scaling" in run.summary["calibration"]
    png = tmp_path / "Results" / run.run_id / "reliability.png"
    assert pixels_of(png, "C0") > 50 and pixels_of(png, "C1") > 50  # both curves drawn


@pytest.mark.slow
def test_every_run_reports_its_calibration_uncalibrated(trained_run):
    root, _, run = trained_run
    sheets = pd.read_excel(run.workbook, sheet_name=None)
    assert sheets["calibration"].ece_after.isna().all() and set(sheets["reliability"].probabilities) == {"before"}
    assert run.summary["calibration"].startswith("calibration: ECE ") and "after" not in run.summary["calibration"]
    results = [type("R", (), dict(seed=0, fold=1, test_index=[0, 1], probs=np.eye(2), temperature=None))()]
    assert calibration_sheets(results, np.array([0, 1]))["calibration"].iloc[-1].ece_before == pytest.approx(0.0)
