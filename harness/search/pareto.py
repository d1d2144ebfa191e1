"""Pareto mode, in one module: the objective values a trial reports (dev loss and its size or
time), the front (the trials no other beats on both), and the rule that picks one of them for
finalize.

A point is (dev loss, cost), both minimized; cost is the objective's Pareto metric (n_params or
train_seconds). Points are the feasible complete trials only: an infeasible trial is on no front.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from harness.config import StudySpec
from harness.config.schema import PickRule
from harness.search import counting
from harness.search.records import TrialRecord

# The lectures' models at their size, for the figure and the tables: (name, parameters, dev
# loss). Part 2's config on this split (README: dev 2.17); part 5's hierarchical network.
LECTURE_MODELS: tuple[tuple[str, float, float], ...] = (
    ("lecture MLP (part 2)", 11_897, 2.17),
    ("lecture hierarchical (part 5)", 76_579, 1.9937),
)


# Each Pareto metric in words, as the CLI and the figure name it.
UNITS = {"n_params": "parameters", "train_seconds": "training seconds"}


def cost(r: TrialRecord, metric: str) -> float | None:
    """The trial's figure for the Pareto metric `metric`, or None when it has none."""
    value = r.n_params if metric == "n_params" else r.train_s
    return None if value is None else float(value)


def objective_values(spec: StudySpec, r: TrialRecord) -> list[float] | None:
    """The objective values of the complete trial `r` in this study (None: a figure is
    missing): its best dev loss, then in Pareto mode its n_params or train seconds."""
    assert r.value is not None
    if spec.objective.pareto is None:
        return [r.value]
    extra = cost(r, spec.objective.pareto)
    return None if extra is None else [r.value, extra]


def front(recs: Sequence[TrialRecord], metric: str) -> list[TrialRecord]:
    """The feasible complete trials that no other such trial dominates (as good on both dev loss
    and `metric` and better on one), by increasing `metric`."""
    points = sorted(((c, r.value, r) for r in counting.complete(recs)
                     if r.value is not None and (c := cost(r, metric)) is not None),
                    key=lambda p: (p[0], p[1], p[2].number))
    out: list[TrialRecord] = []
    best = math.inf
    for _, loss, r in points:  # by cost: on the front when its loss beats every cheaper one
        if loss < best:
            out.append(r)
            best = loss
    return out


def pick(on_front: Sequence[TrialRecord], rule: PickRule) -> TrialRecord | None:
    """The trial of the front that `rule` picks (None: no trial of the front satisfies it)."""
    if rule.limit is not None:
        within = [r for r in on_front if (cost(r, rule.metric) or math.inf) <= rule.limit]
        return min(within, key=lambda r: r.loss, default=None)
    return knee(on_front, rule.metric)


def knee(on_front: Sequence[TrialRecord], metric: str) -> TrialRecord | None:
    """The trial farthest below the straight line between the front's two ends, with log
    `metric` and dev loss each scaled to 0..1 over the front: where a larger (or slower) model
    stops paying. A front of one or two trials: its lowest dev loss."""
    if len(on_front) <= 2:
        return min(on_front, key=lambda r: r.loss, default=None)
    xs = [math.log(max(cost(r, metric) or 0.0, 1e-12)) for r in on_front]
    ys = [r.loss for r in on_front]
    # Along the front cost rises and loss falls, so its ends scale to (0, 1) and (1, 0) and
    # the line between them is x + y = 1: the knee has the largest 1 - x - y.
    lo_x, span_x = min(xs), (max(xs) - min(xs)) or 1.0
    lo_y, span_y = min(ys), (max(ys) - min(ys)) or 1.0
    below = [1 - (x - lo_x) / span_x - (y - lo_y) / span_y for x, y in zip(xs, ys, strict=True)]
    return on_front[max(range(len(below)), key=below.__getitem__)]
