"""The progress display: a live status line on a terminal (one line per finished trial
otherwise), on stderr. It observes the search and finalize (their observer protocols)."""

from __future__ import annotations

import sys
import time
from collections.abc import Mapping, Sequence
from typing import Any, TextIO

from harness.cli.render import describe_pick, describe_timing
from harness.config.schema import PickRule
from harness.final.events import Retraining
from harness.search import pareto
from harness.search.records import StudyRecord, TrialRecord


class Progress:
    """A live status line on a terminal (one line per finished trial otherwise), on stderr.
    Observes the search (harness.search.events.SearchObserver) and finalize (FinalizeObserver)."""

    def __init__(self, stream: TextIO | None = None) -> None:
        self.stream = stream or sys.stderr
        self.live = self.stream.isatty()
        self.tally = ""  # "4/200 trials, best 1.9330": as of the last finished trial
        self.running: dict[int, str] = {}  # trial number -> its latest progress
        self.picked_by: PickRule | None = None  # finalize in Pareto mode
        self.clock: tuple[float, float] | None = None  # budget.wall_time: (start, seconds)

    def status(self, text: str) -> None:
        if self.live:
            self.stream.write("\r\033[K" + text)
            self.stream.flush()

    def line(self, text: str) -> None:
        if self.live:
            self.stream.write("\r\033[K")
        self.stream.write(text + "\n")
        self.stream.flush()

    # -- the search

    def search_started(self, record: StudyRecord) -> None:
        self.clock = None if record.wall_time is None else (record.timeout_start,
                                                            record.wall_time)
        if record.precision is not None and record.precision_ms is not None:
            self.line(f"precision auto: {record.precision} for every trial (a step of the "
                      f"largest model the study samples: {describe_timing(record.precision_ms)})")

    def budget_used(self) -> str:
        """How much of budget.wall_time has passed, as '12 of 60 min' (seconds for a budget
        under 2 minutes); empty without a wall time."""
        if self.clock is None:
            return ""
        start, budget = self.clock
        used = time.time() - start
        if budget < 120:
            return f"{used:.0f} of {budget:.0f} s"
        return f"{used / 60:.0f} of {budget / 60:.0f} min"

    def header(self) -> str:
        """The live line's start: the trials so far and, with a wall time, the clock now."""
        parts = [part for part in (self.tally, self.budget_used()) if part]
        return f"[{', '.join(parts)}] " if parts else ""

    def trial_started(self, number: int, params: Mapping[str, Any]) -> None:
        self.running[number] = "starting"

    def evaluated(self, number: int, step: int, steps: int, dev_loss: float) -> None:
        self.running[number] = f"step {step}/{steps} dev {dev_loss:.4f}"
        self.status(self.header() + "  ".join(f"trial {n}: {text}"
                                              for n, text in sorted(self.running.items())))

    def trial_finished(self, trial: TrialRecord, done: int, total: int,
                       best: float | None) -> None:
        self.running.pop(trial.number, None)
        loss = trial.best_dev_loss
        figure = f"best dev {loss:.4f} at step {trial.best_step}" if loss else ""
        if trial.state.name == "FAIL":
            figure = trial.fail_reason or "failed"
        if trial.infeasible:
            figure = f"infeasible: {trial.infeasible}" + ("" if loss else ", not trained")
        took = f"  ({trial.duration_s:.1f} s)" if trial.duration_s else ""
        best_text = f"{best:.4f}" if best is not None else "-"
        self.tally = f"{done}/{total} trials, best {best_text}"
        used = self.budget_used()
        self.line(f"[{done}/{total}] trial {trial.number:>3} {trial.state.name:<8} "
                  f"{figure}{took}  best so far {best_text}" + (f"  ({used})" if used else ""))

    # -- finalize

    def picked(self, trial: TrialRecord, front: Sequence[TrialRecord], rule: PickRule) -> None:
        self.picked_by = rule
        self.line(f"Pareto front: {len(front)} trials; finalize.pick {rule.as_written()}: "
                  f"{describe_pick(rule)}\n  -> trial {trial.number}: dev {trial.value:.4f}, "
                  f"{pareto.cost(trial, rule.metric):,.0f} {pareto.UNITS[rule.metric]}")

    def resuming(self, evaluations: int) -> None:
        self.line(f"finalize: publishing the result its interrupted finalize recorded (test "
                  f"evaluation {evaluations}); the test split is not read again")

    def retrainings_planned(self, jobs: Sequence[Retraining], processes: int) -> None:
        trials = dict.fromkeys(f"trial {j.trial}: {j.steps} steps" for j in jobs)
        how = ("chosen on mean dev loss" if len(trials) > 1 else
               "the trial picked from the front" if self.picked_by else
               "one candidate (finalize.top_k 1): nothing to choose between")
        self.line(f"finalizing: {len(jobs)} retrainings on {processes} process(es), "
                  f"{', '.join(trials)}; {how}, then the test split, once")

    def filling(self, jobs: Sequence[Retraining], processes: int, left_s: float) -> None:
        self.line(f"finalize.fill: {left_s / 60:.0f} min left of budget.wall_time: "
                  f"{len(jobs)} more seed(s) of trial {jobs[0].trial} on {processes} "
                  f"process(es), {jobs[0].steps} steps each; each joins the ensemble if it "
                  "lowers its dev loss")

    def retraining_evaluated(self, job: Retraining, step: int, dev_loss: float) -> None:
        self.status(f"trial {job.trial}, seed {job.seed}: step {step}/{job.steps}, "
                    f"dev {dev_loss:.4f}")

    def retraining_done(self, job: Retraining, dev_loss: float, done: int, total: int) -> None:
        self.line(f"[{done}/{total}] trial {job.trial}, seed {job.seed}: best dev {dev_loss:.4f}")
