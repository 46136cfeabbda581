"""The three notebooks run in order with papermill on a tiny configuration and write their files."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from conftest import EMODB_16K, REPO, WEIGHTS, emodb_tree, needs_shared

papermill = pytest.importorskip("papermill")


def test_notebooks_run_in_order(tmp_path):
    corpus = emodb_tree(tmp_path / "Datasets" / "EMODB")
    dirs = {
        k: str(tmp_path / v)
        for k, v in (("mfcc_dir", "MFCC"), ("models_dir", "Models"), ("logs_dir", "logs"), ("results_dir", "Results"))
    }
    short = {"features.signal_length": 16000}

    def run(name, **params):
        out = tmp_path / f"{name}.out.ipynb"
        papermill.execute_notebook(
            str(REPO / f"{name}.ipynb"),
            str(out),
            parameters=params,
            kernel_name="python3",
            cwd=str(tmp_path),
            progress_bar=False,
        )
        return json.loads(out.read_text())

    run("preprocess", dataset="EMODB", data_dir=str(corpus), mfcc_dir=dirs["mfcc_dir"], workers=1, overrides=short)
    data = np.load(tmp_path / "MFCC" / "EMODB.npy", allow_pickle=True).item()
    assert data["x"].shape == (84, 32, 39)

    nb = run(
        "train",
        dataset="EMODB",
        folds=2,
        epochs=2,
        overrides=short,
        device="cpu",
        **{k: dirs[k] for k in ("mfcc_dir", "models_dir", "logs_dir", "results_dir")},
    )
    (run_dir,) = (tmp_path / "Models").iterdir()
    assert sorted(p.name for p in run_dir.glob("fold_*.pt")) == ["fold_1.pt", "fold_2.pt"]
    folds = pd.read_excel(tmp_path / "Results" / f"{run_dir.name}.xlsx", sheet_name="folds")
    assert list(folds.fold[:2]) == [1, 2] and folds.n_test[:2].sum() == 84
    shown = [o for c in nb["cells"] for o in c.get("outputs", []) if "image/png" in o.get("data", {})]
    assert len(shown) == 2, "the curves of every fold (one figure) and the confusion heatmap are shown"

    run("tsne", dataset="EMODB", perplexity=10.0, models_dir=dirs["models_dir"], results_dir=dirs["results_dir"])
    (csv,) = (tmp_path / "Results" / run_dir.name).glob("tsne*.csv")
    table = pd.read_csv(csv)
    assert len(table) == 84 and np.isfinite(table[["x", "y"]].to_numpy()).all()
    assert csv.with_suffix(".png").is_file()


@needs_shared
def test_tsne_notebook_with_the_authors_weights_on_audio(tmp_path):
    papermill.execute_notebook(
        str(REPO / "tsne.ipynb"),
        str(tmp_path / "out.ipynb"),
        kernel_name="python3",
        cwd=str(tmp_path),
        progress_bar=False,
        parameters={
            "dataset": "EMODB",
            "weights": str(WEIGHTS / "EMODB_46.zip"),
            "data": str(EMODB_16K),
            "results_dir": str(tmp_path / "Results"),
        },
    )
    (csv,) = (tmp_path / "Results" / "EMODB_46_EMODB").glob("tsne*.csv")
    table = pd.read_csv(csv)
    assert len(table) == 361 and np.isfinite(table[["x", "y"]].to_numpy()).all()


def test_committed_notebooks_are_what_the_generator_writes():
    import importlib.util

    spec = importlib.util.spec_from_file_location("make_notebooks", REPO / "tools" / "make_notebooks.py")
    generator = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(generator)
    for name, text in generator.generated().items():
        assert (REPO / name).read_text(encoding="utf-8") == text, (
            f"{name} was edited by hand or is stale: run python tools/make_notebooks.py"
        )
