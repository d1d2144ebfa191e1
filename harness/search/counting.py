"""The counting rules: which trials use up the budget, which are surplus, which are best.

`budget.n_trials` counts finished trials (complete, pruned, failed), less those that failed
with their worker and were re-queued (the retry counts instead), less surplus trials (a worker
that started a trial when the others had already started the last one: it ends at once, never
trained), less warm-start trials (an earlier study's, added when this one was created: they
inform the sampler and rank on the leaderboard, but cost this study nothing). Running trials
count as taken when deciding whether to start another.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from optuna.trial import TrialState

from harness.search.records import TrialRecord

# Trials that use up the budget: n_trials counts these, across resumes.
COUNTED_STATES = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)


def retried_numbers(recs: Sequence[TrialRecord]) -> set[int]:
    """Numbers of trials that failed with their worker and were re-queued."""
    return {n for r in recs for n in r.retry_history}


def counted(recs: Sequence[TrialRecord]) -> int:
    """Trials that used up part of the budget."""
    retried = retried_numbers(recs)
    return sum(r.state in COUNTED_STATES and not r.surplus and not r.warm_from
               and r.number not in retried for r in recs)


def is_surplus(number: int, recs: Sequence[TrialRecord], n_trials: int) -> bool:
    """Whether trial `number` lies beyond n_trials: the trials before it that count, or run,
    already make n_trials. Of two workers that both saw one trial left and both started one,
    the later-numbered trial is the surplus one."""
    retried = retried_numbers(recs)
    ahead = sum(r.number < number and not r.surplus and not r.warm_from
                and r.number not in retried
                and (r.state in COUNTED_STATES or r.state == TrialState.RUNNING)
                for r in recs)
    return ahead >= n_trials


def budget_taken(recs: Sequence[TrialRecord], n_trials: int) -> bool:
    """Whether the finished and running trials already make up the study's n_trials."""
    running = sum(r.state == TrialState.RUNNING and not r.surplus for r in recs)
    return counted(recs) + running >= n_trials


def complete(recs: Sequence[TrialRecord]) -> list[TrialRecord]:
    """The complete trials within the objective's constraints, best dev loss first (ties by
    number): the trials that may be finalized, warm-start another study or stand on a front.
    Every rule that asks for "the best trials" reads them here."""
    return sorted((r for r in recs if r.state == TrialState.COMPLETE and r.value is not None
                   and r.feasible), key=lambda r: (r.value, r.number))


def best(recs: Sequence[TrialRecord]) -> TrialRecord | None:
    """The best feasible complete trial, or None."""
    ranked = complete(recs)
    return ranked[0] if ranked else None


def best_value(recs: Sequence[TrialRecord]) -> float | None:
    """The best feasible complete trial's value, or None."""
    found = best(recs)
    return found.value if found else None


def counts_by_state(recs: Sequence[TrialRecord]) -> dict[str, int]:
    """Complete, pruned and failed trials run by this study, by state name (surplus and
    warm-start ones left out)."""
    shown = [r for r in recs if not r.surplus and not r.warm_from]
    return {s.name: sum(r.state == s for r in shown) for s in COUNTED_STATES}


@dataclass(frozen=True)
class StudyStatus:
    """Where a study stands: what `harness status` shows."""

    states: Mapping[str, int]  # trials by state name, surplus and warm-start ones left out
    counted: int  # trials that count against n_trials
    warm: int  # trials added from an earlier study (warm_start)
    best: TrialRecord | None  # the best feasible complete trial
    running: tuple[TrialRecord, ...]


def status(recs: Sequence[TrialRecord]) -> StudyStatus:
    """Where the study of `recs` stands."""
    shown = [r for r in recs if not r.surplus]
    own = [r for r in shown if not r.warm_from]
    states = {s.name: sum(r.state == s for r in own) for s in
              (*COUNTED_STATES, TrialState.RUNNING, TrialState.WAITING)}
    return StudyStatus(states, counted(recs), len(shown) - len(own), best(shown),
                       tuple(r for r in shown if r.state == TrialState.RUNNING))
