"""The study's space in Optuna's terms: suggesting a trial's values, the distributions that
values fit (warm start), and the grid of every value (the grid sampler)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import optuna
from optuna.distributions import (
    BaseDistribution,
    CategoricalDistribution,
    FloatDistribution,
    IntDistribution,
)

from harness.config.space import CategoricalParam, FloatParam, IntParam, Param


def suggest(trial: optuna.Trial, space: Sequence[Param]) -> dict[str, Any]:
    """Suggest a value for each parameter of the space; conditional ones only when active."""
    values: dict[str, Any] = {}
    for p in space:
        if isinstance(p, CategoricalParam):
            choice = trial.suggest_categorical(p.name, list(p.choices))
            values[p.name] = choice
            values.update(suggest(trial, p.conditional.get(choice, ())))
        elif isinstance(p, IntParam):
            values[p.name] = trial.suggest_int(p.name, p.low, p.high, step=p.step, log=p.log)
        elif isinstance(p, FloatParam):
            values[p.name] = trial.suggest_float(p.name, p.low, p.high, step=p.step, log=p.log)
    return values


def grid_space(space: Sequence[Param]) -> dict[str, list[Any]]:
    """Every value of each parameter, for the grid sampler (floats need a step)."""
    out: dict[str, list[Any]] = {}
    for p in space:
        if isinstance(p, CategoricalParam):
            out[p.name] = list(p.choices)
        elif isinstance(p, IntParam):
            out[p.name] = list(range(p.low, p.high + 1, p.step))
        else:
            assert p.step is not None
            n = int(round((p.high - p.low) / p.step)) + 1
            out[p.name] = [float(v) for v in np.round(p.low + p.step * np.arange(n), 12)]
    return out


def fit(space: Sequence[Param], values: Mapping[str, Any],
        ) -> tuple[dict[str, BaseDistribution], str | None]:
    """The distributions of the parameters of `space` that `values` make active (conditional
    ones under the chosen branch), or why `values` do not fit the space."""
    dists: dict[str, BaseDistribution] = {}
    for p in space:
        if p.name not in values:
            return {}, f"it has no {p.name}"
        v = values[p.name]
        if isinstance(p, CategoricalParam):
            if v not in p.choices:
                return {}, f"{p.name}={v!r} is not one of {list(p.choices)}"
            dists[p.name] = CategoricalDistribution(list(p.choices))
            sub, why = fit(p.conditional.get(v, ()), values)
            if why:
                return {}, why
            dists.update(sub)
        elif not p.low <= v <= p.high:
            return {}, f"{p.name}={v!r} is outside {p.low}..{p.high}"
        elif isinstance(p, IntParam):
            dists[p.name] = IntDistribution(p.low, p.high, log=p.log, step=p.step or 1)
        else:
            dists[p.name] = FloatDistribution(p.low, p.high, log=p.log, step=p.step)
    return dists, None
