"""The study's Optuna storage: opening it, finding a study, and Optuna's private members.

- `open_storage`: a database URL (PostgreSQL; heartbeats on) or the embedded journal file,
  checked for damage before anything is written to it (harness.search.journal).
- `load_study`: a study file's existing study; `open_study_storage`: its storage, a database
  one re-queueing the trials of workers that stop beating (`on_stale`).
- Optuna keeps a study's storage and a trial's id private; `of` and `trial_id` are the one place
  that reaches them (the harness fails other processes' trials and beats their hearts).
"""

from __future__ import annotations

import contextlib
import logging
import warnings
from collections.abc import Callable, Iterator
from typing import Any

import optuna
from optuna.storages._heartbeat import BaseHeartbeat  # private: heartbeats' interface
from optuna.storages.journal import JournalFileBackend, JournalFileOpenLock
from optuna.trial import FrozenTrial

from harness.config import StudySpec
from harness.errors import StorageError, StudyNotFound
from harness.search import journal
from harness.util import paths
from harness.util.processes import every
from harness.util.redact import redact

log = logging.getLogger(__name__)

# Called with a trial whose worker stopped beating (database storages): re-queues it.
OnStale = Callable[[optuna.Study, FrozenTrial], None]


def open_storage(url: str | None, *, heartbeat_s: int = 60,
                 on_stale: OnStale | None = None,
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
    if not path.exists():
        paths.require_writable(path.parent)
        path.parent.mkdir(parents=True, exist_ok=True)
    # The journal file is safe for several processes on one machine (file lock), unlike SQLite.
    lock = JournalFileOpenLock(str(path))
    # A read-only copy of a finished study is read as it is: no lock file, no repair.
    journal.check(path, lock, repair=paths.writable(path.parent) and paths.writable(path))
    backend = JournalFileBackend(str(path), lock_obj=lock)
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


def open_study_storage(spec: StudySpec, on_stale: OnStale | None = None,
                       ) -> optuna.storages.BaseStorage:
    """The storage of a study file; a database one calls `on_stale` for stale trials."""
    return open_storage(spec.storage, heartbeat_s=spec.workers.heartbeat_s, on_stale=on_stale)


def load_study(spec: StudySpec, on_stale: OnStale | None = None) -> optuna.Study:
    """The existing study of a spec (no sampler or pruner needed). Raises StudyNotFound."""
    return load(spec.storage, spec.name, heartbeat_s=spec.workers.heartbeat_s,
                on_stale=on_stale)


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
    assert isinstance(s, BaseHeartbeat)  # a database storage (cached by Optuna)

    def beat() -> None:
        try:
            s.record_heartbeat(tid)
        except Exception:  # a missed beat is what the grace period is for
            log.warning("could not record the heartbeat of trial %d", trial.number)

    with every(float(s.get_heartbeat_interval() or 60), beat, f"heartbeat-{trial.number}"):
        yield
