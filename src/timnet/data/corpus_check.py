"""`timnet corpus-check`: what a corpus reader finds in a folder, before any audio is decoded.

Per class and speaker the files it labelled, the files it could not label (and why), the labels it dropped or
did not know, and the complete TOML to use: the config given, with the classes and count that were found.
"""

from __future__ import annotations

import json
import math
import re
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from ..core.config import Config
from ..core.errors import TimnetError
from .corpora import corpus_of

BARE_KEY = re.compile(r"^[A-Za-z0-9_-]+$")


@dataclass
class CorpusCheck:
    """What the reader found: counts [speaker x class] of the usable files, files it could not label, the labels
    it dropped (`drop`) or did not know (neither a class nor dropped), and the config to use."""

    root: Path
    config: Config
    counts: pd.DataFrame
    skipped: list[tuple[str, str]]
    dropped: dict[str, int]
    unknown: dict[str, int]
    suggested: Config

    @property
    def labelled(self) -> int:
        return int(self.counts.loc["total", "total"]) if len(self.counts) else 0

    def lines(self) -> list[str]:
        """The report as `timnet corpus-check` prints it."""
        d = self.config.dataset
        out = [f"{d.name} in {self.root} (reader {d.reader}): {self.labelled} files labelled"]
        out += [self.counts.to_string()] if self.labelled else []
        out += [f"dropped (dataset.drop): {_counted(self.dropped)}"] if self.dropped else []
        if self.unknown:
            out.append(f"labels that are not classes (add to classes, label_map or drop): {_counted(self.unknown)}")
        if self.skipped:
            out.append(f"could not label {len(self.skipped)} file(s):")
            out += [f"  {file}: {why}" for file, why in self.skipped]
        out += ["", "# the config to use: save it as a .toml, then --config it", config_toml(self.suggested)]
        return out


def _counted(counts: dict[str, int]) -> str:
    return ", ".join(f"{label} {n}" for label, n in sorted(counts.items()))


def check_corpus(config: Config, root: Path) -> CorpusCheck:
    """Scan `root` with the config's reader (file names and folders only) and say what it found."""
    root = Path(root)
    if not root.is_dir():
        raise TimnetError(f"{root}: corpus folder not found — pass --data with the folder that holds the audio")
    d = config.dataset
    scan = corpus_of(d).scan(root, d)
    found = [r for r in scan.rows if r.label in d.classes]
    unknown = Counter(r.label for r in scan.rows if r.label not in d.classes and r.label not in d.drop)
    dropped = Counter(r.label for r in scan.rows if r.label in d.drop)
    counts = pd.DataFrame(
        {"speaker": [r.speaker or "(none)" for r in found], "label": [r.label for r in found]},
        columns=["speaker", "label"],
    )
    table = pd.crosstab(counts.speaker, counts.label, margins=True, margins_name="total") if found else pd.DataFrame()
    if len(table):
        table = table[[c for c in d.classes if c in table.columns] + ["total"]]
    return CorpusCheck(root, config, table, scan.skipped, dict(dropped), dict(unknown), suggest(config, found, unknown))


def suggest(config: Config, found: list, unknown: Counter) -> Config:
    """The config with the classes found (in the config's order, then the unknown labels) and their count."""
    present = {r.label for r in found}
    classes = [c for c in config.dataset.classes if c in present] + sorted(unknown)
    data = config.settings()
    if len(classes) >= 2:
        data["dataset"]["classes"] = classes
        kept = set(classes) | set(config.dataset.drop)
        data["dataset"]["label_map"] = {k: v for k, v in config.dataset.label_map.items() if v in kept}
    data["dataset"]["expected_count"] = len(found) + sum(unknown.values())
    return Config.from_dict(data)


def _value(v) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, float):
        return "nan" if math.isnan(v) else repr(v)
    if isinstance(v, dict):
        return "{ " + ", ".join(f"{_key(k)} = {_value(x)}" for k, x in v.items()) + " }" if v else "{}"
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(_value(x) for x in v) + "]"
    return json.dumps(v, ensure_ascii=False) if isinstance(v, str) else str(v)


def _key(k: str) -> str:
    return k if BARE_KEY.match(k) else json.dumps(k, ensure_ascii=False)


def config_toml(config: Config) -> str:
    """A complete config file (every section; derived and unset settings left out) that `load_config` reads back."""
    parts = []
    for section, values in config.settings().items():
        rows = [f"{_key(k)} = {_value(v)}" for k, v in values.items() if v is not None and v not in ("", [], {})]
        parts.append("\n".join([f"[{section}]", *rows]))
    return "\n\n".join(parts) + "\n"
