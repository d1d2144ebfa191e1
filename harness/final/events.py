"""Finalize's progress events, reported to an observer while it works (the CLI's progress
display is one), and the unit of work they name: one retraining."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from harness.config.schema import PickRule
from harness.search.records import TrialRecord


@dataclass(frozen=True)
class Retraining:
    """One candidate on one seed: a unit of finalize's work."""

    candidate: int  # index into the candidates
    trial: int
    seed: int
    steps: int


class FinalizeObserver(Protocol):
    """Receives the final model's events: in Pareto mode the trial picked from the front, then
    retrainings of candidates on seeds."""

    def picked(self, trial: TrialRecord, front: Sequence[TrialRecord],
               rule: PickRule) -> None: ...

    def resuming(self, evaluations: int) -> None:
        """An interrupted finalize had recorded its result (with the study's test evaluation
        number `evaluations`): it is published now, the test split not read again."""

    def retrainings_planned(self, jobs: Sequence[Retraining], processes: int) -> None: ...

    def filling(self, jobs: Sequence[Retraining], processes: int, left_s: float) -> None:
        """finalize.fill: `jobs` train more seeds of the chosen config in the `left_s`
        seconds left before budget.wall_time."""

    def retraining_evaluated(self, job: Retraining, step: int, dev_loss: float) -> None: ...

    def retraining_done(self, job: Retraining, dev_loss: float, done: int,
                        total: int) -> None: ...
