"""The README is a guide a newcomer reads top to bottom: short, its three commands the ones CI runs, every command
and file it names real, and the numbers it states the code's own (they drift otherwise)."""

import inspect
import re

import pytest
import tomllib
from conftest import REPO

from timnet.cli_options import build_parser
from timnet.core.config import load_config
from timnet.data.example import write_example_corpus
from timnet.model import TIMNet, count_parameters

README = (REPO / "README.md").read_text(encoding="utf-8")
TOP_FOLDERS = ("src/", "tests/", "benchmarks/", "docs/", "examples/", "studies/", "tools/", "configs/", ".ci/")


def section(title: str) -> str:
    start = README.index(f"\n## {title}\n")
    end = README.find("\n## ", start + 1)
    return README[start : end if end > 0 else None]


def test_it_is_a_guide_not_a_lab_notebook():
    assert len(README.splitlines()) <= 300
    outside = README.replace(section("Development"), "")
    assert "../shared" not in outside  # a clone from the project's home has no ../shared


def test_its_three_commands_come_first_and_are_what_ci_runs():
    first = re.search(r"```bash\n(.*?)```", README, re.S).group(1)
    commands = [line.split("#")[0].strip() for line in first.strip().splitlines()]
    setup, main, tests = commands
    assert README.index("```bash") < README.index("\n## ")
    assert main == "timnet run"
    ci = [line.strip() for line in (REPO / ".ci" / "run").read_text().splitlines()]
    assert setup in ci and tests in ci


def test_every_command_and_file_it_names_exists():
    parser = build_parser()
    known = set(parser._subparsers._group_actions[0].choices)
    named = set(re.findall(r"`timnet ([a-z][a-z-]+)", README)) | set(
        re.findall(r"^timnet ([a-z][a-z-]+)", README, re.M)
    )
    assert named and named <= known, named - known
    paths = set(re.findall(r"`([\w./-]+)`", README)) | set(re.findall(r"\]\(([\w./-]+)\)", README))
    checked = 0
    for path in paths:
        if path.startswith(("accel/", "model/")):  # named inside src/timnet's own section
            path = f"src/timnet/{path}"
        if path.startswith(TOP_FOLDERS):
            assert (REPO / path).exists(), f"README names {path}, which is not in the repository"
            checked += 1
    assert checked >= 10


def test_its_numbers_are_the_codes():
    example = inspect.signature(write_example_corpus).parameters
    files = len(example["speakers"].default) * len(example["texts"].default) * len(example["emotions"].default)
    assert f"writes {files} synthetic utterances" in README and f"# {files} synthetic utterances" in README
    train = load_config("EXAMPLE").train
    assert f"{train.folds} folds x {train.epochs} epochs -> Models/" in README
    quick = tomllib.loads((REPO / "studies" / "paper.toml").read_text())["quick"]
    assert f"--quick    # {quick['train.folds']} folds x {quick['train.epochs']} epochs" in README
    corpora = re.findall(r"^\| `([A-Z]+)` \| .*? \| (\d+) \|", README, re.M)
    assert len(corpora) == 6
    for name, count in corpora:
        assert load_config(name).dataset.expected_count == int(count), name
    emodb = load_config("EMODB")
    assert f"EMO-DB {count_parameters(TIMNet(emodb.model))[0]:,}" in README
    assert f"{emodb.train.folds} x {emodb.train.epochs} epochs, last epoch" in README


@pytest.mark.parametrize("name", ["manual.md", "benchmarks.md"])
def test_the_long_documents_it_points_to_exist(name):
    assert f"(docs/{name})" in README and (REPO / "docs" / name).stat().st_size > 1000
