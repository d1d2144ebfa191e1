"""The Optuna study: storage, sampler, pruner, the objective, and one worker's trial loop.

Each trial: suggest hyperparameters from the spec's space -> train() with a callback that logs to
MLflow and reports to the pruner -> its state and figures stored in Optuna and MLflow. A trial
whose worker died (or was interrupted) is failed and re-queued, recorded the way Optuna's
RetryHeartbeatStaleTrialCallback records it, and does not count against budget.n_trials.
This module never touches the test split: workers run with it sealed.
"""

from __future__ import annotations

import logging
import os
import socket
import time
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import optuna
import torch
from optuna.trial import FrozenTrial, TrialState

from harness import hparams, paths
from harness.data import DataError, load_search_data, sealed_test_split, summarize
from harness.redact import redact
from harness.spec import (
    CategoricalParam,
    FloatParam,
    IntParam,
    Param,
    StudySpec,
    iter_params,
)
from harness.tracking import FAILED, FINISHED, KILLED, Tracker, check_reachable
from harness.train import Evaluation, TrainingDiverged, train

log = logging.getLogger(__name__)

# Faults that fail one trial, and the study goes on.
TRIAL_FAULTS = (TrainingDiverged, torch.cuda.OutOfMemoryError)

# Trials that use up the budget: n_trials counts these, across resumes.
COUNTED_STATES = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)

# Marks a trial that a worker started when the other workers had already started the last of
# n_trials (both saw one left): it ends at once, pruned before any training, and is not counted.
SURPLUS_ATTR = "surplus"


class StudyNotFound(LookupError):
    """The study file's study has not been run yet (nothing in its storage)."""


class StorageError(RuntimeError):
    """The Optuna storage cannot be opened (unreachable or misspelled URL)."""


class SearchObserver(Protocol):
    """Receives progress events (the CLI draws a progress display from them)."""

    def trial_started(self, number: int, params: Mapping[str, Any]) -> None: ...

    def evaluated(self, number: int, step: int, steps: int, dev_loss: float) -> None: ...

    def trial_finished(self, trial: FrozenTrial, done: int, total: int,
                       best: float | None) -> None: ...


# ---------------------------------------------------------------------------------------------
# Storage, sampler, pruner


def open_storage(spec: StudySpec) -> optuna.storages.BaseStorage:
    """The study's storage: `spec.storage` (a database URL) or the embedded journal file.

    A database storage gets Optuna's heartbeats: a trial whose worker stops beating is failed
    and re-queued by the next worker that starts a trial.
    """
    if spec.storage:
        beat = spec.workers.heartbeat_s
        try:
            with warnings.catch_warnings():  # heartbeats and the retry callback: "experimental"
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                return optuna.storages.RDBStorage(
                    spec.storage, heartbeat_interval=beat, grace_period=3 * beat,
                    heartbeat_stale_trial_callback=_RetryStale(spec),
                )
        except Exception as exc:  # SQLAlchemy raises many kinds for a bad or dead URL
            reason = str(getattr(exc, "orig", None) or exc).strip().splitlines()[0]
            raise StorageError(f"cannot open the Optuna storage {redact(spec.storage)}: "
                               f"{redact(reason)}") from None
    path = paths.journal_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    # The journal file is safe for several processes on one machine (file lock), unlike SQLite.
    lock = optuna.storages.journal.JournalFileOpenLock(str(path))
    backend = optuna.storages.journal.JournalFileBackend(str(path), lock_obj=lock)
    return optuna.storages.JournalStorage(backend)


def open_tracker(spec: StudySpec) -> Tracker:
    """The study's MLflow experiment: `tracking.experiment`, else the study's name."""
    return Tracker(spec.tracking.uri, spec.tracking.experiment or spec.name)


def build_sampler(spec: StudySpec, seed_offset: int = 0) -> optuna.samplers.BaseSampler:
    """The spec's sampler, seeded with its base seed + `seed_offset`."""
    opts = dict(spec.sampler.options)
    seed = opts.pop("seed") + seed_offset
    kind = spec.sampler.type
    if kind == "tpe":
        has_conditional = any(isinstance(p, CategoricalParam) and p.conditional
                              for p in iter_params(spec.search))
        opts.setdefault("multivariate", True)
        opts.setdefault("group", has_conditional and opts["multivariate"])
        with warnings.catch_warnings():  # `group` is marked experimental; it is what we want
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            return optuna.samplers.TPESampler(seed=seed, **opts)
    if kind == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    if kind == "qmc":
        return optuna.samplers.QMCSampler(seed=seed, **opts)
    if kind == "cmaes":
        return optuna.samplers.CmaEsSampler(seed=seed, **opts)
    if kind == "grid":
        return optuna.samplers.GridSampler(grid_space(spec.search), seed=seed)
    raise ValueError(f"unknown sampler {kind!r}")


