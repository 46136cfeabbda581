"""The house stays easy to see: the folders are the architecture and their imports flow one way (a package imports
only from the packages below it, `LAYERS`), modules import without cycles (not even through an import inside a
function), no private name crosses a module boundary, each concept lives in its room (`ROOMS`), no two modules are
one word (run.py beside runs.py), and modules and functions stay small."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "timnet"
MAX_MODULE_LINES = 400
MAX_FUNCTION_LINES = 60
# Lowest first: each package imports only from itself and those before it; "" is the top (CLI, notebook helpers).
LAYERS = ["core", "data", "model", "accel", "training", "serving", "analysis", "studies", ""]


def _name(path: Path) -> str:
    """src/timnet/core/config.py -> core.config; src/timnet/cli.py -> cli; a package's __init__ -> its name."""
    parts = path.relative_to(PACKAGE).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts) or "__init__"


def _modules() -> dict[str, ast.Module]:
    return {_name(p): ast.parse(p.read_text(), str(p)) for p in sorted(PACKAGE.rglob("*.py"))}


def _package_of(module: str, is_package: bool) -> list[str]:
    """The package a module's relative imports start from, as name parts ([] for the top)."""
    parts = [] if module == "__init__" else module.split(".")
    return parts if is_package else parts[:-1]


def _imports(tree: ast.Module, module: str = "a", is_package: bool = False) -> list[tuple[str, list[str]]]:
    """(imported timnet module, names taken from it) for every relative import, at any depth; `from .pkg import m`
    counts as importing `pkg.m`."""
    base = _package_of(module, is_package)
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.level >= 1:
            start = base[: len(base) - (node.level - 1)] if node.level > 1 else base
            target = ".".join([*start, *(node.module.split(".") if node.module else [])])
            if node.module:
                found.append((target, [a.name for a in node.names]))
            found += [(f"{target}.{a.name}".lstrip("."), []) for a in node.names]
    return found


def import_graph() -> dict[str, set[str]]:
    modules = _modules()
    packages = {_name(p) for p in PACKAGE.rglob("__init__.py")}
    graph = {}
    for name, tree in modules.items():
        imported = {m for m, _ in _imports(tree, name, name in packages)}
        graph[name] = {m for m in imported if m in modules and m != name}
    return graph


TOP_MODULES = {"__init__", "cli", "cli_options", "pipeline", "notebook"}

