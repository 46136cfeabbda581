"""The three notebooks run in order with papermill on a tiny configuration and write their files."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import EMODB_16K, REPO, WEIGHTS, needs_shared

from timnet import load_config

papermill = pytest.importorskip("papermill")
KERNEL_START_S = 180  # papermill's 60 s to a kernel's first answer is short for a loaded 2-core machine


def execute(name: str, cwd: Path, **params) -> dict:
    """Run a notebook as papermill does (headless, Run All) in `cwd`; the executed notebook as JSON."""
    out = cwd / f"{name}.out.ipynb"
    try:
        papermill.execute_notebook(
            str(REPO / f"{name}.ipynb"), str(out), parameters=params, kernel_name="python3", cwd=str(cwd),
            progress_bar=False, start_timeout=KERNEL_START_S,
        )  # fmt: skip
    finally:
        executed = json.loads(out.read_text()) if out.exists() else {}
    return executed


def printed(nb: dict) -> str:
    return "".join("".join(o.get("text", "")) for c in nb["cells"] for o in c.get("outputs", []))


@pytest.mark.slow
def test_a_fresh_clone_runs_all_three_notebooks_unmodified_with_the_example_settings(tmp_path):
    """Run All of preprocess -> train -> tsne in an empty folder, no parameter changed: the example corpus is
    written, and train.ipynb takes EXAMPLE's own settings (4 folds x 20 epochs, batch 8) from its TOML."""
    execute("preprocess", tmp_path)
    data = np.load(tmp_path / "MFCC" / "EXAMPLE.npy", allow_pickle=True).item()
    assert data["x"].shape == (84, 63, 39) and (tmp_path / "Datasets" / "EXAMPLE" / "wav").is_dir()

    nb = execute("train", tmp_path)
    (run_dir,) = (tmp_path / "Models").iterdir()
    train = json.loads((run_dir / "config.json").read_text())["config"]["train"]
    example = load_config("EXAMPLE").train
    assert (train["folds"], train["epochs"], train["batch_size"]) == (example.folds, example.epochs, 8)
    assert sorted(p.name for p in run_dir.glob("fold_*.pt")) == [f"fold_{k}.pt" for k in range(1, 5)]
    folds = pd.read_excel(tmp_path / "Results" / f"{run_dir.name}.xlsx", sheet_name="folds")
    assert list(folds.fold[:4]) == [1, 2, 3, 4] and folds.n_test[:4].sum() == 84
    shown = [o for c in nb["cells"] for o in c.get("outputs", []) if "image/png" in o.get("data", {})]
    assert len(shown) == 2, "the curves of every fold (one figure) and the confusion heatmap are shown"
    log = printed(nb)
    assert f"{run_dir.name}: 100 % (80/80 unit-epoch" in log, "a headless log shows the progress as text"
    assert "WAR nan" not in log and "paper" not in log  # nothing is published for synthetic data

    execute("tsne", tmp_path)
    (csv,) = (tmp_path / "Results" / run_dir.name).glob("tsne*.csv")
    table = pd.read_csv(csv)
    assert len(table) == 84 and np.isfinite(table[["x", "y"]].to_numpy()).all()
    assert csv.with_suffix(".png").is_file()


@pytest.mark.slow
def test_an_error_in_a_notebook_is_one_line_naming_the_notebook_setting(tmp_path):
    with pytest.raises(papermill.PapermillExecutionError):
        execute("preprocess", tmp_path, dataset="EMODB")
    nb = json.loads((tmp_path / "preprocess.out.ipynb").read_text())
    outputs = [o for c in nb["cells"] for o in c.get("outputs", [])]
    (line,) = "".join("".join(o["text"]) for o in outputs if o.get("name") == "stderr").strip().splitlines()
    assert line.startswith("timnet: error: Datasets/EMODB") and "data_dir" in line and "--data" not in line
    assert not [o for o in outputs if o["output_type"] == "error"], "no traceback"


def test_every_parameter_parses_for_papermill():
    """papermill reads each parameter's name, type and help from the tagged cell (a line it cannot parse is
    silently left out of --help-notebook and warned about)."""
    import ast

    from papermill.translators import PythonTranslator

    for name in ("preprocess", "train", "tsne"):
        nb = json.loads((REPO / f"{name}.ipynb").read_text())
        (cell,) = [c for c in nb["cells"] if "parameters" in c["metadata"].get("tags", [])]
        source = "".join(cell["source"])
        assigned = [n.target.id for n in ast.parse(source).body if isinstance(n, ast.AnnAssign)]
        assert len(assigned) == len(source.strip().splitlines()), f"{name}: one annotated parameter per line"
        parsed = PythonTranslator.inspect({**cell, "source": source})
        assert [p.name for p in parsed] == assigned, name
        assert all(p.inferred_type_name != "None" for p in parsed), name


@pytest.mark.slow
@needs_shared
def test_tsne_notebook_with_the_authors_weights_on_audio(tmp_path):
    papermill.execute_notebook(
        str(REPO / "tsne.ipynb"),
        str(tmp_path / "out.ipynb"),
        kernel_name="python3",
        cwd=str(tmp_path),
        progress_bar=False,
        start_timeout=KERNEL_START_S,
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
