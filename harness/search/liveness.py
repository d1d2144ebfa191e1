"""Which workers live, and what becomes of the trials of those that died.

A trial records its worker as host:pid:device. On its own host the harness can tell that the
process died (the journal storage has no heartbeats): such a trial is failed, its MLflow run
closed, and its params re-queued (`reap`). A database storage's heartbeats find the stale
trials of workers on any machine (`RetryStale`). Each worker also registers itself in the
study, so that a worker joining on the same host can share the cores (`local_workers`).
"""

from __future__ import annotations

import logging
import os
import socket
import time
from collections.abc import Callable

import optuna
from optuna.trial import FrozenTrial, TrialState

from harness.config import StudySpec
from harness.search import storage
from harness.search.records import TrialRecord, records
from harness.tracking import FAILED, open_tracker
from harness.util.processes import pid_alive

log = logging.getLogger(__name__)


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


# ---------------------------------------------------------------------------------------------
# For a study file


def close_run_failed(spec: StudySpec) -> CloseRun:
    """A callback that closes a lost trial's MLflow run as FAILED."""
    return lambda run_id: open_tracker(spec).end_run(run_id, FAILED)


def reap(spec: StudySpec, study: optuna.Study) -> list[int]:
    """Fail and re-queue the running trials of dead worker processes on this host."""
    return reap_dead(study, spec.workers.max_retry, close_run_failed(spec))


class RetryStale:
    """Optuna's heartbeat callback for database storages: re-queue the stale trial (picklable)."""

    def __init__(self, spec: StudySpec) -> None:
        self.spec = spec

    def __call__(self, study: optuna.Study, trial: FrozenTrial) -> None:
        retry(study, trial.number, self.spec.workers.max_retry, close_run_failed(self.spec))


def load_study(spec: StudySpec) -> optuna.Study:
    """The existing study of a spec, its stale trials re-queued. Raises StudyNotFound."""
    return storage.load_study(spec, on_stale=RetryStale(spec))


def open_study_storage(spec: StudySpec) -> optuna.storages.BaseStorage:
    """The study's storage; a database one re-queues the trials of workers that stop beating."""
    return storage.open_study_storage(spec, on_stale=RetryStale(spec))