def grid_space(space: Sequence[Param]) -> dict[str, list[Any]]:
    """Every value of each parameter, for the grid sampler (floats need a step)."""
    out: dict[str, list[Any]] = {}
    for p in space:
        if isinstance(p, CategoricalParam):
            out[p.name] = list(p.choices)
        elif isinstance(p, IntParam):
            out[p.name] = list(range(p.low, p.high + 1, p.step))
        else:
            assert p.step is not None
            n = int(round((p.high - p.low) / p.step)) + 1
            out[p.name] = [float(v) for v in np.round(p.low + p.step * np.arange(n), 12)]
    return out


def build_pruner(spec: StudySpec) -> optuna.pruners.BasePruner:
    """The spec's pruner; its resource is optimizer steps."""
    opts = dict(spec.pruner.options)
    kind = spec.pruner.type
    if kind == "none":
        return optuna.pruners.NopPruner()
    if kind == "median":
        return optuna.pruners.MedianPruner(**opts)
    if kind == "successive_halving":
        opts.setdefault("min_resource", spec.budget.eval_every)
        return optuna.pruners.SuccessiveHalvingPruner(**opts)
    if kind == "hyperband":
        opts.setdefault("min_resource", spec.budget.eval_every)
        return optuna.pruners.HyperbandPruner(max_resource=spec.budget.steps, **opts)
    raise ValueError(f"unknown pruner {kind!r}")


def load_study(spec: StudySpec) -> optuna.Study:
    """The existing study of a spec (no sampler or pruner needed). Raises StudyNotFound."""
    not_found = StudyNotFound(f"study {spec.name!r} has not been run yet (storage: "
                              f"{redact(spec.storage or str(paths.journal_path()))})")
    if not spec.storage and not paths.journal_path().exists():
        raise not_found  # and create nothing
    storage = open_storage(spec)
    if spec.name not in {s.study_name for s in storage.get_all_studies()}:
        raise not_found
    return optuna.load_study(study_name=spec.name, storage=storage)


def retried_numbers(trials: Sequence[FrozenTrial]) -> set[int]:
    """Numbers of trials that failed with their worker and were re-queued."""
    return {n for t in trials for n in t.system_attrs.get("retry_history", ())}


def search_trials(study: optuna.Study) -> list[FrozenTrial]:
    """The study's trials, less the surplus ones (started beyond n_trials and never run)."""
    return [t for t in study.get_trials(deepcopy=False) if not t.user_attrs.get(SURPLUS_ATTR)]


def counted_trials(study: optuna.Study) -> int:
    """Trials that used up part of the budget: finished ones, less those re-queued and the
    surplus ones."""
    trials = search_trials(study)
    retried = retried_numbers(trials)
    return sum(t.state in COUNTED_STATES and t.number not in retried for t in trials)


def is_surplus(number: int, trials: Sequence[FrozenTrial], n_trials: int) -> bool:
    """Whether trial `number` lies beyond n_trials: the `trials` before it (surplus ones left
    out, see search_trials) that count, or run, already make n_trials. Of two workers that both
    saw one trial left and both started one, the later-numbered trial is the surplus one."""
    retried = retried_numbers(trials)
    ahead = sum(t.number < number and t.number not in retried
                and (t.state in COUNTED_STATES or t.state == TrialState.RUNNING)
                for t in trials)
    return ahead >= n_trials


def budget_taken(study: optuna.Study, n_trials: int) -> bool:
    """Whether the finished and running trials already make up the study's n_trials."""
    running = len(study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)))
    return counted_trials(study) + running >= n_trials


def worker_id(device: str) -> str:
    """host:pid:device, recorded on each trial."""
    return f"{socket.gethostname()}:{os.getpid()}:{device}"


def retry_trial(spec: StudySpec, study: optuna.Study, trial: FrozenTrial) -> None:
    """Close a lost trial's MLflow run as FAILED and re-queue its params (up to max_retry)."""
    run_id = trial.user_attrs.get("mlflow_run_id")
    if run_id:
        try:
            open_tracker(spec).end_run(run_id, FAILED)
        except Exception:  # the run may be gone; the trial must still be re-queued
            log.exception("could not close the MLflow run %s of trial %d", run_id, trial.number)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=spec.workers.max_retry)(
            study, trial)
    log.warning("trial %d lost its worker; re-queued", trial.number)


class _RetryStale:
    """Optuna's heartbeat callback for database storages: retry_trial, picklable."""

    def __init__(self, spec: StudySpec) -> None:
        self.spec = spec

    def __call__(self, study: optuna.Study, trial: FrozenTrial) -> None:
        retry_trial(self.spec, study, trial)


