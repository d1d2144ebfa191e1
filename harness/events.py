"""Progress events: what the search and the final model report while they work.

The library reports typed events to an observer and formats nothing; the CLI's progress
display is one observer of both. Every method is optional to act on (a no-op is fine).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from harness.final import Retraining
    from harness.spec import PickRule
    from harness.trials import TrialRecord


class SearchObserver(Protocol):
    """Receives the search's events."""

    def search_started(self, n_trials: int, clock_start: float,
                       wall_time_s: float | None) -> None:
        """The study's budget as recorded in its storage: n_trials in all, and with
        budget.wall_time the seconds the whole command (finalize included) has from
        `clock_start` (epoch seconds: when the latest run-study started)."""
        ...

    def trial_started(self, number: int, params: Mapping[str, Any]) -> None: ...

    def evaluated(self, number: int, step: int, steps: int, dev_loss: float) -> None: ...

    def trial_finished(self, trial: TrialRecord, done: int, total: int,
                       best: float | None) -> None: ...


class FinalizeObserver(Protocol):
    """Receives the final model's events: in Pareto mode the trial picked from the front, then
    retrainings of candidates on seeds."""

    def picked(self, trial: TrialRecord, front: Sequence[TrialRecord],
               rule: PickRule) -> None: ...

    def retrainings_planned(self, jobs: Sequence[Retraining], processes: int) -> None: ...

    def retraining_evaluated(self, job: Retraining, step: int, dev_loss: float) -> None: ...

    def retraining_done(self, job: Retraining, dev_loss: float, done: int,
                        total: int) -> None: ...
