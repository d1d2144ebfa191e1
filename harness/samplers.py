"""The spec's sampler and pruner, and its space, built in Optuna's terms.

A pruner's resource is optimizer steps: a trial reports its dev loss every `budget.eval_every`
steps. Each worker process builds its own sampler with its own seed (harness.study draws the
seed offset from the storage, so no two processes propose the same trials).
"""

from __future__ import annotations

import warnings
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

from harness.spec import CategoricalParam, IntParam, Param, StudySpec, iter_params


def build_sampler(spec: StudySpec, seed_offset: int = 0) -> optuna.samplers.BaseSampler:
    """The spec's sampler, seeded with its base seed + `seed_offset`."""
    opts = dict(spec.sampler.options)
    seed = opts.pop("seed") + seed_offset
    kind = spec.sampler.type
    if kind == "tpe":
        has_conditional = any(isinstance(p, CategoricalParam) and p.conditional
                              for p in iter_params(spec.search))
        opts.setdefault("multivariate", True)
        opts.setdefault("group", has_conditional and opts["multivariate"])
        with warnings.catch_warnings():  # `group` is marked experimental; it is what we want
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            return optuna.samplers.TPESampler(seed=seed, **opts)
    if kind == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    if kind == "qmc":
        return optuna.samplers.QMCSampler(seed=seed, **opts)
    if kind == "cmaes":
        return optuna.samplers.CmaEsSampler(seed=seed, **opts)
    if kind == "gp":
        # A Gaussian process fitted to the complete trials only: a pruned trial teaches it
        # nothing (TPE ranks pruned trials by their last reported loss). Parameters outside
        # every complete trial's space (an unchosen conditional branch) are drawn at random.
        return optuna.samplers.GPSampler(seed=seed, **opts)
    if kind == "grid":
        return optuna.samplers.GridSampler(grid_space(spec.search), seed=seed)
    raise ValueError(f"unknown sampler {kind!r}")


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


def build_pruner(spec: StudySpec) -> optuna.pruners.BasePruner:
    """The spec's pruner; its resource is optimizer steps."""
    opts = dict(spec.pruner.options)
    kind = spec.pruner.type
    if kind == "none" or spec.objective.pareto:  # Optuna prunes on one objective only
        return optuna.pruners.NopPruner()
    if kind == "median":
        return optuna.pruners.MedianPruner(**opts)
    if kind == "successive_halving":
        opts.setdefault("min_resource", spec.budget.eval_every)
        return optuna.pruners.SuccessiveHalvingPruner(**opts)
    if kind == "hyperband":
        opts.setdefault("min_resource", spec.budget.eval_every)
        return optuna.pruners.HyperbandPruner(max_resource=spec.budget.steps, **opts)
    raise ValueError(f"unknown pruner {kind!r}")


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
