"""Local workers: prepare the study, run its workers here, turn the storage into progress.

One worker runs in this process. Several run as spawned processes, each with its own torch
thread count (CPU) or GPU (CUDA_VISIBLE_DEVICES), all sharing the study's storage; this process
watches the storage to draw one combined progress display, fails and re-queues the trials of
workers that died, replaces such workers while trials remain, and stops them all on Ctrl-C.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import signal
import time
from collections.abc import Callable
from typing import Any

import optuna
import torch
from optuna.trial import TrialState

from harness.config import StudySpec
from harness.errors import TrackingError, WorkersFailed
from harness.search import counting, records, storage
from harness.search.checkpoints import drop_orphan_checkpoints
from harness.search.create import prepare_study
from harness.search.events import SearchObserver
from harness.search.liveness import reap
from harness.search.records import StudyRecord, TrialRecord
from harness.search.worker import work
from harness.tracking import FAILED, FINISHED, KILLED
from harness.tracking.store import preload
from harness.training.train import resolve_device
from harness.util import logs
from harness.util.processes import interrupt_on_signals, stop_with_parent, threads_per_worker

log = logging.getLogger(__name__)

POLL_S = 1.0  # how often the coordinator looks at the storage
# How long interrupted workers get to record their trial (Optuna and MLflow writes, seconds
# on a busy machine) before they are killed (their trials are then reaped as dead workers'):
# with the leaderboard written after, what bounds the time run-study takes to stop.
STOP_GRACE_S = 30.0
EXIT_TRACKING = 3  # a worker process's exit code: the tracking store stayed unreachable

# Called when the search ends, interrupted or not: (study, its record, the status to close
# the study's MLflow run with).
OnEnd = Callable[[optuna.Study, StudyRecord, str], None]


def run_search(spec: StudySpec, *, workers: int | None = None,
               observer: SearchObserver | None = None, device: str = "cpu",
               finalize: bool = False, on_end: OnEnd | None = None,
               allow_data_change: bool = False) -> optuna.Study:
    """Create or resume the study and run trials until it has budget.n_trials of them.

    n_trials is the study's total: a resumed study only runs what is missing.
    `on_end(study, record, status of the study's run)` is called at the
    end, interrupted or not (the leaderboard and figures are drawn there).
    `finalize`: the caller finalizes next, on as many processes (budget.wall_time keeps
    time for it).
    """
    n = workers or spec.workers.count
    # Several workers are spawned first: each spends seconds importing torch, Optuna and MLflow,
    # which overlaps with this process creating the stores; they start once the study exists.
    pool = _Pool(spec, n, device) if n > 1 else None
    try:
        study, record = prepare_study(spec, n if finalize else 0, device=device,
                                      threads=threads_per_worker(n, spec.workers.threads),
                                      allow_data_change=allow_data_change)
    except BaseException:
        if pool is not None:
            pool.stop()
        raise
    remaining = record.n_trials - counting.counted(records.records(study))
    status = FAILED
    try:
        if remaining <= 0:
            log.info("study %s already has its %d trials", spec.name, record.n_trials)
        elif pool is None:
            work(spec, observer=observer, device=device,
                 threads=threads_per_worker(1, spec.workers.threads))
        else:
            if observer:
                observer.search_started(record)
            pool.run(study, record, remaining, observer)
        _await_others(spec, study, record, observer)
        status = FINISHED
    except KeyboardInterrupt:
        status = KILLED
        raise
    finally:
        if pool is not None:
            pool.stop()  # workers still waiting (none were needed); the others have exited
        drop_orphan_checkpoints(spec, study)
        if on_end is not None:
            on_end(study, record, status)
    return study


def _await_others(spec: StudySpec, study: optuna.Study, record: StudyRecord,
                  observer: SearchObserver | None) -> None:
    """Wait for the trials that other processes (another run-study, workers elsewhere) still
    run: the leaderboard and the final model must see them end."""
    watcher = _Watcher(study, record.n_trials, spec.budget.steps, observer)
    while running := [r.number for r in records.records(study) if r.state == TrialState.RUNNING]:
        log.info("waiting for trials %s, run by other processes", running)
        time.sleep(POLL_S)
        storage.fail_stale(study)  # a worker elsewhere that stopped beating
        reap(spec, study)
        watcher.poll()


def _gpu_for(rank: int, per_gpu: int, device: str) -> int | None:
    if resolve_device(device).type != "cuda":
        return None
    return (rank // per_gpu) % max(1, torch.cuda.device_count())


class _Pool:
    """Local worker processes: spawned at once, released by `run` when the study exists,
    replaced when they die while trials remain, stopped on Ctrl-C."""

    def __init__(self, spec: StudySpec, n: int, device: str) -> None:
        self.spec, self.device = spec, device
        self.ctx = multiprocessing.get_context("spawn")  # never fork a process with torch threads
        self.ready = self.ctx.Event()  # set by `run`: the study exists, start trials
        self.threads = threads_per_worker(n, spec.workers.threads)
        self.procs = {rank: self._start(rank) for rank in range(n)}
        self.next_rank = n
        self.restarts = 0

    def _start(self, rank: int) -> Any:
        gpu = _gpu_for(rank, self.spec.workers.per_gpu, self.device)
        p = self.ctx.Process(target=worker_main, name=f"harness-worker-{rank}", daemon=False,
                             args=(self.spec, self.device, self.threads, gpu, self.ready,
                                   os.getpid()))
        p.start()
        log.info("worker %d started (pid %d, %d threads, gpu %s)", rank, p.pid, self.threads,
                 gpu)
        return p

    def run(self, study: optuna.Study, record: StudyRecord, remaining: int,
            observer: SearchObserver | None) -> None:
        """Release the workers (no more than `remaining`) and supervise them to the end."""
        for rank in sorted(self.procs)[remaining:]:  # a resumed study may need fewer
            _stop([self.procs.pop(rank)])
        self.ready.set()
        watcher = _Watcher(study, record.n_trials, self.spec.budget.steps, observer)
        try:
            while any(p.is_alive() for p in self.procs.values()):
                time.sleep(POLL_S)
                reap(self.spec, study)
                watcher.poll()
                self._replace_dead(study, record)
            reap(self.spec, study)
            watcher.poll()
        except BaseException:
            self.stop()
            reap(self.spec, study)
            raise

    def _replace_dead(self, study: optuna.Study, record: StudyRecord) -> None:
        """Start a replacement for each worker that died while trials remain."""
        for rank, p in list(self.procs.items()):
            if p.is_alive() or p.exitcode == 0:
                continue
            if p.exitcode == EXIT_TRACKING:
                raise TrackingError(f"worker {rank} lost the MLflow tracking store (its message "
                                    "is above) and its trial was re-queued: run the command "
                                    "again once the store is back")
            if counting.budget_taken(records.records(study), record.n_trials):
                continue
            if self.restarts >= 3 * len(self.procs):
                raise WorkersFailed(f"worker processes died {self.restarts} times; see the log")
            log.warning("worker %d died (exit code %s); starting a replacement", rank,
                        p.exitcode)
            del self.procs[rank]
            self.procs[self.next_rank] = self._start(self.next_rank)
            self.next_rank, self.restarts = self.next_rank + 1, self.restarts + 1

    def stop(self) -> None:
        _stop(self.procs.values())


def _stop(procs: Any) -> None:
    """Stop the workers (each records and re-queues its trial), then wait for them."""
    for p in procs:
        if p.is_alive():
            os.kill(p.pid, signal.SIGTERM)  # handled even where SIGINT is ignored
    deadline = time.monotonic() + STOP_GRACE_S
    for p in procs:
        p.join(max(0.0, deadline - time.monotonic()))
        if p.is_alive():
            p.kill()
            p.join()


class _Watcher:
    """Turns what the storage shows into the observer's progress events."""

    def __init__(self, study: optuna.Study, n_trials: int, steps: int,
                 observer: SearchObserver | None) -> None:
        self.study, self.n_trials, self.steps, self.observer = study, n_trials, steps, observer
        recs = records.records(study)
        self.finished = {r.number for r in recs if r.state.is_finished()}
        self.running: dict[int, int] = {}  # trial number -> last step shown
        self.done = counting.counted(recs)  # as of the last poll

    def poll(self) -> None:
        if self.observer is None:
            return
        recs = records.records(self.study)
        retried = counting.retried_numbers(recs)
        for r in recs:
            if r.state == TrialState.RUNNING:
                self._progress(r)
            elif r.state.is_finished() and r.number not in self.finished:
                self.finished.add(r.number)
                self.running.pop(r.number, None)
                if r.surplus:
                    continue
                # Counted one by one: two trials that end within one poll show [k] and [k+1].
                self.done += r.state in counting.COUNTED_STATES and r.number not in retried
                self.observer.trial_finished(r, self.done, self.n_trials,
                                             counting.best_value(recs))
        self.done = counting.counted(recs)

    def _progress(self, r: TrialRecord) -> None:
        assert self.observer is not None
        if r.number not in self.running:
            self.running[r.number] = 0
            self.observer.trial_started(r.number, r.params)
        if r.intermediate:
            step = max(r.intermediate)
            if step != self.running[r.number]:
                self.running[r.number] = step
                self.observer.evaluated(r.number, step, self.steps, r.intermediate[step])


def worker_main(spec: StudySpec, device: str, threads: int, gpu: int | None,
                ready: Any, parent: int | None = None) -> None:
    """Entry point of a spawned worker process: get ready, wait for the study, work."""
    if gpu is not None:
        os.environ["CUDA_VISIBLE_DEVICES"] = str(gpu)  # before CUDA is first used
    interrupt_on_signals()
    stop_with_parent(parent)
    logs.configure(verbose=bool(os.environ.get("HARNESS_VERBOSE")))  # as its parent
    torch.set_num_threads(threads)
    try:
        preload()  # MLflow's import, while the coordinator creates the stores
        ready.wait()
        work(spec, device=device, threads=threads)
    except KeyboardInterrupt:
        raise SystemExit(130) from None
    except TrackingError as exc:  # its trial is re-queued; the coordinator stops the study
        log.error("%s", exc)
        raise SystemExit(EXIT_TRACKING) from None


