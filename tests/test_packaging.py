"""Packaging says what the code needs: every third-party module imported when `timnet` loads is a dependency of
`pip install .`; every one imported only where a feature is used is in the extra that feature names; the README's
setup command (requirements.txt) installs every extra the tests use."""

from __future__ import annotations

import ast
import re
import sys

from conftest import REPO

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

DISTRIBUTIONS = {"sklearn": "scikit-learn", "tensorboard": "tensorboard", "ray": "ray"}  # import name -> distribution


def _name(requirement: str) -> str:
    return re.split(r"[\s<>=!;\[]", requirement, maxsplit=1)[0].lower().replace("-", "_")


def imports(at_module_level: bool) -> set[str]:
    """Third-party top-level modules imported by src/timnet at module level (or only inside functions)."""
    found = set()
    for path in (REPO / "src" / "timnet").rglob("*.py"):
        tree = ast.parse(path.read_text())
        top = {id(node) for node in tree.body}
        for node in ast.walk(tree):
            if isinstance(node, (ast.Import, ast.ImportFrom)) and (id(node) in top) == at_module_level:
                names = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module or ""]
                if isinstance(node, ast.ImportFrom) and node.level:
                    continue
                found |= {n.split(".")[0] for n in names}
    return {m for m in found if m and m not in sys.stdlib_module_names and m not in ("timnet", "__future__")}


def project() -> dict:
    return tomllib.loads((REPO / "pyproject.toml").read_text())["project"]


def test_what_loads_with_timnet_is_a_dependency():
    core = {_name(r) for r in project()["dependencies"]}
    needed = {DISTRIBUTIONS.get(m, m).lower().replace("-", "_") for m in imports(at_module_level=True)}
    assert needed <= core, f"imported at module level but not in [project] dependencies: {sorted(needed - core)}"


def test_what_a_feature_imports_is_a_dependency_or_in_an_extra():
    p = project()
    known = {_name(r) for r in p["dependencies"]} | {_name(r) for e in p["optional-dependencies"].values() for r in e}
    lazily = {DISTRIBUTIONS.get(m, m).lower().replace("-", "_") for m in imports(at_module_level=False)}
    lazily -= {"torch", "tensorflow", "tf_keras", "mlflow", "IPython".lower()}  # torch: core; the others: extras below
    assert lazily <= known, f"imported by a feature but in no dependency or extra: {sorted(lazily - known)}"
    extras = p["optional-dependencies"]
    assert {"export", "ray", "notebooks", "mlflow", "dev", "reference"} <= set(extras)
    assert {"onnx", "onnxruntime", "huggingface_hub"} <= {_name(r) for r in extras["export"]}


def test_the_setup_command_installs_what_the_tests_use():
    lines = [line.split("#")[0].strip() for line in (REPO / "requirements.txt").read_text().splitlines()]
    assert "-e .[dev]" in lines and any(line.startswith("torch==") for line in lines)
    dev = " ".join(project()["optional-dependencies"]["dev"])
    for needed in ("timnet[export,ray,notebooks]", "pytest", "pytest-xdist", "hypothesis", "ruff", "selenium"):
        assert needed in dev, needed
    pinned = next(line for line in lines if line.startswith("torch=="))
    floor = next(r for r in project()["dependencies"] if r.startswith("torch"))
    from packaging.version import Version

    assert Version(floor.split(">=")[1]) == Version(pinned.split("==")[1]), "torch's floor: the version tests run on"


def test_a_missing_extra_is_one_line_naming_it():
    import pytest

    from timnet.core.errors import TimnetError, require

    with pytest.raises(TimnetError, match=r"^ONNX export needs nope: python3 -m pip install 'timnet\[export\]'$"):
        require("nope.sub", "export", "ONNX export")
    assert require("json", "export", "x").dumps([1]) == "[1]"
