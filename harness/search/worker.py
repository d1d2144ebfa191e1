"""One worker's trial loop: ask the sampler for a trial, run the objective, tell the outcome,
until a stop rule says the study has what it needs.

This is one worker, local or on another machine; `harness.search.local` runs several in spawned
processes. The test split is sealed for the whole loop: no trial can read it, even by mistake.
"""

from __future__ import annotations

import contextlib
import logging
import socket
import time
import warnings
from collections.abc import Collection

import optuna
import torch
from optuna.trial import TrialState

from harness.config import StudySpec
from harness.errors import TrackingError, TrialLost
from harness.search import claims, counting, liveness, records, stops, storage
from harness.search.checkpoints import open_checkpoints
from harness.search.create import join_study, resolved
from harness.search.events import SearchObserver
from harness.search.objective import REQUEUED_FAULTS, TRIAL_FAULTS, Objective, fail_reason
from harness.search.records import TrialRecord
from harness.search.samplers import build_pruner, build_sampler
from harness.tracking import open_tracker
from harness.training.data import sealed_test_split
from harness.util.processes import threads_per_worker

log = logging.getLogger(__name__)


def work(spec: StudySpec, *, observer: SearchObserver | None = None, device: str = "cpu",
         threads: int | None = None, explicit: Collection[str] = (),
         allow_data_change: bool = False) -> None:
    """Run trials of an existing study until it has its recorded n_trials (all workers
    together) or its recorded timeout has passed.

    This is one worker, local or on another machine. Its sampler seed offset is drawn from a
    counter in the storage, so no two processes (workers, resumes) propose the same trials.
    `threads` torch threads (default: choose_threads). Raises TrackingError when the tracking
    server stays unreachable (the trial it was running is re-queued).
    """
    study, record = join_study(spec, explicit, allow_data_change)
    spec = resolved(spec, record.precision)  # every worker trains in the study's precision
    torch.set_num_threads(threads or choose_threads(spec, study)[0])
    liveness.register_worker(study, torch.get_num_threads())
    study.sampler = build_sampler(spec, seed_offset=1000 * claims.next_number(study, "sampler"))
    study.pruner = build_pruner(spec)
    tracker = open_tracker(spec)
    host = socket.gethostname()
    tracker.set_tags(record.parent_run_id, {  # every host that worked on the study
        f"harness.worker_host.{host}": f"{torch.get_num_threads()} threads, {device}"})
    objective = Objective(spec, tracker, record, observer, device,
                          open_checkpoints(spec, tracker, record.parent_run_id))
    recs = records.records(study)
    if observer:
        observer.search_started(record)
    rules = stops.for_study(spec, record)
    with sealed_test_split():  # no trial can read the test split, even by mistake
        while (stop := stops.first(rules, recs, time.time())) is None:
            number = _run_trial(spec, study, objective)
            recs = records.records(study)
            if observer and number is not None and not recs[number].surplus:
                observer.trial_finished(recs[number], counting.counted(recs), record.n_trials,
                                        counting.best_value(recs))
    rule, reason = stop
    if rule.recorded:
        records.write_stopped(study, reason)
    log.info("%s; no new trials", reason)


def _run_trial(spec: StudySpec, study: optuna.Study, objective: Objective) -> int | None:
    """Ask for a trial, run the objective with heartbeats, tell its outcome. Returns the
    finished trial's number; None when another process took the trial over."""
    storage.fail_stale(study)  # as study.optimize does before each trial
    with warnings.catch_warnings():  # Optuna warns that only study.optimize beats: this does
        warnings.filterwarnings("ignore", "Heartbeat of storage", UserWarning)
        asked = time.perf_counter()
        trial = study.ask()  # the sampler's joint (multivariate) sampling happens here
        asked = time.perf_counter() - asked
    value, state = None, TrialState.FAIL
    origin = records.current(trial).origin
    with storage.heartbeat(study, trial):
        try:
            value, state = objective(trial, origin, asked), TrialState.COMPLETE
        except optuna.TrialPruned:
            state = TrialState.PRUNED
        except TrialLost as exc:
            log.warning("%s", exc)
            return None  # failed and re-queued by the process that found it stale
        except TRIAL_FAULTS as exc:  # failed, with its reason; the study goes on
            with contextlib.suppress(optuna.exceptions.UpdateFinishedTrialError):
                if records.current(trial).fail_reason is None:  # failed before its run began
                    records.write(trial, TrialRecord(fail_reason=fail_reason(exc)))
        except BaseException as exc:
            _fail_and_requeue(spec, study, trial, exc)
            if isinstance(exc, TrackingError):
                raise TrackingError(f"{exc}; trial {trial.number} was re-queued: run the "
                                    "command again once the tracking store is back") from None
            raise
    if not spec.budget.keep_checkpoints:  # ended for good (a re-queued trial keeps its own)
        objective.checkpoints.delete(origin)
    try:
        study.tell(trial, value, state=state, skip_if_finished=True)
    except RuntimeError:
        # The grid sampler calls study.stop() once its grid is covered, which only works
        # inside study.optimize; the trial is stored by then, and n_trials decides the end.
        if not isinstance(study.sampler, optuna.samplers.GridSampler):
            raise
    return trial.number


def _fail_and_requeue(spec: StudySpec, study: optuna.Study, trial: optuna.Trial,
                      exc: BaseException) -> None:
    """Fail a trial that its worker cannot finish; re-queue it when the fault was not the
    trial's own (Ctrl-C, the tracking store gone)."""
    with contextlib.suppress(optuna.exceptions.UpdateFinishedTrialError):
        records.write(trial, TrialRecord(fail_reason=fail_reason(exc)))
    study.tell(trial, state=TrialState.FAIL, skip_if_finished=True)
    if isinstance(exc, REQUEUED_FAULTS):
        close = None if isinstance(exc, TrackingError) else liveness.close_run_failed(spec)
        liveness.retry(study, trial.number, spec.workers.max_retry, close)


def choose_threads(spec: StudySpec, study: optuna.Study) -> tuple[int, int]:
    """Torch threads for a worker joining `study` on this host: `workers.threads`, else the
    cores shared with the study's live workers here. Returns (threads, live local workers)."""
    others = liveness.local_workers(study)
    return threads_per_worker(others + 1, spec.workers.threads), others
