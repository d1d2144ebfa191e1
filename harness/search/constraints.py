"""Constraints (objective.constraints): bounds on what a trial measures, each judged as soon
as its figure is known.

A config over `n_params.max` is known before training and is never trained; `steps_per_sec`
and `ms_per_name` are measured by the trial. The violations go where TPE reads them (Optuna's
`Trial.set_constraint`: > 0 is infeasible), and the reason into the trial's record.
"""

from __future__ import annotations

from typing import Any

import optuna

from harness.config import StudySpec
from harness.search import records
from harness.search.records import TrialRecord


def judge(spec: StudySpec, trial: optuna.Trial, measured: dict[str, float],
          **figures: Any) -> TrialRecord:
    """Record the trial's constraint violations for what is measured (a figure not
    measured yet counts as within its bound) and why it is infeasible, if it is."""
    constraints = spec.objective.constraints
    if not constraints:
        return TrialRecord()
    violations = [c.violation(measured[c.metric]) if c.metric in measured else 0.0
                  for c in constraints]
    def figure(x: float) -> str:
        return f"{x:,.0f}" if abs(x) >= 100 else f"{x:.3g}"

    reason = "; ".join(
        f"{c.metric} {figure(measured[c.metric])} is "
        f"{'above' if c.bound == 'max' else 'below'} its {c.bound} {figure(c.value)}"
        for c, v in zip(constraints, violations, strict=True) if v > 0)
    record = TrialRecord(violations=violations, infeasible=reason or None, **figures)
    records.write(trial, record)
    known = trial.constraints  # set once each, by the first call that measures its figure
    for c, v in zip(constraints, violations, strict=True):  # what TPE reads: > 0 infeasible
        key = f"{c.metric}.{c.bound}"
        if c.metric in measured and key not in known:
            trial.set_constraint(key, v)
    return record
