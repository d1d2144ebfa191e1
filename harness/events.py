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
    from harness.storage import StudyRecord
    from harness.trials import TrialRecord


class SearchObserver(Protocol):
    """Receives the search's events."""

    def search_started(self, record: StudyRecord) -> None:
        """What the study recorded in its storage, which every process reads alike: n_trials in
        all; with budget.wall_time, the seconds the whole command (finalize included) has from
        `timeout_start` (when the latest run-study started); with fixed.precision auto, the
        precision chosen and the step times it was chosen on."""
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

    def filling(self, jobs: Sequence[Retraining], processes: int, left_s: float) -> None:
        """finalize.fill: `jobs` train more seeds of the chosen config in the `left_s`
        seconds left before budget.wall_time."""

    def retraining_evaluated(self, job: Retraining, step: int, dev_loss: float) -> None: ...

    def retraining_done(self, job: Retraining, dev_loss: float, done: int,
                        total: int) -> None: ...
