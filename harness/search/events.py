"""The search's progress events, reported to an observer while it works.

The library reports typed events and formats nothing; the CLI's progress display is one
observer (of these and of finalize's, harness.final.events). Every method is optional to act
on (a no-op is fine).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Protocol

from harness.search.records import StudyRecord, TrialRecord


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