def reap_dead_trials(spec: StudySpec, study: optuna.Study) -> list[int]:
    """Fail and re-queue RUNNING trials whose worker process on this host is gone.

    The journal storage has no heartbeats; a trial records host:pid, so on its own host the
    harness can tell that its process died.
    """
    reaped = []
    host = socket.gethostname()
    trials = study.get_trials(deepcopy=False)
    for t in trials:
        if t.state != TrialState.RUNNING:
            continue
        worker = t.user_attrs.get("worker", "")
        # A retry starts with its failed predecessor's user attrs (Optuna's retry callback
        # copies them): until its worker records itself, "worker" names the dead one.
        history = t.system_attrs.get("retry_history")
        if history and worker == trials[history[-1]].user_attrs.get("worker"):
            continue
        w_host, _, rest = worker.partition(":")
        pid = int(rest.partition(":")[0] or 0)
        if w_host != host or not pid or _alive(pid):
            continue
        storage = study._storage  # Optuna's own API for changing another process's trial
        try:
            storage.set_trial_user_attr(t._trial_id, "fail_reason",
                                        f"worker process {pid} is gone")
            if not storage.set_trial_state_values(t._trial_id, TrialState.FAIL):
                continue
        except optuna.exceptions.UpdateFinishedTrialError:
            continue  # another process reaped it first
        retry_trial(spec, study, storage.get_trial(t._trial_id))
        reaped.append(t.number)
    return reaped


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie (dead, not yet collected by its parent) is gone too.
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return True


# ---------------------------------------------------------------------------------------------
# The objective


def suggest(trial: optuna.Trial, space: Sequence[Param]) -> dict[str, Any]:
    """Suggest a value for each parameter of the space; conditional ones only when active."""
    values: dict[str, Any] = {}
    for p in space:
        if isinstance(p, CategoricalParam):
            choice = trial.suggest_categorical(p.name, list(p.choices))
            values[p.name] = choice
            values.update(suggest(trial, p.conditional.get(choice, ())))
        elif isinstance(p, IntParam):
            values[p.name] = trial.suggest_int(p.name, p.low, p.high, step=p.step, log=p.log)
        elif isinstance(p, FloatParam):
            values[p.name] = trial.suggest_float(p.name, p.low, p.high, step=p.step, log=p.log)
    return values


@dataclass
class _Objective:
    """Optuna objective: one trial = one call of `train`, tracked in MLflow."""

    spec: StudySpec
    tracker: Tracker
    parent_run_id: str
    observer: SearchObserver | None
    device: str

    def __call__(self, trial: optuna.Trial) -> float:
        spec = self.spec
        if is_surplus(trial.number, search_trials(trial.study), spec.budget.n_trials):
            trial.set_user_attr(SURPLUS_ATTR, True)
            log.info("trial %d not run: other workers started the study's last trials",
                     trial.number)
            raise optuna.TrialPruned("surplus: beyond n_trials")
        hp = spec.base_hparams(**suggest(trial, spec.search))
        config = hp.to_dict()
        trial.set_user_attr("config", config)
        trial.set_user_attr("worker", worker_id(self.device))
        run = self.tracker.start_trial(self.parent_run_id, spec.name, trial.number, config)
        trial.set_user_attr("mlflow_run_id", run.run_id)
        if self.observer:
            self.observer.trial_started(trial.number, config)

        def on_eval(ev: Evaluation) -> bool:
            run.log_metrics({"dev_loss": ev.dev_loss, "train_loss": ev.train_loss, "lr": ev.lr},
                            ev.step)
            trial.report(ev.dev_loss, ev.step)
            if self.observer:
                self.observer.evaluated(trial.number, ev.step, spec.budget.steps, ev.dev_loss)
            return trial.should_prune()

        try:
            data = load_search_data(spec.data, hp.context_length)
            result = train(hp, data, steps=spec.budget.steps, eval_every=spec.budget.eval_every,
                           on_eval=on_eval, device=self.device)
        except BaseException as exc:  # diverged, out of memory, a bug, Ctrl-C: close the run
            reason = str(exc) if isinstance(exc, TrainingDiverged) else (
                f"{type(exc).__name__}: {exc}".rstrip(": "))
            if isinstance(exc, torch.cuda.OutOfMemoryError):
                reason = f"out of GPU memory: {str(exc).splitlines()[0]}"
                torch.cuda.empty_cache()  # the next trial on this worker starts clean
            trial.set_user_attr("fail_reason", reason)
            run.finish(FAILED, tags={"harness.fail_reason": reason})
            raise

        figures = {"best_dev_loss": result.best_dev_loss, "n_params": result.n_params,
                   "steps_per_sec": result.steps_per_sec}
        for key, value in {**figures, "best_step": result.best_step, "steps": result.steps,
                           "last_dev_loss": result.dev_loss, "train_s": result.elapsed_s}.items():
            trial.set_user_attr(key, value)
        if result.stopped_early:
            run.finish(KILLED, figures, tags={"harness.state": "PRUNED"})
            raise optuna.TrialPruned(f"pruned at step {result.steps}")
        run.finish(FINISHED, figures, tags={"harness.state": "COMPLETE"})
        return result.best_dev_loss


