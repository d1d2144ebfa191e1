"""Warm start: a new study begins with an earlier study's best complete trials as finished
trials, so that its sampler starts informed.

Each must fit the new space, its fixed values and `budget.steps`; the others are listed with
the reason and skipped. The trials link to their MLflow runs (not copied), rank on the
leaderboard (`warm_from`) and may be finalized, but do not count against n_trials.
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from typing import Any

import optuna

from harness.config import StudySpec, load_spec
from harness.search import counting, pareto, storage
from harness.search.records import TrialRecord, records
from harness.search.space import fit

log = logging.getLogger(__name__)


def add_trials(spec: StudySpec, study: optuna.Study) -> dict[str, Any]:
    """Add the earlier study's complete trials that fit this one's space, fixed values and
    steps, as finished trials (linked to their MLflow runs, not copied); warn of the others.
    Returns what to record: the earlier study and how many trials were added and skipped."""
    if spec.warm_start is None:
        return {}
    source = _earlier_study(spec)
    complete = counting.complete(records(source))[:spec.warm_start.top]
    added = 0
    for r in complete:
        dists, why = fit(spec.search, r.hparams)
        params = {k: r.hparams[k] for k in dists}
        values = pareto.objective_values(spec, r)
        if why := why or _misfit(spec, r, params) or (
                None if values else f"it has no {spec.objective.pareto} figure"):
            log.warning("warm start: trial %d of %s skipped: %s", r.number, source.study_name,
                        why)
            continue
        warm = optuna.trial.create_trial(
            params=params, distributions=dists, values=values,
            intermediate_values=dict(r.intermediate),
            user_attrs=dataclasses.replace(
                r, warm_from=r.warm_from or f"{source.study_name}#{r.number}").to_attrs())
        # When it ran (not when it was copied): "the last improvement" stays true.
        warm.datetime_start, warm.datetime_complete = r.started, r.completed
        study.add_trial(warm)
        added += 1
    return {"warm_from": source.study_name, "warm_trials": added,
            "warm_skipped": len(complete) - added}


def _misfit(spec: StudySpec, r: TrialRecord, params: dict[str, Any]) -> str | None:
    """Why an earlier trial whose params fit the space still does not fit this study: another
    value of a hyperparameter this study fixes (the seed aside), or another step budget."""
    for k, v in spec.base_hparams(**params).to_dict().items():
        if k != "seed" and r.hparams.get(k) != v:
            return f"it trained with {k}={r.hparams.get(k)!r}, this study uses {v!r}"
    if r.steps != spec.budget.steps:
        return f"it trained {r.steps} steps, this study's trials train {spec.budget.steps}"
    return None


def _earlier_study(spec: StudySpec) -> optuna.Study:
    """warm_start.study: a study file (its storage and name), else a name in this storage."""
    assert spec.warm_start is not None
    name = spec.warm_start.study
    if name.endswith((".yaml", ".yml")):
        path = Path(name) if Path(name).exists() else Path(spec.source).parent / name
        earlier = load_spec(path)
        return storage.load(earlier.storage, earlier.name)
    return storage.load(spec.storage, name)
