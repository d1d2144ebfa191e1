"""What a study and its trials are in the storage: one typed record each.

The harness keeps its own facts about a trial (its full config, its worker, its MLflow run, its
figures) as Optuna user attrs, and what a study was created with (`StudyRecord`) as the study's
user attrs, so that every process that joins agrees on it. This module is the only one that
reads or writes them by key: everything else reads a `TrialRecord` or a `StudyRecord`.
"""

from __future__ import annotations

import dataclasses
import datetime
import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from harness.errors import StudyNotFound
from harness.search import storage

_RECORD_ATTR = "harness"  # the study user attr that holds its StudyRecord
_FINAL_ATTR = "final"  # the study user attr that holds the final result
_STOPPED_ATTR = "stopped"  # why the study stopped early (budget.patience), or None
WAIT_FOR_RECORD_S = 120.0  # how long a joining process waits for the creator to record


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
        # Dev loss is the first objective in Pareto mode too (ObjectiveSpec.directions).
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
    def loss(self) -> float:
        """The value (best dev loss) of a complete trial; inf for a trial without one."""
        return self.value if self.value is not None else math.inf

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

# ---------------------------------------------------------------------------------------------
# The study


@dataclass(frozen=True)
class StudyRecord:
    """Recorded in the study when it is created; the budget again by each run-study."""

    identity: str  # unique across storages: names the study's MLflow parent run
    parent_run_id: str  # the study's MLflow run
    n_trials: int  # the study's total, across workers and resumes
    timeout: float | None  # seconds after timeout_start: no new trials
    timeout_start: float  # epoch seconds: when the last run-study started
    created: float  # epoch seconds
    patience_trials: int | None = None  # budget.patience: stop after this many without gain
    patience_min_delta: float = 0.0
    wall_time: float | None = None  # budget.wall_time: seconds after timeout_start, all told
    final_rounds: int = 0  # rounds of retrainings the run-study's finalize will run (0: none)
    warm_from: str | None = None  # warm_start: the earlier study
    warm_trials: int = 0  # its trials added to this one
    warm_skipped: int = 0  # its trials that did not fit this study
    # fixed.precision auto: the precision every trial trains in, measured by the process that
    # created the study (harness.training.precision), and its ms per step of the largest model
    # in each
    precision: str | None = None
    precision_ms: dict[str, float] | None = None
    # The data it was created on (harness.search.data_guard): its fingerprint, and the changes
    # accepted since; None for a study of an earlier harness, which recorded none.
    data: dict[str, Any] | None = None

    @property
    def deadline(self) -> float | None:
        """Epoch seconds after which no new trial starts, or None."""
        return None if self.timeout is None else self.timeout_start + self.timeout


def write_record(study: optuna.Study, record: StudyRecord) -> None:
    study.set_user_attr(_RECORD_ATTR, dataclasses.asdict(record))


def read_record(study: optuna.Study) -> StudyRecord | None:
    raw = study.user_attrs.get(_RECORD_ATTR)
    return StudyRecord(**raw) if raw else None


def write_stopped(study: optuna.Study, reason: str | None) -> None:
    """Why the study stopped starting trials before its budget (None: it did not)."""
    study.set_user_attr(_STOPPED_ATTR, reason)


def read_stopped(study: optuna.Study) -> str | None:
    return study.user_attrs.get(_STOPPED_ATTR)


def write_final(study: optuna.Study, result: dict[str, Any]) -> None:
    """Store the final model's result (harness.final.FinalResult as a dict) in the study."""
    study.set_user_attr(_FINAL_ATTR, result)


def read_final(study: optuna.Study) -> dict[str, Any] | None:
    return study.user_attrs.get(_FINAL_ATTR)


def wait_for_record(study: optuna.Study, timeout_s: float = WAIT_FOR_RECORD_S) -> StudyRecord:
    """The record another process is writing as it creates the study."""
    deadline = time.monotonic() + timeout_s
    while (record := read_record(study)) is None:
        if time.monotonic() > deadline:
            raise StudyNotFound(f"study {study.study_name!r} exists but its creator never "
                                "recorded it (it may have died while creating it); run "
                                "`harness run-study` again")
        time.sleep(0.25)
    return record
