"""Finalize's candidates: the configs retrained on fresh seeds, one of which becomes final.

The `finalize.top_k` best feasible complete trials with distinct configs (the seed aside), or
in Pareto mode the one trial of the front that `finalize.pick` picks. Each is retrained for
`finalize.steps`, or as many steps as fit in `finalize.minutes` at its trial's measured speed.
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import optuna

from harness.config import StudySpec
from harness.config.hparams import HParams
from harness.errors import NothingToFinalize
from harness.final.events import FinalizeObserver
from harness.search import counting, pareto
from harness.search.records import TrialRecord, records
from harness.training.model import MLP


@dataclass(frozen=True)
class CandidateResult:
    """One candidate config retrained on every seed."""

    trial: int
    config: dict[str, Any]
    steps: int
    dev_losses: tuple[float, ...]
    dev_mean: float
    dev_std: float
    # Seconds per seed in training steps and in dev evaluations (empty in older records).
    train_s: tuple[float, ...] = ()
    eval_s: tuple[float, ...] = ()


@dataclass(frozen=True)
class Retrained:
    """What one retraining produced: its best dev loss, the model of that evaluation, and its
    seconds in training steps and in dev evaluations."""

    dev_loss: float
    model: MLP
    train_s: float
    eval_s: float


@dataclass
class Candidate:
    """One config being retrained on several seeds; its dev losses decide."""

    trial: int
    hparams: HParams
    steps_per_sec: float | None = None  # as its trial measured it
    steps: int = 0  # steps per retraining, set by `plan_steps`
    retrained: list[Retrained] = field(default_factory=list, repr=False)  # in seed order

    @property
    def dev_losses(self) -> list[float]:
        return [r.dev_loss for r in self.retrained]

    @property
    def models(self) -> list[MLP]:
        return [r.model for r in self.retrained]

    @property
    def dev_mean(self) -> float:
        return mean_std(self.dev_losses)[0]

    def result(self) -> CandidateResult:
        mean, std = mean_std(self.dev_losses)
        return CandidateResult(self.trial, self.hparams.to_dict(), self.steps,
                               tuple(self.dev_losses), mean, std,
                               tuple(r.train_s for r in self.retrained),
                               tuple(r.eval_s for r in self.retrained))


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for a single value)."""
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def candidates(study: optuna.Study, spec: StudySpec,
               observer: FinalizeObserver | None = None) -> list[Candidate]:
    """Phase 2: the best `finalize.top_k` feasible complete trials with distinct configs (the
    seed aside); in Pareto mode the trial of the front that `finalize.pick` picks. Raises
    NothingToFinalize when there is none."""
    recs = records(study)
    rule = spec.finalize.pick
    if rule is not None:
        on_front = pareto.front(recs, rule.metric)
        chosen = pareto.pick(on_front, rule)
        if chosen is None:
            raise NothingToFinalize(f"no trial on the front of study {spec.name!r} satisfies "
                                    f"finalize.pick {rule.as_written()} (front: "
                                    f"{len(on_front)} trials)")
        if observer:
            observer.picked(chosen, on_front, rule)
        return [Candidate(chosen.number, HParams(**_unseeded(chosen)), chosen.steps_per_sec)]
    pool = _best_distinct(counting.complete(recs), spec.finalize.top_k)
    if not pool:
        raise NothingToFinalize(f"study {spec.name!r} has no complete trial within its "
                                "constraints to finalize")
    return pool


def _unseeded(r: TrialRecord) -> dict[str, Any]:
    return {k: v for k, v in r.hparams.items() if k != "seed"}


def _best_distinct(complete: list[TrialRecord], top_k: int) -> list[Candidate]:
    """The best `top_k` of `complete` (best first), one per config (the seed aside)."""
    out: list[Candidate] = []
    seen: set[tuple] = set()
    for r in complete:
        config = _unseeded(r)
        key = tuple(sorted(config.items()))
        if key not in seen:
            seen.add(key)
            out.append(Candidate(r.number, HParams(**config), r.steps_per_sec))
        if len(out) == top_k:
            break
    return out


def plan_steps(cand: Candidate, spec: StudySpec) -> int:
    """Steps for each retraining of `cand`: `finalize.steps` (default budget.steps), or, with
    `finalize.minutes`, as many as fit in that time at the trial's measured speed, in whole
    evaluation intervals, capped by `finalize.steps` when it is given."""
    f, every = spec.finalize, spec.budget.eval_every
    if f.minutes is None or not cand.steps_per_sec:
        return f.steps or spec.budget.steps
    # 5% held back for the evaluations, which the trial's steps/s leaves out.
    fit = int(f.minutes * 60 * cand.steps_per_sec * 0.95) // every * every
    return max(every, min(fit, f.steps) if f.steps else fit)


