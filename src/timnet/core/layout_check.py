"""The keys of your own corpus's layout (`reader = "pattern"`, docs/manual.md, "Your own corpus"), checked when a
config is read: the pattern's named groups, the folder levels, `label_map` and `drop`. The files are scanned with
them in `data.corpus_scan`.
"""

from __future__ import annotations

import re

from .validation import check_range, invalid

PATTERN_GROUPS = ("label", "speaker", "sentence")


def _layout_keys(dataset) -> dict:
    return {
        "pattern": dataset.pattern,
        "label_level": dataset.label_level,
        "speaker_level": dataset.speaker_level,
        "sentence_level": dataset.sentence_level,
        "label_map": dataset.label_map,
        "drop": dataset.drop,
    }


def check_layout(dataset) -> None:
    """The pattern reader's keys of a DatasetConfig: each well-formed, one source of the label, that reader only."""
    keys = _layout_keys(dataset)
    if dataset.reader != "pattern":
        given = [k for k, v in keys.items() if v not in ("", None, {}, [])]
        if given:
            raise invalid(f"dataset.{given[0]}", 'left out: it is read only with reader = "pattern"', keys[given[0]])
        return
    if not isinstance(dataset.pattern, str):
        raise invalid("dataset.pattern", "a regular expression (a string)", dataset.pattern)
    try:
        groups = set(re.compile(dataset.pattern).groupindex)
    except re.error as err:
        raise invalid("dataset.pattern", f"a valid regular expression ({err})", dataset.pattern) from None
    if groups - set(PATTERN_GROUPS):
        raise invalid(
            "dataset.pattern",
            "a regex with no named groups but (?P<label>…), (?P<speaker>…) and (?P<sentence>…)",
            keys["pattern"],
        )
    for key in ("label_level", "speaker_level", "sentence_level"):
        if keys[key] is not None:
            check_range(f"dataset.{key}", keys[key], integer=True)
    if (dataset.label_level is None) == ("label" not in groups):
        raise invalid(
            "dataset.label_level", "set, or else dataset.pattern has a (?P<label>…) group", keys["label_level"]
        )
    if not isinstance(dataset.label_map, dict) or not all(isinstance(v, str) for v in dataset.label_map.values()):
        raise invalid("dataset.label_map", 'a table of code = "class name"', dataset.label_map)
    if not isinstance(dataset.drop, (list, tuple)) or not all(isinstance(d, str) for d in dataset.drop):
        raise invalid("dataset.drop", "a list of labels", dataset.drop)
    for code, name in dataset.label_map.items():
        if name not in dataset.classes and name not in dataset.drop:
            raise invalid(f"dataset.label_map.{code}", f"one of the classes ({', '.join(dataset.classes)})", name)
    if any(d in dataset.classes for d in dataset.drop):
        raise invalid("dataset.drop", "labels that are not classes", dataset.drop)
