"""Calibration: does a predicted probability mean what it says? Expected calibration error over equal-width
confidence bins (Guo et al., 2017), the reliability table a diagram draws, and temperature scaling (one T > 0
dividing the logits, fitted on held-out data by likelihood). Pure functions of probabilities and labels.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

BINS = 15  # Guo et al.'s choice; the reliability diagram shows the same bins


def reliability_table(probs: np.ndarray, y: np.ndarray, bins: int = BINS) -> pd.DataFrame:
    """Per confidence bin ((lower, upper], the first closed): utterances, mean confidence (the top probability) and
    accuracy; empty bins have count 0 and no confidence or accuracy."""
    confidence = probs.max(axis=1)
    correct = probs.argmax(axis=1) == y
    edges = np.linspace(0.0, 1.0, bins + 1)
    which = np.clip(np.searchsorted(edges, confidence, side="left") - 1, 0, bins - 1)
    rows = []
    for b in range(bins):
        inside = which == b
        n = int(inside.sum())
        rows.append(
            {
                "lower": edges[b],
                "upper": edges[b + 1],
                "count": n,
                "confidence": float(confidence[inside].mean()) if n else np.nan,
                "accuracy": float(correct[inside].mean()) if n else np.nan,
            }
        )
    return pd.DataFrame(rows)


def expected_calibration_error(probs: np.ndarray, y: np.ndarray, bins: int = BINS) -> float:
    """ECE in %: sum over bins of (share of utterances) x |accuracy - confidence|."""
    table = reliability_table(probs, y, bins)
    used = table[table["count"] > 0]
    gap = (used.accuracy - used.confidence).abs()
    return float((used["count"] * gap).sum() / max(len(y), 1) * 100)


def scaled(probs: np.ndarray, temperature: float) -> np.ndarray:
    """softmax(logits / T) from softmax(logits): log p is the logits up to a constant, which softmax ignores."""
    z = np.log(np.clip(probs, 1e-300, None)) / temperature
    z -= z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def fit_temperature(probs: np.ndarray, y: np.ndarray) -> float:
    """The T in [0.05, 20] that minimises the negative log-likelihood of y under `scaled(probs, T)` (a bounded
    one-dimensional search over log T)."""
    from scipy.optimize import minimize_scalar

    def nll(log_t: float) -> float:
        p = scaled(probs, float(np.exp(log_t)))
        return float(-np.log(np.clip(p[np.arange(len(y)), y], 1e-300, None)).mean())

    found = minimize_scalar(nll, bounds=(np.log(0.05), np.log(20.0)), method="bounded", options={"xatol": 1e-6})
    return float(np.exp(found.x))


def calibration_sheets(results, y: np.ndarray) -> dict[str, pd.DataFrame]:
    """A run's calibration (`results`: its units, each with test_index, probs and temperature or None):
    `calibration` = ECE per unit and pooled, before and (where a temperature was fitted) after scaling;
    `reliability` = the pooled bins before and after."""
    rows, pooled = [], {"before": [], "after": []}
    for r in results:
        truth = y[np.asarray(r.test_index, dtype=np.int64)]
        after = scaled(r.probs, r.temperature) if r.temperature is not None else None
        rows.append(
            {
                "seed": r.seed,
                "fold": r.fold,
                **({"cell": r.cell} if getattr(r, "cell", 0) else {}),  # speaker-sentence: a unit per cell
                "temperature": r.temperature,
                "ece_before": expected_calibration_error(r.probs, truth),
                "ece_after": expected_calibration_error(after, truth) if after is not None else np.nan,
            }
        )
        pooled["before"].append((r.probs, truth))
        if after is not None:
            pooled["after"].append((after, truth))
    bins, total = [], {"seed": "", "fold": "pooled", "temperature": np.nan}
    for when, parts in pooled.items():
        if len(parts) == len(results):  # "after" only where every unit was scaled
            probs, truth = np.concatenate([p for p, _ in parts]), np.concatenate([t for _, t in parts])
            total[f"ece_{when}"] = expected_calibration_error(probs, truth)
            bins.append(reliability_table(probs, truth).assign(probabilities=when))
        else:
            total[f"ece_{when}"] = np.nan
    table = pd.concat([pd.DataFrame(rows), pd.DataFrame([total])], ignore_index=True)
    return {"calibration": table, "reliability": pd.concat(bins, ignore_index=True)}


def calibration_line(sheets: dict[str, pd.DataFrame]) -> str:
    """The pooled ECE in one line (a run's summary)."""
    pooled = sheets["calibration"].iloc[-1]
    line = f"calibration: ECE {pooled.ece_before:.2f} % over the pooled test predictions"
    return line + ("" if pd.isna(pooled.ece_after) else f", {pooled.ece_after:.2f} % after temperature scaling")