# Rooms: a concept, the names that say it (a top-level definition, or an attribute used, e.g. `torch.optim`), and the
# only modules it lives in.
ROOMS = {
    "scanning a corpus folder": (
        r"^(scan_\w+|Row|Scan|AUDIO_SUFFIXES|audio_files)$",
        {"data.corpus_scan", "data.corpora"},
    ),
    "the optimiser, the loss and the schedule": (r"^(optim|lr_scheduler|cross_entropy|nll_loss)$", {"training.step"}),
    "computing MFCCs": (r"^librosa$", {"data.mfcc_extraction"}),
    "units batched under vmap": (r"^vmap$", {"accel.packed_model", "training.step"}),
}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle as [a, b, ..., a], or None."""
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt) :] + [nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def test_the_cycle_finder_finds_a_cycle_through_a_lazy_import():
    lazy = ast.parse("def f():\n    from .b import g\n    from ..core import errors\n")
    assert _imports(lazy, "training.unit") == [
        ("training.b", ["g"]),
        ("training.b.g", []),
        ("core", ["errors"]),
        ("core.errors", []),
    ]
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": set()}) is None


@pytest.mark.slow
def test_imports_flow_one_way():
    cycle = find_cycle(import_graph())
    assert cycle is None, f"import cycle: {' -> '.join(cycle)}"


def test_no_private_name_is_imported_across_modules():
    crossing = [
        f"{name} imports {imported}.{n}"
        for name, tree in _modules().items()
        for imported, names in _imports(tree, name)
        for n in names
        if n.startswith("_") and n != "__version__"
    ]
    assert not crossing, crossing


def _layer(module: str) -> int:
    top = module.split(".")[0]
    return LAYERS.index(top if top in LAYERS else "")


def test_packages_import_only_from_the_layers_below():
    upward = [
        f"{name} ({LAYERS[_layer(name)] or 'top'}) imports {m} ({LAYERS[_layer(m)] or 'top'})"
        for name, imported in import_graph().items()
        for m in imported
        if _layer(m) > _layer(name)
    ]
    assert not upward, upward


def test_every_module_lives_in_a_package_of_the_layers():
    stray = [p.name for p in PACKAGE.glob("*.py") if p.stem not in TOP_MODULES]
    assert not stray, f"modules at the top beside the CLI: {stray}; put each in the package of its concept"
    assert {p.name for p in PACKAGE.iterdir() if (p / "__init__.py").exists()} == set(LAYERS) - {""}


def _names_used(tree: ast.Module) -> set[str]:
    """Names a module defines at its top, modules it imports (at any depth) and attributes it reads
    (`torch.optim.Adam` -> optim, Adam)."""
    defined = {node.name for node in tree.body if isinstance(node, (ast.FunctionDef, ast.ClassDef))}
    defined |= {
        t.id for node in tree.body if isinstance(node, ast.Assign) for t in node.targets if isinstance(t, ast.Name)
    }
    imported = {a.name.split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.Import) for a in node.names}
    return defined | imported | {node.attr for node in ast.walk(tree) if isinstance(node, ast.Attribute)}


def test_the_room_check_sees_definitions_and_attributes():
    tree = ast.parse("import torch\nROWS = 1\ndef scan_x():\n    import librosa\n    return torch.optim.Adam([])\n")
    assert _names_used(tree) == {"torch", "ROWS", "scan_x", "librosa", "optim", "Adam"}


def test_every_concept_lives_in_its_room():
    misplaced = [
        f"{name}: {', '.join(sorted(found))} ({concept}: only in {', '.join(sorted(rooms))})"
        for name, tree in _modules().items()
        for concept, (pattern, rooms) in ROOMS.items()
        if name not in rooms and (found := {n for n in _names_used(tree) if re.match(pattern, n)})
    ]
    assert not misplaced, misplaced


def _word(stem: str) -> str:
    """A module name's word without a plural or participle ending: runs, run -> run; packed, pack -> pack."""
    for ending in ("ed", "s"):
        if stem.endswith(ending) and len(stem) > len(ending) + 2:
            return stem[: -len(ending)]
    return stem


def test_no_two_modules_are_one_word():
    """Modules whose names differ only by an ending (`run.py` beside `runs.py`) say no difference: name each by
    what it holds."""
    assert _word("runs") == _word("run") and _word("packed") == _word("pack") != _word("packing")
    by_word: dict[str, set[str]] = {}
    for path in PACKAGE.rglob("*.py"):
        if path.stem != "__init__":
            by_word.setdefault(_word(path.stem), set()).add(path.stem)
    confusable = [sorted(names) for names in by_word.values() if len(names) > 1]
    assert not confusable, confusable


@pytest.mark.parametrize("path", sorted(PACKAGE.rglob("*.py")), ids=lambda p: _name(p))
def test_modules_and_functions_stay_small(path):
    lines = path.read_text().count("\n")
    assert lines <= MAX_MODULE_LINES, f"{path.name}: {lines} lines (> {MAX_MODULE_LINES}); split it by concept"
    long = [
        f"{node.name} ({node.end_lineno - node.lineno + 1} lines)"
        for node in ast.walk(ast.parse(path.read_text()))
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))
        and node.end_lineno - node.lineno + 1 > MAX_FUNCTION_LINES
    ]
    assert not long, f"{path.name}: functions over {MAX_FUNCTION_LINES} lines: {', '.join(long)}"


def _marked_slow(decorators: list) -> bool:
    return any("slow" in ast.unparse(d) for d in decorators)


def test_every_test_file_has_a_test_in_the_quick_tier():
    """`pytest -m "not slow"` (under two minutes on 2 cores) runs at least one test of every test file, so a quick
    answer touches every part; a test file whose every test is slow (or that marks itself slow) fails here."""
    quick_less = []
    for path in sorted(Path(__file__).parent.glob("test_*.py")):
        tree = ast.parse(path.read_text())
        module_slow = any(
            isinstance(node, ast.Assign) and any(getattr(t, "id", "") == "pytestmark" for t in node.targets)
            and "slow" in ast.unparse(node.value)
            for node in tree.body
        )  # fmt: skip
        tests = [n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name.startswith("test_")]
        if module_slow or all(_marked_slow(t.decorator_list) for t in tests):
            quick_less.append(path.name)
    assert not quick_less, f"no test of these files runs under -m 'not slow': {quick_less}"
