"""One way to check a setting at the boundary, scikit-learn style: the message names the setting, the value
given and what is allowed (`train.epochs: must be ≥ 1 (got -3)`). Settings classes, the model config and the
executors call these; nothing deeper re-checks."""

from __future__ import annotations

import numbers
from typing import Any, Iterable

from .errors import TimnetError


def invalid(name: str, requirement: str, value: Any) -> TimnetError:
    """The one message format, for checks the two helpers below do not cover: `raise invalid(...)`."""
    return TimnetError(f"{name}: must be {requirement} (got {value!r})")


def check_choice(name: str, value: Any, allowed: Iterable[Any]) -> Any:
    """`value` if it is one of `allowed`, else one line naming the setting and the choices."""
    allowed = tuple(allowed)
    if value not in allowed:
        raise invalid(name, f"one of {', '.join(map(str, allowed))}", value)
    return value


def check_bool(name: str, value: Any) -> Any:
    """`value` if it is true or false (not 1 or "yes": a TOML or `--set` says true), else one line."""
    if not isinstance(value, bool):
        raise invalid(name, "true or false", value)
    return value


def check_range(
    name: str,
    value: Any,
    low: float | None = None,
    high: float | None = None,
    *,
    low_open: bool = False,
    high_open: bool = False,
    integer: bool = False,
) -> Any:
    """`value` if it is a number within [low, high] (open ends where asked), else one line saying which bound.
    NumPy scalars count (a sweep grid or a saved record may hold them); booleans do not."""
    kind = numbers.Integral if integer else numbers.Real
    if isinstance(value, bool) or not isinstance(value, kind):
        raise invalid(name, "an integer" if integer else "a number", value)
    if low is not None and (value <= low if low_open else value < low):
        raise invalid(name, f"{'>' if low_open else '≥'} {low}", value)
    if high is not None and (value >= high if high_open else value > high):
        raise invalid(name, f"{'<' if high_open else '≤'} {high}", value)
    return value