# ---------------------------------------------------------------------------------------------
# Creating the study, and one worker's trial loop


def check_inputs(spec: StudySpec) -> None:
    """Everything that can be checked before anything is created: the data file, the split,
    the batch sizes against the training examples, a tracking server's reachability."""
    summary = summarize(spec.data)
    batch = _largest(spec, "batch_size")
    if batch > summary.train_examples:
        raise DataError(f"batch_size {batch} is larger than the {summary.train_examples} "
                        f"training examples of {spec.data.path or 'the bundled names'}")
    check_reachable(spec.tracking.uri)


def _largest(spec: StudySpec, name: str) -> Any:
    """The largest value hyperparameter `name` can take in the study."""
    values = [spec.fixed.get(name, hparams.DEFAULTS[name])]
    for p in iter_params(spec.search):
        if p.name == name:
            values += list(p.choices) if isinstance(p, CategoricalParam) else [p.high]
    return max(values)


def prepare_study(spec: StudySpec) -> optuna.Study:
    """Create the study (or open it) and its parent MLflow run; reap trials of dead workers.

    Bad inputs fail first (check_inputs), before any storage or run is created.
    """
    check_inputs(spec)
    # A database named by the user is opened first and the embedded journal last, so that a
    # bad URL of either kind fails before the other store is created.
    storage = open_storage(spec) if spec.storage else None
    tracker = open_tracker(spec)
    study = optuna.create_study(storage=storage or open_storage(spec), study_name=spec.name,
                                direction="minimize",
                                load_if_exists=True)
    parent = tracker.study_run(spec.name, _spec_yaml(spec))
    study.set_user_attr("mlflow_parent_run_id", parent)
    reap_dead_trials(spec, study)
    return study


def work(spec: StudySpec, *, rank: int = 0, observer: SearchObserver | None = None,
         device: str = "cpu") -> None:
    """Run trials of an existing study until it has budget.n_trials (all workers together).

    This is one worker, local or on another machine. Its sampler is seeded with the base seed
    + 1000 * rank + the trials already in the study, so workers (and resumes) do not propose
    the same first trials. Stops at budget.timeout seconds. Uses `workers.threads` torch
    threads when the study sets it.
    """
    if spec.workers.threads:
        torch.set_num_threads(spec.workers.threads)
    storage = open_storage(spec)
    study = optuna.load_study(study_name=spec.name, storage=storage, pruner=build_pruner(spec))
    study.sampler = build_sampler(spec, seed_offset=1000 * rank + len(study.trials))
    parent = study.user_attrs.get("mlflow_parent_run_id")
    if parent is None:
        raise StudyNotFound(f"study {spec.name!r} was not prepared (no parent run); start it "
                            "with `harness run-study`")
    tracker = open_tracker(spec)
    objective = _Objective(spec, tracker, parent, observer, device)
    total = spec.budget.n_trials

    def after_trial(study: optuna.Study, trial: FrozenTrial) -> None:
        if observer and not trial.user_attrs.get(SURPLUS_ATTR):
            observer.trial_finished(trial, counted_trials(study), total, best_value(study))

    deadline = time.monotonic() + spec.budget.timeout if spec.budget.timeout else None
    with sealed_test_split():  # no trial can read the test split, even by mistake
        while True:
            if budget_taken(study, total):
                break
            if deadline is not None and time.monotonic() >= deadline:
                log.info("budget.timeout reached; no new trials")
                break
            try:
                study.optimize(objective, n_trials=1, catch=TRIAL_FAULTS, callbacks=[after_trial])
            except KeyboardInterrupt:
                _requeue_interrupted(spec, study, device)
                raise


def _requeue_interrupted(spec: StudySpec, study: optuna.Study, device: str) -> None:
    """Re-queue the trial this worker was running when it was interrupted: no trial is lost."""
    me = worker_id(device)
    for t in study.get_trials(deepcopy=False, states=(TrialState.FAIL,)):
        lost = t.user_attrs.get("fail_reason", "").startswith("KeyboardInterrupt")
        if t.user_attrs.get("worker") == me and lost and t.number not in retried_numbers(
                study.get_trials(deepcopy=False)):
            retry_trial(spec, study, t)


def best_value(study: optuna.Study) -> float | None:
    """The best complete trial's value, or None."""
    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    return min((t.value for t in complete if t.value is not None), default=None)



def _spec_yaml(spec: StudySpec) -> str:
    """The study file as run (overrides applied), credentials masked."""
    import yaml

    return redact(yaml.safe_dump(dict(spec.raw), sort_keys=False))
