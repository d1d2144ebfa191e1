"""The samplers and pruners a study file can name: one registry, read by the validator (which
options each takes, with their types) and by the search (which Optuna class it builds).

Adding one is a line here; the search builds it by its Optuna class name, with the study's
options as keyword arguments (and the few arguments derived from the study that
`harness.search.samplers` adds to some of them).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass


@dataclass(frozen=True)
class Choice:
    """One sampler or pruner: the Optuna class it builds, the options a study file may give
    it (with their types), and whether it can search two objectives (Pareto mode)."""

    optuna_class: str  # a class of optuna.samplers or optuna.pruners
    options: Mapping[str, type]
    multi_objective: bool = True


# `seed` is every sampler's base seed (each worker adds its own offset).
SAMPLERS: Mapping[str, Choice] = {
    "tpe": Choice("TPESampler", {"seed": int, "n_startup_trials": int, "multivariate": bool,
                                 "group": bool, "constant_liar": bool}),
    "random": Choice("RandomSampler", {"seed": int}),
    "qmc": Choice("QMCSampler", {"seed": int, "qmc_type": str, "scramble": bool}),
    "grid": Choice("GridSampler", {"seed": int}),
    "cmaes": Choice("CmaEsSampler", {"seed": int, "n_startup_trials": int, "sigma0": float},
                    multi_objective=False),
    # A Gaussian process fitted to the complete trials only: a pruned trial teaches it
    # nothing (TPE ranks pruned trials by their last reported loss).
    "gp": Choice("GPSampler", {"seed": int, "n_startup_trials": int,
                               "deterministic_objective": bool}),
}

# A pruner's resource is optimizer steps: a trial reports its dev loss every budget.eval_every.
PRUNERS: Mapping[str, Choice] = {
    "none": Choice("NopPruner", {}),
    "median": Choice("MedianPruner", {"n_startup_trials": int, "n_warmup_steps": int}),
    "successive_halving": Choice("SuccessiveHalvingPruner", {
        "min_resource": int, "reduction_factor": int, "min_early_stopping_rate": int}),
    "hyperband": Choice("HyperbandPruner", {"min_resource": int, "reduction_factor": int}),
}
