"""The study's Optuna storage: opening it, finding a study, claims, and what a study was made with.

- `open_storage`: a database URL (PostgreSQL; heartbeats on) or the embedded journal file,
  checked for damage before anything is written to it (harness.journal).
- Claims: a compare-and-set in the storage itself. Every Optuna storage numbers new trials in
  one order for all processes (a database transaction, one ordered log in the journal), so a
  claim is a finished trial created in one ledger study per storage (`harness-claims`), and
  of several processes that take the same key, the one with the lowest trial number wins.
  Counters (sampler seeds, test evaluations) are the ranks of the takes of one key; a value
  is settled by storing it with a take, the first take's value being the one every caller gets.
- `StudyRecord`: what the study was created with (its identity, budget, timeout start, parent
  MLflow run), kept in the study's own attrs so that every process that joins agrees on it.
- Optuna keeps a study's storage and a trial's id private; `of` and `trial_id` are the one place
  that reaches them (the harness fails other processes' trials and beats their hearts).
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import threading
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import optuna
from optuna.study import StudyDirection
from optuna.trial import FrozenTrial, TrialState

from harness import journal, paths
from harness.redact import redact

log = logging.getLogger(__name__)

LEDGER = "harness-claims"  # one study per storage that holds every study's claims
CLAIM_SEP = "::"  # <study>::<key> names a claim
_CLAIM_ATTR = "claim"
_VALUE_ATTR = "value"  # what a take of `settle` proposed
_RECORD_ATTR = "harness"  # the study user attr that holds its StudyRecord
_FINAL_ATTR = "final"  # the study user attr that holds the final result
_STOPPED_ATTR = "stopped"  # why the study stopped early (budget.patience), or None
WAIT_FOR_RECORD_S = 120.0  # how long a joining process waits for the creator to record


class StudyNotFound(LookupError):
    """The study file's study has not been run yet (nothing in its storage)."""


class StorageError(RuntimeError):
    """The Optuna storage cannot be opened (unreachable or misspelled URL)."""


# ---------------------------------------------------------------------------------------------
# Opening


def open_storage(url: str | None, *, heartbeat_s: int = 60,
                 on_stale: Callable[[optuna.Study, FrozenTrial], None] | None = None,
                 ) -> optuna.storages.BaseStorage:
    """A database storage at `url`, else the embedded journal file (checked for damage first).

    A database storage gets Optuna's heartbeats: a trial whose worker misses them for twice
    the interval (Optuna's documented 60 s / 120 s) is failed, and `on_stale` re-queues it.
    """
    if url:
        try:
            with warnings.catch_warnings():  # heartbeats and their callback: "experimental"
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                return optuna.storages.RDBStorage(
                    url, heartbeat_interval=heartbeat_s, grace_period=2 * heartbeat_s,
                    heartbeat_stale_trial_callback=on_stale)
        except Exception as exc:  # SQLAlchemy raises many kinds for a bad or dead URL
            reason = str(getattr(exc, "orig", None) or exc).strip().splitlines()[0]
            raise StorageError(f"cannot open the Optuna storage {redact(url)}: "
                               f"{redact(reason)}") from None
    path = paths.journal_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    # The journal file is safe for several processes on one machine (file lock), unlike SQLite.
    lock = optuna.storages.journal.JournalFileOpenLock(str(path))
    journal.check(path, lock)
    backend = optuna.storages.journal.JournalFileBackend(str(path), lock_obj=lock)
    return optuna.storages.JournalStorage(backend)


def describe(url: str | None) -> str:
    """The storage as a person reads it (credentials masked)."""
    return redact(url) if url else str(paths.journal_path())


def load(url: str | None, name: str, **storage_options: Any) -> optuna.Study:
    """The existing study `name` (creates nothing when it does not exist). Raises
    StudyNotFound."""
    missing = StudyNotFound(f"study {name!r} has not been run yet (storage: {describe(url)})")
    if not url and not paths.journal_path().exists():
        raise missing
    opened = open_storage(url, **storage_options)
    if name not in {s.study_name for s in opened.get_all_studies()}:
        raise missing
    return optuna.load_study(study_name=name, storage=opened)


# ---------------------------------------------------------------------------------------------
# Claims: compare-and-set in the storage


def claim(study: optuna.Study, key: str) -> bool:
    """Take the claim `key` on `study`: True for exactly one of any number of racing callers."""
    return _take(study, key) == 0


def count(study: optuna.Study, key: str) -> int:
    """How often `key` was taken on `study` (claimed, or a counter drawn)."""
    s, ledger = _ledger(study)
    name = f"{study.study_name}{CLAIM_SEP}{key}"
    return sum(t.user_attrs.get(_CLAIM_ATTR) == name
               for t in s.get_all_trials(ledger, deepcopy=False))


