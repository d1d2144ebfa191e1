"""The spec's sampler and pruner, built from the one registry of `harness.config.choices`.

Each is its Optuna class, given the study file's options, plus the arguments a few derive from
the study (`_DERIVED`). A pruner's resource is optimizer steps: a trial reports its dev loss
every `budget.eval_every` steps. Each worker process builds its own sampler with its own seed
(the worker draws the seed offset from the storage, so no two processes propose the same
trials).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Mapping
from typing import Any

import optuna

from harness.config import StudySpec
from harness.config.choices import PRUNERS, SAMPLERS
from harness.config.space import CategoricalParam, iter_params
from harness.search.space import grid_space


def _tpe(spec: StudySpec, opts: Mapping[str, Any]) -> dict[str, Any]:
    # Multivariate TPE by default; with conditional parameters it groups them (`group`).
    conditional = any(isinstance(p, CategoricalParam) and p.conditional
                      for p in iter_params(spec.search))
    multivariate = opts.get("multivariate", True)
    return {"multivariate": multivariate, "group": conditional and multivariate}


def _grid(spec: StudySpec, opts: Mapping[str, Any]) -> dict[str, Any]:
    return {"search_space": grid_space(spec.search)}


def _resource(spec: StudySpec, opts: Mapping[str, Any]) -> dict[str, Any]:
    return {"min_resource": spec.budget.eval_every}


def _hyperband(spec: StudySpec, opts: Mapping[str, Any]) -> dict[str, Any]:
    return {**_resource(spec, opts), "max_resource": spec.budget.steps}


# Optuna class -> the arguments the study derives for it; the file's own options win.
_DERIVED: Mapping[str, Callable[[StudySpec, Mapping[str, Any]], dict[str, Any]]] = {
    "TPESampler": _tpe,
    "GridSampler": _grid,
    "SuccessiveHalvingPruner": _resource,
    "HyperbandPruner": _hyperband,
}


def _build(module: Any, optuna_class: str, spec: StudySpec, opts: Mapping[str, Any]) -> Any:
    derive = _DERIVED.get(optuna_class)
    kwargs = {**(derive(spec, opts) if derive else {}), **opts}
    with warnings.catch_warnings():  # e.g. TPE's `group`: "experimental", and what we want
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        return getattr(module, optuna_class)(**kwargs)


def build_sampler(spec: StudySpec, seed_offset: int = 0) -> optuna.samplers.BaseSampler:
    """The spec's sampler, seeded with its base seed + `seed_offset`."""
    opts = dict(spec.sampler.options)
    opts["seed"] = opts.get("seed", 0) + seed_offset
    sampler: optuna.samplers.BaseSampler = _build(
        optuna.samplers, SAMPLERS[spec.sampler.type].optuna_class, spec, opts)
    return sampler


def build_pruner(spec: StudySpec) -> optuna.pruners.BasePruner:
    """The spec's pruner; none in Pareto mode (Optuna's pruners judge one objective only)."""
    kind = "none" if spec.objective.pareto else spec.pruner.type
    pruner: optuna.pruners.BasePruner = _build(
        optuna.pruners, PRUNERS[kind].optuna_class, spec, spec.pruner.options
        if kind != "none" else {})
    return pruner
