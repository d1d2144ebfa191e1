"""What a trial is in the study's storage: one typed record, the counting rules, the reaper.

The harness keeps its own facts about a trial (its full config, its worker, its MLflow run, its
figures) as Optuna user attrs. This module is the only one that reads or writes them by key:
everything else reads a `TrialRecord`.

Counting: `budget.n_trials` counts finished trials (complete, pruned, failed), less those that
failed with their worker and were re-queued (the retry counts instead), less surplus trials (a
worker that started a trial when the others had already started the last one: it ends at once,
never trained), less warm-start trials (an earlier study's, added when this one was created:
they inform the sampler and rank on the leaderboard, but cost this study nothing). Running
trials count as taken when deciding whether to start another.
"""

from __future__ import annotations

import dataclasses
import datetime
import logging
import math
import os
import socket
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from harness import storage
from harness.paths import pid_alive

log = logging.getLogger(__name__)

# Trials that use up the budget: n_trials counts these, across resumes.
COUNTED_STATES = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)

# Optuna's retry callback records these system attrs on a re-queued trial.
_RETRY_HISTORY, _FAILED_TRIAL = "retry_history", "failed_trial"


@dataclass(frozen=True)
class TrialRecord:
    """A trial as the harness records it: Optuna's own fields, then the harness's attrs.

    Fields after `retry_of` are stored as Optuna user attrs (`to_attrs`); None means unset.
    """

    number: int = -1
    state: TrialState = TrialState.RUNNING
    value: float | None = None  # best dev loss (the first objective in Pareto mode too)
    params: Mapping[str, Any] = field(default_factory=dict)
    intermediate: Mapping[int, float] = field(default_factory=dict)  # step -> dev loss
    started: datetime.datetime | None = None
    completed: datetime.datetime | None = None
    retry_history: tuple[int, ...] = ()  # numbers of the failed trials this one retries
    retry_of: int | None = None  # the failed trial this one re-runs
    # -- the harness's attrs --
    config: Mapping[str, Any] | None = None  # every hyperparameter the trial trained with
    worker: str | None = None  # host:pid:device
    mlflow_run_id: str | None = None
    best_dev_loss: float | None = None
    best_step: int | None = None
    last_dev_loss: float | None = None
    steps: int | None = None  # optimizer steps run
    n_params: int | None = None
    steps_per_sec: float | None = None
    ms_per_name: float | None = None  # measured only when a constraint bounds it
    train_s: float | None = None
    fail_reason: str | None = None
    surplus: bool = False  # started beyond n_trials: never trained, not counted
    resumed_from_step: int | None = None  # a retry that continued its chain's checkpoint
    checkpoint_step: int | None = None  # the step of the trial's latest checkpoint
    checkpoint_s: float | None = None  # seconds spent saving checkpoints
    warm_from: str | None = None  # "<study>#<trial>": a trial of an earlier study (warm_start)
    threads: int | None = None  # the worker's torch threads (CPU results depend on them)
    # objective.constraints: how far each measured figure lies outside its bound (<= 0: within),
    # in the spec's order, and why the trial is infeasible (None: it is not)
    violations: Sequence[float] | None = None
    infeasible: str | None = None
    commit: str | None = None  # the worker's harness git commit
    # Pareto mode: the dev-loss curve, [[step, loss], ...] (Optuna keeps intermediate values
    # for one objective only); read back as `intermediate`
    dev_curve: Sequence[Sequence[float]] | None = None
    # Seconds per phase of the trial: sample (the sampler), setup (data, config checks),
    # tracking (MLflow), storage (Optuna records, the pruner), train, eval, checkpoints
    times: Mapping[str, float] | None = None

    def to_attrs(self) -> dict[str, Any]:
        """The harness's attrs that are set, as Optuna user attrs."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)
                if f.name in _ATTR_NAMES and getattr(self, f.name) not in (None, False)}

    @classmethod
    def from_trial(cls, t: FrozenTrial) -> TrialRecord:
        attrs = {k: v for k, v in t.user_attrs.items() if k in _ATTR_NAMES}
        # Dev loss is the first objective in Pareto mode too (spec.ObjectiveSpec.directions).
        curve = dict(t.intermediate_values) or {int(s): v for s, v in attrs.get("dev_curve", ())}
        return cls(number=t.number, state=t.state, value=t.values[0] if t.values else None,
                   params=dict(t.params), intermediate=curve, started=t.datetime_start,
                   completed=t.datetime_complete,
                   retry_history=tuple(t.system_attrs.get(_RETRY_HISTORY, ())),
                   retry_of=t.system_attrs.get(_FAILED_TRIAL), **attrs)

    @property
    def duration_s(self) -> float | None:
        if self.started and self.completed:
            return (self.completed - self.started).total_seconds()
        return None

    @property
    def hparams(self) -> Mapping[str, Any]:
        """Every hyperparameter: the recorded config, else what Optuna sampled."""
        return self.config or self.params

    @property
    def best(self) -> float | None:
        """Best dev loss: the value of a complete trial, else the best evaluation seen."""
        if self.state == TrialState.COMPLETE and self.value is not None:
            return self.value
        if self.best_dev_loss is not None:
            return self.best_dev_loss
        return min(self.intermediate.values(), default=None)

    @property
    def feasible(self) -> bool:
        """Within every constraint of the study's objective (a trial without any is)."""
        return self.infeasible is None

    @property
    def origin(self) -> int:
        """The first trial of this one's chain of retries (itself when it is no retry): the
        chain shares one checkpoint."""
        return self.retry_of if self.retry_of is not None else self.number

    @property
    def pid(self) -> int | None:
        """The worker's process id, from host:pid:device."""
        part = (self.worker or "").split(":")
        return int(part[1]) if len(part) > 1 and part[1].isdigit() else None


