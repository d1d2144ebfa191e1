"""Stop rules: when a worker starts no new trial. Each rule is an object with one question,
`why(recs, now)`: the reason to stop now, or None.

- `TrialBudget`: the study has its n_trials (finished and running trials together);
- `Timeout`: budget.timeout seconds have passed since the latest run-study started;
- `Patience`: the best dev loss did not improve by min_delta over the last N complete trials;
- `WallTime`: one more trial and the final model would not end within budget.wall_time.

Every rule reads what the study recorded (`StudyRecord`), so all workers stop alike. Rules
whose reason the study keeps (`recorded`) say so in `run-study` and `status`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

from optuna.trial import TrialState

from harness.config import StudySpec
from harness.search import counting
from harness.search.records import StudyRecord, TrialRecord

# Finalize's seconds besides its retrainings: processes, the test split, samples, figures, records.
FINAL_OVERHEAD_S = 60.0


class StopRule(Protocol):
    @property
    def recorded(self) -> bool:
        """Whether the reason is kept in the study (harness.search.records)."""
        ...

    def why(self, recs: Sequence[TrialRecord], now: float) -> str | None:
        """Why no new trial should start now, or None."""
        ...


@dataclass(frozen=True)
class TrialBudget:
    n_trials: int
    recorded: bool = False

    def why(self, recs: Sequence[TrialRecord], now: float) -> str | None:
        if counting.budget_taken(recs, self.n_trials):
            return f"the study has its {self.n_trials} trials"
        return None


@dataclass(frozen=True)
class Timeout:
    deadline: float  # epoch seconds
    recorded: bool = False

    def why(self, recs: Sequence[TrialRecord], now: float) -> str | None:
        return "budget.timeout reached" if now >= self.deadline else None


@dataclass(frozen=True)
class Patience:
    trials: int
    min_delta: float
    recorded: bool = True

    def why(self, recs: Sequence[TrialRecord], now: float) -> str | None:
        """Its best dev loss did not improve by `min_delta` over its last `trials` complete
        trials (by the time they ended)."""
        done = sorted((r for r in counting.complete(recs) if r.completed is not None),
                      key=lambda r: r.completed)  # type: ignore[arg-type,return-value]
        if len(done) <= self.trials:
            return None
        before = min(r.value for r in done[:-self.trials] if r.value is not None)
        recent = min(r.value for r in done[-self.trials:] if r.value is not None)
        if recent > before - self.min_delta:
            return (f"no improvement by {self.min_delta:g} over the last {self.trials} complete "
                    f"trials (best {before:.4f} before them, {recent:.4f} among them)")
        return None


@dataclass(frozen=True)
class WallTime:
    """A new trial may take as long as the slowest trial so far would take for the full
    `steps` (a pruned trial's seconds scaled up); then finalize runs `final_rounds` rounds of
    retrainings, each as long as `retraining_s(its trial's full-length seconds)`, for the
    `top_k` best complete trials (None: any complete trial, as in Pareto mode). Stop when that
    would end after `end` (epoch seconds); never before any trial has finished."""

    end: float
    steps: int
    final_rounds: int
    top_k: int | None
    retraining_s: Callable[[float], float]
    recorded: bool = True

    def why(self, recs: Sequence[TrialRecord], now: float) -> str | None:
        def full_length_s(r: TrialRecord) -> float:  # seconds scaled to `steps`
            assert r.duration_s is not None and r.steps
            return r.duration_s * self.steps / r.steps

        ran = [r for r in recs if r.state in (TrialState.COMPLETE, TrialState.PRUNED)
               and r.steps and r.duration_s and not r.warm_from]
        if not ran:
            return None
        trial_s = max(map(full_length_s, ran))
        final_s = 0.0
        if self.final_rounds:
            best = [full_length_s(r) for r in counting.complete(ran)][:self.top_k or None]
            final_s = (self.final_rounds * max(map(self.retraining_s, best or [trial_s]))
                       + FINAL_OVERHEAD_S)
        over = now + trial_s + final_s - self.end
        if over <= 0:
            return None
        return (f"one more trial (up to {trial_s:.0f} s) and the final model (about "
                f"{final_s:.0f} s) would end {over:.0f} s past budget.wall_time")


def for_study(spec: StudySpec, record: StudyRecord) -> list[StopRule]:
    """The rules a worker of the study follows, from what the study recorded."""
    rules: list[StopRule] = [TrialBudget(record.n_trials)]
    if record.deadline is not None:
        rules.append(Timeout(record.deadline))
    if record.patience_trials:
        rules.append(Patience(record.patience_trials, record.patience_min_delta))
    if record.wall_time is not None:
        rules.append(WallTime(
            record.timeout_start + record.wall_time, spec.budget.steps, record.final_rounds,
            None if spec.finalize.pick else spec.finalize.top_k,
            lambda s: spec.finalize.retraining_s(s, spec.budget.steps)))
    return rules


def first(rules: Sequence[StopRule], recs: Sequence[TrialRecord],
          now: float) -> tuple[StopRule, str] | None:
    """The first rule that says stop, with its reason; None to go on."""
    for rule in rules:
        if reason := rule.why(recs, now):
            return rule, reason
    return None
