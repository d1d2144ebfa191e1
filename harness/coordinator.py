"""run-study: prepare the study, run its workers, show their progress, write the leaderboard.

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
import sys
import time
from collections.abc import Callable
from typing import Any

import optuna
from optuna.trial import TrialState

from harness import leaderboard, logs, paths, storage, trials
from harness.events import SearchObserver
from harness.spec import StudySpec
from harness.storage import StudyRecord
from harness.study import drop_orphan_checkpoints, open_tracker, prepare_study, reap, work
from harness.tracking import FAILED, FINISHED, KILLED, Tracker, TrackingError

log = logging.getLogger(__name__)

POLL_S = 1.0  # how often the coordinator looks at the storage
STOP_GRACE_S = 60.0  # how long interrupted workers get to record their trial
EXIT_TRACKING = 3  # a worker process's exit code: the tracking store stayed unreachable


class WorkersFailed(RuntimeError):
    """Worker processes kept dying while trials remained."""


def threads_per_worker(spec: StudySpec, n_workers: int) -> int:
    """Torch threads for each of `n_workers` CPU workers (oversubscribing collapses speed)."""
    return spec.workers.threads or max(1, (os.cpu_count() or 1) // n_workers)


def run_search(spec: StudySpec, *, workers: int | None = None,
               observer: SearchObserver | None = None, device: str = "cpu",
               finalize: bool = False) -> optuna.Study:
    """Create or resume the study and run trials until it has budget.n_trials of them.

    n_trials is the study's total: a resumed study only runs what is missing. Writes the
    leaderboard CSV (also logged on the study's MLflow run) at the end, interrupted or not.
    `finalize`: the caller finalizes next, on as many processes (budget.wall_time keeps
    time for it).
    """
    n = workers or spec.workers.count
    # Several workers are spawned first: each spends seconds importing torch, Optuna and MLflow,
    # which overlaps with this process creating the stores; they start once the study exists.
    pool = _Pool(spec, n, device) if n > 1 else None
    try:
        study, record = prepare_study(spec, n if finalize else 0, device=device,
                                      threads=threads_per_worker(spec, n))
    except BaseException:
        if pool is not None:
            pool.stop()
        raise
    finished_before = {r.number for r in trials.records(study) if r.state.is_finished()}
    remaining = record.n_trials - trials.counted(trials.records(study))
    status = FAILED
    try:
        if remaining <= 0:
            log.info("study %s already has its %d trials", spec.name, record.n_trials)
        elif pool is None:
            work(spec, observer=observer, device=device, threads=threads_per_worker(spec, 1))
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
        _wrap_up(spec, study, record, finished_before, status)
    return study


def _await_others(spec: StudySpec, study: optuna.Study, record: StudyRecord,
                  observer: SearchObserver | None) -> None:
    """Wait for the trials that other processes (another run-study, workers elsewhere) still
    run: the leaderboard and the final model must see them end."""
    watcher = _Watcher(study, record.n_trials, spec.budget.steps, observer)
    while running := [r.number for r in trials.records(study) if r.state == TrialState.RUNNING]:
        log.info("waiting for trials %s, run by other processes", running)
        time.sleep(POLL_S)
        storage.fail_stale(study)  # a worker elsewhere that stopped beating
        reap(spec, study)
        watcher.poll()


def _wrap_up(spec: StudySpec, study: optuna.Study, record: StudyRecord,
             finished_before: set[int], status: str) -> None:
    """The leaderboard CSV and the figures, on disk and on the study's run; the run closed."""
    out = paths.study_dir(spec.name) / "leaderboard.csv"
    out.parent.mkdir(parents=True, exist_ok=True)
    leaderboard.build(study, pareto_metric=spec.objective.pareto).to_csv(out, index=False)
    drop_orphan_checkpoints(spec, study)
    try:
        tracker = open_tracker(spec)
        tracker.log_artifact(record.parent_run_id, out)
        _plot(spec, study, tracker, record.parent_run_id, finished_before)
        tracker.end_run(record.parent_run_id, status)
    except TrackingError as exc:  # the leaderboard is on disk; the run waits for a rerun
        log.warning("could not update the study's MLflow run: %s", exc)


def _plot(spec: StudySpec, study: optuna.Study, tracker: Tracker, parent: str,
          finished_before: set[int]) -> None:
    """The study's figures on its parent run; loss curves on each trial run finished now."""
    try:
        from harness import plots

        out = paths.study_dir(spec.name) / "plots"
        figures = plots.study_figures(study, out)
        if spec.objective.pareto:
            figures.append(plots.pareto_front(trials.search_records(study),
                                              spec.objective.pareto, out / "pareto.png"))
        for path in figures:
            tracker.log_artifact(parent, path, "plots")
        for r in trials.records(study):
            run_id = r.mlflow_run_id
            if not r.state.is_finished() or r.number in finished_before or not run_id:
                continue
            path = plots.loss_curves(tracker.metric_history(run_id, "dev_loss"),
                                     tracker.metric_history(run_id, "train_loss"),
                                     f"{spec.name}, trial {r.number} ({r.state.name.lower()})",
                                     out / "trials" / f"trial-{r.number:04d}.png")
            tracker.log_artifact(run_id, path)
    except Exception:  # a figure that cannot be drawn must not cost the study
        log.exception("drawing the study's figures failed")


def _gpu_for(rank: int, per_gpu: int, device: str) -> int | None:
    import torch

    from harness.train import resolve_device

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
        self.threads = threads_per_worker(spec, n)
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
            if trials.budget_taken(trials.records(study), record.n_trials):
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
        recs = trials.records(study)
        self.finished = {r.number for r in recs if r.state.is_finished()}
        self.running: dict[int, int] = {}  # trial number -> last step shown
        self.done = trials.counted(recs)  # as of the last poll

    def poll(self) -> None:
        if self.observer is None:
            return
        recs = trials.records(self.study)
        retried = trials.retried_numbers(recs)
        for r in recs:
            if r.state == TrialState.RUNNING:
                self._progress(r)
            elif r.state.is_finished() and r.number not in self.finished:
                self.finished.add(r.number)
                self.running.pop(r.number, None)
                if r.surplus:
                    continue
                # Counted one by one: two trials that end within one poll show [k] and [k+1].
                self.done += r.state in trials.COUNTED_STATES and r.number not in retried
                self.observer.trial_finished(r, self.done, self.n_trials,
                                             trials.best_value(recs))
        self.done = trials.counted(recs)

    def _progress(self, r: trials.TrialRecord) -> None:
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
    _interrupt_once()
    _stop_with(parent)
    logs.configure(verbose=False)
    import torch

    from harness import tracking

    torch.set_num_threads(threads)
    try:
        tracking.preload()  # MLflow's import, while the coordinator creates the stores
        ready.wait()
        work(spec, device=device, threads=threads)
    except KeyboardInterrupt:
        raise SystemExit(130) from None
    except TrackingError as exc:  # its trial is re-queued; the coordinator stops the study
        log.error("%s", exc)
        raise SystemExit(EXIT_TRACKING) from None


def _stop_with(parent: int | None) -> None:
    """Have this process interrupted (SIGTERM: its trial re-queued) when `parent` dies, even
    by SIGKILL, rather than go on working with no one supervising it. Linux only (prctl)."""
    if parent is None or not sys.platform.startswith("linux"):
        return
    try:
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        return
    if os.getppid() != parent:  # it died before prctl took effect: no trial taken yet
        raise SystemExit(130)


def interrupt_once() -> Callable[[int, Any], None]:
    """A signal handler that raises KeyboardInterrupt at the first signal and ignores later
    ones, so that the interrupted process can record its trial undisturbed."""
    fired = False

    def handler(signum: int, frame: Any) -> None:
        # Stays installed, and does nothing after the first signal: swapping in SIG_IGN here
        # would race with a second signal already on its way.
        nonlocal fired
        if not fired:
            fired = True
            raise KeyboardInterrupt

    return handler


def _interrupt_once() -> None:
    """The first SIGTERM, or SIGINT, raises KeyboardInterrupt; later ones are ignored, so that
    a worker can record its interrupted trial (a terminal's Ctrl-C reaches every process of the
    group). A SIGINT ignored by whoever started the harness (`nohup ... &`) stays ignored."""
    handler = interrupt_once()
    if signal.getsignal(signal.SIGINT) is not signal.SIG_IGN:
        signal.signal(signal.SIGINT, handler)
    signal.signal(signal.SIGTERM, handler)