# Optuna's own fields of the record; every other field is one of the harness's attrs.
_OPTUNA_FIELDS = ("number", "state", "value", "params", "intermediate", "started", "completed",
                  "retry_history", "retry_of")
_ATTR_NAMES = frozenset(f.name for f in dataclasses.fields(TrialRecord)) - set(_OPTUNA_FIELDS)


def write(trial: optuna.Trial, record: TrialRecord) -> None:
    """Store the attrs set in `record` on a running trial (the others are left as they are)."""
    for key, value in record.to_attrs().items():
        trial.set_user_attr(key, value)


def current(trial: optuna.Trial) -> TrialRecord:
    """A running trial as the storage has it now."""
    return TrialRecord.from_trial(storage.frozen(trial))


def records(study: optuna.Study) -> list[TrialRecord]:
    """Every trial of the study, surplus ones included."""
    return [TrialRecord.from_trial(t) for t in study.get_trials(deepcopy=False)]


def search_records(study: optuna.Study) -> list[TrialRecord]:
    """The study's trials less the surplus ones: what a leaderboard or a summary shows."""
    return [r for r in records(study) if not r.surplus]


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


def best_value(recs: Sequence[TrialRecord]) -> float | None:
    """The best feasible complete trial's value, or None."""
    return min((r.value for r in recs if r.state == TrialState.COMPLETE and r.value is not None
                and r.feasible), default=None)



def stalled(recs: Sequence[TrialRecord], patience: int, min_delta: float) -> str | None:
    """Why the study should start no more trials: its best dev loss did not improve by
    `min_delta` over its last `patience` complete trials (by the time they ended); else None."""
    complete = sorted((r for r in recs if r.state == TrialState.COMPLETE
                       and r.value is not None and r.completed is not None),
                      key=lambda r: r.completed)
    if len(complete) <= patience:
        return None
    before = min(r.value for r in complete[:-patience])
    recent = min(r.value for r in complete[-patience:])
    if recent > before - min_delta:
        return (f"no improvement by {min_delta:g} over the last {patience} complete trials "
                f"(best {before:.4f} before them, {recent:.4f} among them)")
    return None


# Finalize's seconds besides its retrainings: processes, the test split, samples, figures, records.
FINAL_OVERHEAD_S = 60.0


