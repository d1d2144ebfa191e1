"""A study's search space: its parameters, as the study file declares them.

Three kinds, in Optuna's terms: int and float ranges (optionally log-scaled or stepped) and
categoricals, whose choices may carry conditional parameters that exist only under that choice.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class IntParam:
    name: str
    low: int
    high: int
    step: int = 1
    log: bool = False


@dataclass(frozen=True)
class FloatParam:
    name: str
    low: float
    high: float
    step: float | None = None
    log: bool = False


@dataclass(frozen=True)
class CategoricalParam:
    name: str
    choices: tuple[Any, ...]
    # choice -> the parameters that exist only when this parameter takes that choice
    conditional: Mapping[Any, tuple[Param, ...]] = field(default_factory=dict)


Param = IntParam | FloatParam | CategoricalParam




def iter_params(params: Sequence[Param]) -> Iterator[Param]:
    """Every parameter of a space, depth first, conditional ones included."""
    for p in params:
        yield p
        if isinstance(p, CategoricalParam):
            for sub in p.conditional.values():
                yield from iter_params(sub)


def holds(p: Param, value: Any) -> bool:
    """Whether `value` lies in `p`'s range or among its choices."""
    if isinstance(p, CategoricalParam):
        return value in p.choices
    return bool(p.low <= value <= p.high)


def cut_to_space(config: Mapping[str, Any], space: Sequence[Param]) -> dict[str, Any]:
    """The values of `config` that the searched space can hold, conditional ones only under
    the branch `config` chooses (the rest is sampled)."""
    out: dict[str, Any] = {}
    for p in space:
        value = config.get(p.name)
        held = p.name in config and holds(p, value)
        if held:
            out[p.name] = value
        if isinstance(p, CategoricalParam):  # a sampled choice may take any branch
            for choice, sub in p.conditional.items():
                if not held or choice == value:
                    out.update(cut_to_space(config, sub))
    return out


def largest(space: Sequence[Param], name: str, default: Any) -> Any:
    """The largest value hyperparameter `name` can take: its searched values, and `default`
    (its fixed or default value) unless every trial samples it (a conditional one may not)."""
    top_level = any(p.name == name for p in space)
    values = [] if top_level else [default]
    for p in iter_params(space):
        if p.name == name:
            values += list(p.choices) if isinstance(p, CategoricalParam) else [p.high]
    return max(values)
