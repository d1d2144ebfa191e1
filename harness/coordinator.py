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
import time
from typing import Any

import optuna
from optuna.trial import TrialState

from harness import leaderboard, logs, paths
from harness.spec import StudySpec
from harness.study import (
    COUNTED_STATES,
    SURPLUS_ATTR,
    SearchObserver,
    best_value,
    budget_taken,
    counted_trials,
    open_tracker,
    prepare_study,
    reap_dead_trials,
    retried_numbers,
    work,
)
from harness.tracking import FINISHED, KILLED, Tracker

log = logging.getLogger(__name__)

POLL_S = 1.0  # how often the coordinator looks at the storage
STOP_GRACE_S = 60.0  # how long interrupted workers get to record their trial


class WorkersFailed(RuntimeError):
    """Worker processes kept dying while trials remained."""


def threads_per_worker(spec: StudySpec, n_workers: int) -> int:
    """Torch threads for each of `n_workers` CPU workers (oversubscribing collapses speed)."""
    return spec.workers.threads or max(1, (os.cpu_count() or 1) // n_workers)


def run_search(spec: StudySpec, *, workers: int | None = None,
               observer: SearchObserver | None = None, device: str = "cpu") -> optuna.Study:
    """Create or resume the study and run trials until it has budget.n_trials of them.

    n_trials is the study's total: a resumed study only runs what is missing. Writes the
    leaderboard CSV (also logged on the study's MLflow run) at the end, interrupted or not.
    """
    n = workers or spec.workers.count
    # Several workers are spawned first: each spends seconds importing torch, Optuna and MLflow,
    # which overlaps with this process creating the stores; they start once the study exists.
    pool = _Pool(spec, n, device) if n > 1 else None
    try:
        study = prepare_study(spec)
    except BaseException:
        if pool is not None:
            pool.stop()
        raise
    finished_before = {t.number for t in study.get_trials(deepcopy=False)
                       if t.state.is_finished()}
    tracker = open_tracker(spec)
    parent = study.user_attrs["mlflow_parent_run_id"]
    remaining = spec.budget.n_trials - counted_trials(study)
    status = KILLED
    try:
        if remaining <= 0:
            log.info("study %s already has its %d trials", spec.name, spec.budget.n_trials)
        elif pool is None:
            work(spec, rank=0, observer=observer, device=device)
        else:
            pool.run(study, remaining, observer)
        status = FINISHED
    finally:
        if pool is not None:
            pool.stop()  # workers still waiting (none were needed); the others have exited
        out = paths.study_dir(spec.name) / "leaderboard.csv"
        out.parent.mkdir(parents=True, exist_ok=True)
        leaderboard.build(study).to_csv(out, index=False)
        tracker.log_artifact(parent, out)
        _plot(spec, study, tracker, parent, finished_before)
        tracker.end_run(parent, status)
    return study


def _plot(spec: StudySpec, study: optuna.Study, tracker: Tracker, parent: str,
          finished_before: set[int]) -> None:
    """The study's figures on its parent run; loss curves on each trial run finished now."""
    try:
        from harness import plots

        out = paths.study_dir(spec.name) / "plots"
        for path in plots.study_figures(study, out):
            tracker.log_artifact(parent, path, "plots")
        for t in study.get_trials(deepcopy=False):
            run_id = t.user_attrs.get("mlflow_run_id")
            if not t.state.is_finished() or t.number in finished_before or not run_id:
                continue
            path = plots.loss_curves(tracker.metric_history(run_id, "dev_loss"),
                                     tracker.metric_history(run_id, "train_loss"),
                                     f"{spec.name}, trial {t.number} ({t.state.name.lower()})",
                                     out / "trials" / f"trial-{t.number:04d}.png")
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

    def _start(self, rank: int) -> Any:
        gpu = _gpu_for(rank, self.spec.workers.per_gpu, self.device)
        p = self.ctx.Process(target=worker_main, name=f"harness-worker-{rank}", daemon=False,
                             args=(self.spec, rank, self.device, self.threads, gpu, self.ready))
        p.start()
        log.info("worker %d started (pid %d, %d threads, gpu %s)", rank, p.pid, self.threads,
                 gpu)
        return p

    def run(self, study: optuna.Study, remaining: int,
            observer: SearchObserver | None) -> None:
        """Release the workers (no more than `remaining`) and supervise them to the end."""
        for rank in sorted(self.procs)[remaining:]:  # a resumed study may need fewer
            _stop([self.procs.pop(rank)])
        self.ready.set()
        spec, n, restarts = self.spec, len(self.procs), 0
        watcher = _Watcher(study, spec, observer)
        try:
            while any(p.is_alive() for p in self.procs.values()):
                time.sleep(POLL_S)
                reap_dead_trials(spec, study)
                watcher.poll()
                for rank, p in list(self.procs.items()):
                    if p.is_alive() or p.exitcode == 0:
                        continue
                    if budget_taken(study, spec.budget.n_trials):
                        continue
                    if restarts >= 3 * n:
                        raise WorkersFailed(f"worker processes died {restarts} times; see the log")
                    log.warning("worker %d died (exit code %s); starting a replacement", rank,
                                p.exitcode)
                    del self.procs[rank]
                    self.procs[self.next_rank] = self._start(self.next_rank)
                    self.next_rank, restarts = self.next_rank + 1, restarts + 1
            reap_dead_trials(spec, study)
            watcher.poll()
        except BaseException:
            self.stop()
            reap_dead_trials(spec, study)
            raise

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

    def __init__(self, study: optuna.Study, spec: StudySpec,
                 observer: SearchObserver | None) -> None:
        self.study, self.spec, self.observer = study, spec, observer
        self.finished = {t.number for t in study.get_trials(deepcopy=False)
                         if t.state.is_finished()}
        self.running: dict[int, int] = {}  # trial number -> last step shown
        self.done = counted_trials(study)  # as of the last poll

    def poll(self) -> None:
        if self.observer is None:
            return
        trials = self.study.get_trials(deepcopy=False)
        retried = retried_numbers(trials)
        for t in trials:
            if t.state == TrialState.RUNNING:
                if t.number not in self.running:
                    self.running[t.number] = 0
                    self.observer.trial_started(t.number, t.params)
                if t.intermediate_values:
                    step = max(t.intermediate_values)
                    if step != self.running[t.number]:
                        self.running[t.number] = step
                        self.observer.evaluated(t.number, step, self.spec.budget.steps,
                                                t.intermediate_values[step])
            elif t.state.is_finished() and t.number not in self.finished:
                self.finished.add(t.number)
                self.running.pop(t.number, None)
                if t.user_attrs.get(SURPLUS_ATTR):
                    continue
                # Counted one by one: two trials that end within one poll show [k] and [k+1].
                self.done += t.state in COUNTED_STATES and t.number not in retried
                self.observer.trial_finished(t, self.done, self.spec.budget.n_trials,
                                             best_value(self.study))
        self.done = counted_trials(self.study)


def worker_main(spec: StudySpec, rank: int, device: str, threads: int, gpu: int | None,
                ready: Any) -> None:
    """Entry point of a spawned worker process: get ready, wait for the study, work."""
    if gpu is not None:
        os.environ["CUDA_VISIBLE_DEVICES"] = str(gpu)  # before CUDA is first used
    _interrupt_once()
    logs.configure(verbose=False)
    import torch

    from harness import tracking

    torch.set_num_threads(threads)
    try:
        tracking.preload()  # MLflow's import, while the coordinator creates the stores
        ready.wait()
        work(spec, rank=rank, device=device)
    except KeyboardInterrupt:
        raise SystemExit(130) from None


def _interrupt_once() -> None:
    """The first SIGTERM, or SIGINT, raises KeyboardInterrupt; later ones are ignored, so that
    a worker can record its interrupted trial (a terminal's Ctrl-C reaches every process of the
    group). A SIGINT ignored by whoever started the harness (`nohup ... &`) stays ignored."""

    fired = False

    def handler(signum: int, frame: Any) -> None:
        # Stays installed, and does nothing after the first signal: swapping in SIG_IGN here
        # would race with a second signal already on its way.
        nonlocal fired
        if not fired:
            fired = True
            raise KeyboardInterrupt

    if signal.getsignal(signal.SIGINT) is not signal.SIG_IGN:
        signal.signal(signal.SIGINT, handler)
    signal.signal(signal.SIGTERM, handler)
