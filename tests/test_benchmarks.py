"""The benchmarks' shared bookkeeping (benchmarks/bench_common.py): every row says which CPU and which code it
measured, and a new column never loses the rows before it; each benchmark script imports that module, never
another benchmark."""

import ast
import csv
import importlib.util
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("bench_common", REPO / "benchmarks" / "bench_common.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_a_new_column_keeps_the_earlier_rows(bench, tmp_path, monkeypatch):
    monkeypatch.setattr(bench, "REPO", tmp_path)
    path = tmp_path / "results.csv"
    bench.append_csv(path, [{"date": "d1", "wall_s": 1.234567}], lambda text: None)
    bench.append_csv(path, [{"date": "d2", "wall_s": 2.0, "commit": "abc1234"}], lambda text: None)
    bench.append_csv(path, [{"date": "d3", "commit": "def5678", "wall_s": 3.0}], lambda text: None)
    rows = list(csv.DictReader(open(path)))
    assert next(csv.reader(open(path))) == ["date", "wall_s", "commit"]
    assert rows == [
        {"date": "d1", "wall_s": "1.2346", "commit": ""},
        {"date": "d2", "wall_s": "2.0", "commit": "abc1234"},
        {"date": "d3", "wall_s": "3.0", "commit": "def5678"},
    ]


def test_rows_name_the_code_and_the_cpu(bench):
    head = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
    if head.returncode:
        pytest.skip("not a git checkout")
    assert bench.code_version().split("+")[0] == head.stdout.strip()
    info = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").is_file() else ""
    cpu = bench.cpu_model()
    assert cpu
    if " avx2" in info:  # the vector extension is what moves the speed-up most between machines
        assert cpu.endswith(("AVX2", "AVX-512"))


def test_benchmarks_share_one_module_and_import_no_other_benchmark():
    scripts = sorted((REPO / "benchmarks").glob("bench_*.py"))
    assert {"bench_vs_keras.py", "bench_inference.py", "bench_ray.py"} <= {s.name for s in scripts}
    imported = {
        script.name: {
            node.module
            for node in ast.walk(ast.parse(script.read_text()))
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("bench")
        }
        for script in scripts
    }
    assert all(modules <= {"bench_common"} for modules in imported.values()), imported
    assert {name for name, modules in imported.items() if modules} >= {
        "bench_vs_keras.py",
        "bench_inference.py",
        "bench_ray.py",
    }