def next_number(study: optuna.Study, counter: str) -> int:
    """A counter in the storage: 0, 1, 2, ... each number handed to one caller only."""
    return _take(study, counter)


def settle(study: optuna.Study, key: str, value: Any) -> Any:
    """Propose `value` (JSON-serializable) for `key` on `study` and return the first value
    proposed for it: any number of racing callers all get one value, whoever proposed it."""
    _, takes = _takes(study, key, {_VALUE_ATTR: value})
    return takes[0].user_attrs[_VALUE_ATTR]


def _take(study: optuna.Study, key: str) -> int:
    """Record a take of `key` and return its rank among all takes of `key`."""
    mine, takes = _takes(study, key)
    return [t.number for t in takes].index(mine)


def _takes(study: optuna.Study, key: str,
           attrs: dict[str, Any] | None = None) -> tuple[int, list[FrozenTrial]]:
    """Record a take of `key` in the ledger (one atomic trial creation, holding `attrs`) and
    return its trial number and every take of `key` so far in number order: the storage hands
    out trial numbers in one order to every process."""
    s, ledger = _ledger(study)
    name = f"{study.study_name}{CLAIM_SEP}{key}"
    template = optuna.trial.create_trial(state=TrialState.COMPLETE, value=0.0,
                                         user_attrs={_CLAIM_ATTR: name, **(attrs or {})})
    mine = s.get_trial_number_from_id(s.create_new_trial(ledger, template_trial=template))
    takes = sorted((t for t in s.get_all_trials(ledger, deepcopy=False)
                    if t.user_attrs.get(_CLAIM_ATTR) == name), key=lambda t: t.number)
    return mine, takes


def _ledger(study: optuna.Study) -> tuple[optuna.storages.BaseStorage, int]:
    """The storage's ledger study (created by the first process that needs it) and its id."""
    s = of(study)
    try:
        return s, s.get_study_id_from_name(LEDGER)
    except KeyError:
        pass
    try:
        return s, s.create_new_study([StudyDirection.MINIMIZE], LEDGER)
    except optuna.exceptions.DuplicatedStudyError:  # created by another process meanwhile
        return s, s.get_study_id_from_name(LEDGER)


# ---------------------------------------------------------------------------------------------
# What the study was created with


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
    # created the study (harness.precision), and its ms per step of the largest model in each
    precision: str | None = None
    precision_ms: dict[str, float] | None = None

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


# ---------------------------------------------------------------------------------------------
# Optuna's private parts, reached here only


def of(study: optuna.Study) -> optuna.storages.BaseStorage:
    """The study's storage object (Optuna keeps it private; no public accessor exists)."""
    return study._storage


def trial_id(study: optuna.Study, number: int) -> int:
    """The storage id of trial `number` (private in Optuna; needed to change another
    process's trial, as Optuna's own stale-trial handling does)."""
    return study.get_trials(deepcopy=False)[number]._trial_id


def frozen(trial: optuna.Trial) -> FrozenTrial:
    """A running trial as the storage has it now (another process may have failed it)."""
    return trial.study._storage.get_trial(trial._trial_id)


def trial_state(trial: optuna.Trial) -> optuna.trial.TrialState:
    """A running trial's state as the storage has it now (another process may have failed it)."""
    return frozen(trial).state


def requeue(study: optuna.Study, trial: FrozenTrial, max_retry: int) -> None:
    """Re-queue a failed trial's params as Optuna's heartbeat retry does (retry_history)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=max_retry)(study, trial)


def heartbeats(study: optuna.Study) -> bool:
    """Whether the study's storage records heartbeats (a database storage does)."""
    interval = getattr(of(study), "get_heartbeat_interval", None)  # RDB storages have one
    return bool(interval and interval())


def fail_stale(study: optuna.Study) -> None:
    """Fail the trials whose workers stopped beating (database storages; the storage's
    stale-trial callback re-queues them). A no-op for the journal, which has no heartbeats."""
    if heartbeats(study):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            optuna.storages.fail_stale_trials(study)


@contextlib.contextmanager
def heartbeat(study: optuna.Study, trial: optuna.Trial) -> Iterator[None]:
    """Beat for `trial` every heartbeat interval while the block runs (database storages)."""
    if not heartbeats(study):
        yield
        return
    s, tid = of(study), trial._trial_id
    interval = s.get_heartbeat_interval()
    stop = threading.Event()

    def beat() -> None:
        while True:
            try:
                s.record_heartbeat(tid)
            except Exception:  # a missed beat is what the grace period is for
                log.warning("could not record the heartbeat of trial %d", trial.number)
            if stop.wait(interval):
                return

    thread = threading.Thread(target=beat, name=f"heartbeat-{trial.number}", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()
