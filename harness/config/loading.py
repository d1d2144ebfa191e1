"""Reading a study file: YAML (safely), `--set` overrides, then validation.

`load_spec` is the one entry: read the file, apply `--set KEY=VALUE` overrides to the parsed
YAML (so they are checked like the file itself), validate, and return a StudySpec or raise a
SpecError with every problem at once. Small floats such as `1e-4` read as numbers.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml

from harness.config.schema import StudySpec
from harness.config.validate import validate
from harness.errors import SpecError


class _Loader(yaml.SafeLoader):
    """The safe loader, reading `1e-4` as a float (YAML 1.1 would read it as a string)."""


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(
        r"""^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?
        |[-+]?(?:[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)
        |\.[0-9_]+(?:[eE][-+][0-9]+)?
        |[-+]?\.(?:inf|Inf|INF)
        |\.(?:nan|NaN|NAN))$""",
        re.X,
    ),
    list("-+0123456789."),
)


MAX_FILE_BYTES = 1024 * 1024
# YAML aliases let a small file stand for a huge tree (an "alias bomb": each anchor used nine
# times in the next, nine levels deep, is 387 million nodes); the tree a study file stands for
# is judged by its size with aliases expanded, which is counted without expanding them.
MAX_NODES = 100_000


def parse_yaml(text: str, source: str) -> Any:
    """Parse YAML safely; a syntax error becomes a SpecError with line and column."""
    try:
        raw = yaml.load(text, Loader=_Loader)  # noqa: S506 - _Loader is a SafeLoader
    except RecursionError:
        raise SpecError(source, ["the file nests its values too deeply"]) from None
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        kind = ("unsupported YAML tag (study files are read with the safe loader)"
                if isinstance(exc, yaml.constructor.ConstructorError) else "YAML syntax error")
        raise SpecError(source, [f"{kind}: {where}{exc.problem or exc}"]) from None
    except yaml.YAMLError as exc:
        raise SpecError(source, [f"YAML error: {exc}"]) from None
    try:
        nodes = expanded_size(raw)
    except RecursionError:
        raise SpecError(source, ["the file nests its values too deeply, or an alias refers "
                                 "to the value that holds it"]) from None
    if nodes > MAX_NODES:
        raise SpecError(source, [f"the file stands for {nodes:,} values once its YAML aliases "
                                 f"are expanded (at most {MAX_NODES:,}): an alias bomb, not a "
                                 "study file"])
    return raw


def expanded_size(value: Any) -> int:
    """How many values `value` holds with shared (aliased) parts counted each time they are
    used, computed once per shared object."""
    sizes: dict[int, int] = {}

    def size(v: Any) -> int:
        if not isinstance(v, dict | list):
            return 1
        if id(v) in sizes:
            if sizes[id(v)] < 0:  # met again inside itself: an alias to its own holder
                raise RecursionError
            return sizes[id(v)]
        sizes[id(v)] = -1
        items = [*v.keys(), *v.values()] if isinstance(v, dict) else v
        sizes[id(v)] = total = 1 + sum(size(x) for x in items)
        return total

    return size(value)




def parse_assignments(items: Sequence[str], flag: str, source: str) -> dict[str, Any]:
    """`KEY=VALUE` strings -> {KEY: value}, each value parsed as YAML (`1e-4` is a float)."""
    errors: list[str] = []
    out: dict[str, Any] = {}
    for item in items:
        key, sep, text = item.partition("=")
        key = key.strip()
        if not sep or not key or not all(key.split(".")):
            errors.append(f"{flag} {item!r}: expected KEY=VALUE, e.g. {flag} budget.n_trials=4")
            continue
        try:
            out[key] = yaml.load(text, Loader=_Loader) if text.strip() else None  # noqa: S506
        except yaml.YAMLError:
            out[key] = text
    if errors:
        raise SpecError(source, errors)
    return out


def apply_overrides(raw: Mapping[str, Any], values: Mapping[str, Any],
                    source: str) -> dict[str, Any]:
    """A copy of the study mapping with `{"key.path": value}` set (e.g. from --set)."""
    errors: list[str] = []
    out = _deepcopy_mapping(raw)
    for key, value in values.items():
        parts = key.split(".")
        node = out
        for i, part in enumerate(parts[:-1]):
            if node.get(part) is None:
                node[part] = {}
            node = node[part]
            if not isinstance(node, dict):
                errors.append(f"--set {key}: {'.'.join(parts[: i + 1])} is not a mapping")
                break
        else:
            node[parts[-1]] = value
    if errors:
        raise SpecError(source, errors)
    return out


def _deepcopy_mapping(d: Mapping[str, Any]) -> dict[str, Any]:
    return {k: _deepcopy_mapping(v) if isinstance(v, dict) else v for k, v in d.items()}


def load_spec(path: str | Path, overrides: Sequence[str] = (),
              values: Mapping[str, Any] | None = None) -> StudySpec:
    """Read, override and validate a study file. Raises SpecError (all problems at once).

    `overrides` are `key.path=value` strings (values parsed as YAML); `values` are already
    parsed, e.g. {"storage": url} from a command-line flag.
    """
    p = Path(path)
    source = str(p)
    try:
        if p.is_file() and p.stat().st_size > MAX_FILE_BYTES:
            raise SpecError(source, [f"the study file is larger than {MAX_FILE_BYTES // 1024} "
                                     "KiB; a study file is a page of settings"])
        text = p.read_text(encoding="utf-8-sig")  # a byte-order mark is not YAML
    except FileNotFoundError:
        raise SpecError(source, ["study file not found"]) from None
    except IsADirectoryError:
        raise SpecError(source, ["this is a directory, not a study file"]) from None
    except UnicodeDecodeError:
        raise SpecError(source, ["the study file is not UTF-8 text"]) from None
    except OSError as exc:
        raise SpecError(source, [f"cannot read the study file: {exc.strerror}"]) from None
    return load_mapping(parse_yaml(text, source), source, p.stem, overrides, values)


def load_mapping(raw: Any, source: str = "<dict>", default_name: str = "study",
                 overrides: Sequence[str] = (),
                 values: Mapping[str, Any] | None = None) -> StudySpec:
    """Validate a study given as a mapping (what a study file's YAML reads as), with the same
    overrides as `load_spec`. Raises SpecError (all problems at once)."""
    if raw is not None and not isinstance(raw, dict):
        raise SpecError(source, [f"a study file is a mapping of keys, got {type(raw).__name__}"])
    if raw is not None and (nodes := expanded_size(raw)) > MAX_NODES:
        raise SpecError(source, [f"the study holds {nodes:,} values (at most {MAX_NODES:,})"])
    assignments = {**parse_assignments(overrides, "--set", source), **(values or {})}
    raw = apply_overrides(raw or {}, assignments, source)
    return validate(raw, source, default_name=default_name)

