"""Validation helpers: each checks one thing, appends what is wrong (with its key path) to
`errors`, and returns a usable value, so that a file's every error is reported at once."""

from __future__ import annotations

import dataclasses
import difflib
import math
from collections.abc import Mapping, Sequence
from typing import Any

from harness.config.schema import Patience

MISSING = object()


def suggest(key: str, allowed: Sequence[str]) -> str:
    close = difflib.get_close_matches(key, list(allowed), n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


def mapping(value: Any, path: str, errors: list[str]) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        errors.append(f"{path}: expected a mapping, got {type(value).__name__} {value!r}")
        return {}
    return value


def reject_unknown(d: Mapping[str, Any], allowed: Sequence[str], path: str,
                    errors: list[str]) -> None:
    for key in d:
        if key not in allowed:
            where = f"{path}.{key}" if path else str(key)
            errors.append(f"{where}: unknown key{suggest(str(key), allowed)}; "
                          f"valid keys: {', '.join(allowed)}")


def typed(value: Any, kind: type, path: str, errors: list[str]) -> Any:
    """`value` if it is a `kind` (an int passes as float, a bool never as a number), else
    MISSING."""
    ok = isinstance(value, kind) and not (kind is not bool and isinstance(value, bool))
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if not ok:
        errors.append(f"{path}: expected {kind.__name__}, got {type(value).__name__} {value!r}")
        return MISSING
    if kind is float and not math.isfinite(value):
        errors.append(f"{path}: must be finite, got {value}")
        return MISSING
    if kind is int and not -(2**63) <= value < 2**63:
        errors.append(f"{path}: {value} does not fit in 64 bits (what torch and numpy take)")
        return MISSING
    return value


def get(d: Mapping[str, Any], key: str, kind: type, default: Any, path: str,
         errors: list[str], *, optional: bool = False) -> Any:
    """d[key] checked as `kind` (or None when `optional`); the default when absent or invalid."""
    if key not in d:
        return default
    value = d[key]
    if value is None and optional:
        return None
    got = typed(value, kind, f"{path}.{key}" if path else key, errors)
    return default if got is MISSING else got


def _dataclass_keys(cls: type) -> list[str]:
    return [f.name for f in dataclasses.fields(cls)]


# ---------------------------------------------------------------------------------------------

_FIELD_TYPES = {"int": int, "float": float, "str": str, "bool": bool}
_NESTED = {"Patience": Patience}  # sections that sit inside another
_OWN_PARSER = {"PickRule"}  # fields read by a function of their own (left at their default)


def parse_section(raw: Any, section: str, cls: type, errors: list[str]) -> Any:
    """A mapping section read into dataclass `cls`: each field checked against its annotated
    type (`X | None` may be null), missing ones at their defaults, unknown keys rejected."""
    d = mapping(raw, section, errors)
    reject_unknown(d, _dataclass_keys(cls), section, errors)
    default = cls()
    values = {}
    for f in dataclasses.fields(cls):
        kind, _, rest = f.type.partition(" | ")
        if kind in _OWN_PARSER:
            continue
        if kind in _NESTED:  # a section inside this one; absent or null: its default
            values[f.name] = (getattr(default, f.name) if d.get(f.name) is None else
                              parse_section(d[f.name], f"{section}.{f.name}", _NESTED[kind],
                                             errors))
            continue
        values[f.name] = get(d, f.name, _FIELD_TYPES[kind], getattr(default, f.name), section,
                              errors, optional=rest == "None")
    return cls(**values)


def at_least(obj: Any, section: str, minimum: int, keys: Sequence[str],
              errors: list[str]) -> None:
    for key in keys:
        value = getattr(obj, key)
        if value is not None and value < minimum:
            errors.append(f"{section}.{key}: must be >= {minimum}, got {value}")


