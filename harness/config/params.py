"""The `search:` section: parameters and their ranges or choices, conditional branches, and
names searched twice."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from harness.config import hparams
from harness.config.checks import get, mapping, reject_unknown, suggest
from harness.config.space import CategoricalParam, FloatParam, IntParam, Param

PARAM_KEYS = {
    "int": ("type", "low", "high", "step", "log"),
    "float": ("type", "low", "high", "step", "log"),
    "categorical": ("type", "choices", "conditional"),
}


def _parse_param(name: str, raw: Any, path: str, errors: list[str]) -> Param | None:
    """One search parameter; None when it is too broken to use."""
    if name not in hparams.NAMES:
        errors.append(f"{path}: unknown hyperparameter{suggest(name, hparams.NAMES)}")
        return None
    if isinstance(raw, list):  # shorthand: a list of choices
        raw = {"type": "categorical", "choices": raw}
    d = mapping(raw, path, errors)
    if not d:
        errors.append(f"{path}: needs a type (int, float or categorical) and its bounds or choices")
        return None
    kind = d.get("type")
    if kind not in PARAM_KEYS:
        errors.append(f"{path}.type: must be int, float or categorical, got {kind!r}")
        return None
    reject_unknown(d, PARAM_KEYS[kind], path, errors)
    if kind == "categorical":
        return _parse_categorical(name, d, path, errors)

    hp_type = hparams.TYPES[name]
    if kind == "int" and hp_type is not int or kind == "float" and hp_type is not float:
        errors.append(f"{path}.type: {name} is a {hp_type.__name__} hyperparameter, "
                      f"so its type must be {'int' if hp_type is int else 'float'}")
        return None
    num = int if kind == "int" else float
    n_before = len(errors)
    for key in ("low", "high"):
        if key not in d:
            errors.append(f"{path}.{key}: required for a {kind} parameter")
    low = get(d, "low", num, None, path, errors)
    high = get(d, "high", num, None, path, errors)
    log = get(d, "log", bool, False, path, errors)
    step = get(d, "step", num, 1 if num is int else None, path, errors, optional=True)
    if len(errors) > n_before or low is None or high is None:
        return None
    if low > high:
        errors.append(f"{path}: low ({low}) is greater than high ({high})")
    if log and low <= 0:
        errors.append(f"{path}: a log scale needs low > 0, got low = {low}")
    if step is not None and step <= 0:
        errors.append(f"{path}.step: must be > 0, got {step}")
    if log and step not in (None, 1):
        errors.append(f"{path}: step and log cannot be used together")
    for key, bound in (("low", low), ("high", high)):
        if why := hparams.check_value(name, bound):
            errors.append(f"{path}.{key}: {why}")
    if num is int:
        return IntParam(name, low, high, step=step or 1, log=log)
    return FloatParam(name, low, high, step=step, log=log)


def _parse_categorical(name: str, d: Mapping[str, Any], path: str,
                       errors: list[str]) -> CategoricalParam | None:
    choices = d.get("choices")
    if not isinstance(choices, list) or not choices:
        errors.append(f"{path}.choices: must be a non-empty list, got {choices!r}")
        return None
    ok = True
    seen: list[Any] = []
    for i, choice in enumerate(choices):
        if why := hparams.check_value(name, choice):
            errors.append(f"{path}.choices[{i}]: {why}")
            ok = False
        elif choice in seen:
            errors.append(f"{path}.choices[{i}]: {choice!r} is listed twice")
            ok = False
        seen.append(choice)
    conditional: dict[Any, tuple[Param, ...]] = {}
    for choice, sub in mapping(d.get("conditional"), f"{path}.conditional", errors).items():
        sub_path = f"{path}.conditional.{choice}"
        if choice not in choices:
            errors.append(f"{sub_path}: {choice!r} is not one of the choices {choices}")
            ok = False
            continue
        conditional[choice] = parse_space(sub, sub_path, errors)
    if not ok:
        return None
    coerced = tuple(hparams.coerce(name, c) for c in choices)
    return CategoricalParam(name, coerced, conditional)


def parse_space(raw: Any, path: str, errors: list[str]) -> tuple[Param, ...]:
    d = mapping(raw, path, errors)
    params = [_parse_param(str(k), v, f"{path}.{k}", errors) for k, v in d.items()]
    return tuple(p for p in params if p is not None)


def _level_names(params: Sequence[Param]) -> dict[str, Param]:
    """Names a space defines: its own, and those of its conditional branches. A name may recur
    in sibling branches of one choice (only one branch is ever active), with the same type."""
    names: dict[str, Param] = {}
    for p in params:
        names.setdefault(p.name, p)
        if isinstance(p, CategoricalParam):
            merged: dict[str, Param] = {}
            for branch in p.conditional.values():
                for name, q in _level_names(branch).items():
                    merged.setdefault(name, q)
            names.update({k: v for k, v in merged.items() if k not in names})
    return names


def duplicates(params: Sequence[Param], path: str) -> list[str]:
    """Errors for names searched twice other than in sibling branches, or with two types."""
    errors = []
    seen: set[str] = set()
    for p in params:
        own = [p.name]
        if isinstance(p, CategoricalParam):
            kinds: dict[str, type] = {}
            for choice, branch in p.conditional.items():
                errors += duplicates(branch, f"{path}.{p.name}.conditional.{choice}")
                for name, q in _level_names(branch).items():
                    if kinds.setdefault(name, type(q)) is not type(q):
                        errors.append(f"{path}.{p.name}.conditional: {name} has different types "
                                      "in different branches")
            own += list(kinds)
        for name in own:
            if name in seen:
                errors.append(f"{path}: {name} is searched more than once")
            seen.add(name)
    return errors