def out_of_wall_time(recs: Sequence[TrialRecord], now: float, end: float, *, steps: int,
                     final_rounds: int, top_k: int | None,
                     retraining_s: Callable[[float], float]) -> str | None:
    """Why no new trial should start under budget.wall_time, or None.

    A new trial may take as long as the slowest trial so far would take for the full `steps`
    (a pruned trial's seconds scaled up); then finalize runs `final_rounds` rounds of
    retrainings, each as long as `retraining_s(its trial's full-length seconds)`, for the
    `top_k` best complete trials (None: any complete trial, as in Pareto mode). When that
    would end after `end` (epoch seconds), the reason is returned. None before any trial has
    finished: there is nothing to go by yet."""
    # (dev loss, seconds scaled to `steps`, complete and feasible) of the trials run here
    done = sorted((r.value if r.value is not None else math.inf,
                   r.duration_s * steps / r.steps,
                   r.state == TrialState.COMPLETE and r.feasible)
                  for r in recs if r.state in (TrialState.COMPLETE, TrialState.PRUNED)
                  and r.steps and r.duration_s and not r.warm_from)
    if not done:
        return None
    trial_s = max(seconds for _, seconds, _ in done)
    final_s = 0.0
    if final_rounds:
        candidates = [seconds for _, seconds, ok in done if ok]
        candidates = candidates[:top_k] if top_k else candidates
        final_s = (final_rounds * max(map(retraining_s, candidates or [trial_s]))
                   + FINAL_OVERHEAD_S)
    over = now + trial_s + final_s - end
    if over <= 0:
        return None
    return (f"one more trial (up to {trial_s:.0f} s) and the final model (about {final_s:.0f} s) "
            f"would end {over:.0f} s past budget.wall_time")


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
    complete = [r for r in shown if r.state == TrialState.COMPLETE and r.value is not None
                and r.feasible]
    best = min(complete, key=lambda r: r.value, default=None)
    return StudyStatus(states, counted(recs), len(shown) - len(own), best,
                       tuple(r for r in shown if r.state == TrialState.RUNNING))


def worker_id(device: str) -> str:
    """host:pid:device, recorded on each trial."""
    return f"{socket.gethostname()}:{os.getpid()}:{device}"


# ---------------------------------------------------------------------------------------------
# Lost trials: failed, their MLflow run closed, their params re-queued

CloseRun = Callable[[str], None]  # closes an MLflow run as FAILED


def fail(study: optuna.Study, number: int, reason: str) -> bool:
    """Fail a RUNNING trial from outside its worker (compare-and-set: False if it had ended)."""
    trial_id = storage.trial_id(study, number)
    try:
        storage.of(study).set_trial_user_attr(trial_id, "fail_reason", reason)
        return storage.of(study).set_trial_state_values(trial_id, TrialState.FAIL)
    except optuna.exceptions.UpdateFinishedTrialError:
        return False  # another process failed or finished it first


def retry(study: optuna.Study, number: int, max_retry: int, close_run: CloseRun | None) -> None:
    """Close a failed trial's MLflow run (unless `close_run` is None: the tracking server is
    gone) and re-queue its params (up to `max_retry` times)."""
    frozen = study.get_trials(deepcopy=False)[number]
    run_id = TrialRecord.from_trial(frozen).mlflow_run_id
    if run_id and close_run is not None:
        try:
            close_run(run_id)
        except Exception as exc:  # the run may be gone; the trial must still be re-queued
            log.warning("could not close the MLflow run %s of trial %d: %s", run_id, number,
                        exc)
    storage.requeue(study, frozen, max_retry)
    log.warning("trial %d lost its worker; re-queued", number)


def reap_dead(study: optuna.Study, max_retry: int, close_run: CloseRun) -> list[int]:
    """Fail and re-queue RUNNING trials whose worker process on this host is gone.

    The journal storage has no heartbeats; a trial records host:pid, so on its own host the
    harness can tell that its process died.
    """
    reaped = []
    host = socket.gethostname()
    recs = records(study)
    for r in recs:
        if r.state != TrialState.RUNNING or not r.worker:
            continue
        # A retry starts with its failed predecessor's user attrs (Optuna's retry callback
        # copies them): until its worker records itself, "worker" names the dead one.
        if r.retry_history and r.worker == recs[r.retry_history[-1]].worker:
            continue
        if r.worker.partition(":")[0] != host or not r.pid or pid_alive(r.pid):
            continue
        if fail(study, r.number, f"worker process {r.pid} is gone"):
            retry(study, r.number, max_retry, close_run)
            reaped.append(r.number)
    return reaped


# ---------------------------------------------------------------------------------------------
# The workers of a study: each registers itself, so a joining worker can share the cores

_WORKER_PREFIX = "worker:"  # study user attr worker:<host>:<pid> -> {"threads": n, "since": t}


def register_worker(study: optuna.Study, threads: int) -> None:
    """Record this process as a worker of the study, with its torch threads."""
    key = f"{_WORKER_PREFIX}{socket.gethostname()}:{os.getpid()}"
    study.set_user_attr(key, {"threads": threads, "since": time.time()})


def local_workers(study: optuna.Study) -> int:
    """Live workers of the study on this host, this process aside."""
    host = socket.gethostname()
    live = 0
    for key in study.user_attrs:
        w_host, _, pid = key.removeprefix(_WORKER_PREFIX).rpartition(":")
        if key.startswith(_WORKER_PREFIX) and w_host == host and pid.isdigit():
            live += int(pid) != os.getpid() and pid_alive(int(pid))
    return live


