"""The study driver: create or resume the Optuna study, and run trials of `train` in it.

Each trial: suggest hyperparameters from the spec's space -> train() with a callback that logs to
MLflow and reports to the pruner -> its state and figures stored in Optuna and MLflow. This module
never touches the test split: it only ever asks `harness.data` for `SearchData`.
"""

from __future__ import annotations

import logging
import os
import socket
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import optuna
from optuna.trial import FrozenTrial, TrialState

from harness import leaderboard, paths
from harness.data import load_search_data, read_words, sealed_test_split
from harness.spec import (
    CategoricalParam,
    FloatParam,
    IntParam,
    Param,
    StudySpec,
    iter_params,
)
from harness.tracking import FAILED, FINISHED, KILLED, Tracker
from harness.train import Evaluation, TrainingDiverged, train

log = logging.getLogger(__name__)

# Trials that use up the budget: n_trials counts these, across resumes.
COUNTED_STATES = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)


class StudyNotFound(LookupError):
    """The study file's study has not been run yet (nothing in its storage)."""


class SearchObserver(Protocol):
    """Receives progress events (the CLI draws a progress display from them)."""

    def trial_started(self, number: int, params: Mapping[str, Any]) -> None: ...

    def evaluated(self, number: int, ev: Evaluation, steps: int) -> None: ...

    def trial_finished(self, trial: FrozenTrial, done: int, total: int,
                       best: float | None) -> None: ...


# ---------------------------------------------------------------------------------------------
# Storage, sampler, pruner


def open_storage(spec: StudySpec) -> optuna.storages.BaseStorage:
    """The study's storage: `spec.storage` (a database URL) or the embedded journal file."""
    if spec.storage:
        return optuna.storages.RDBStorage(spec.storage)
    path = paths.journal_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    # The journal file is safe for several processes on one machine (file lock), unlike SQLite.
    lock = optuna.storages.journal.JournalFileOpenLock(str(path))
    backend = optuna.storages.journal.JournalFileBackend(str(path), lock_obj=lock)
    return optuna.storages.JournalStorage(backend)


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
                              f"{spec.storage or paths.journal_path()})")
    if not spec.storage and not paths.journal_path().exists():
        raise not_found  # and create nothing
    storage = open_storage(spec)
    if spec.name not in {s.study_name for s in storage.get_all_studies()}:
        raise not_found
    return optuna.load_study(study_name=spec.name, storage=storage)


def counted_trials(study: optuna.Study) -> int:
    """Trials that used up part of the budget."""
    return len(study.get_trials(deepcopy=False, states=COUNTED_STATES))


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
        hp = spec.base_hparams(**suggest(trial, spec.search))
        config = hp.to_dict()
        trial.set_user_attr("config", config)
        trial.set_user_attr("worker", f"{socket.gethostname()}:{os.getpid()}:{self.device}")
        run = self.tracker.start_trial(self.parent_run_id, spec.name, trial.number, config)
        trial.set_user_attr("mlflow_run_id", run.run_id)
        if self.observer:
            self.observer.trial_started(trial.number, config)

        def on_eval(ev: Evaluation) -> bool:
            run.log_metrics({"dev_loss": ev.dev_loss, "train_loss": ev.train_loss, "lr": ev.lr},
                            ev.step)
            trial.report(ev.dev_loss, ev.step)
            if self.observer:
                self.observer.evaluated(trial.number, ev, spec.budget.steps)
            return trial.should_prune()

        try:
            data = load_search_data(spec.data, hp.context_length)
            result = train(hp, data, steps=spec.budget.steps, eval_every=spec.budget.eval_every,
                           on_eval=on_eval, device=self.device)
        except TrainingDiverged as exc:
            trial.set_user_attr("fail_reason", str(exc))
            run.finish(FAILED, tags={"harness.fail_reason": str(exc)})
            raise
        except BaseException as exc:  # a bug, Ctrl-C, out of memory: the run must not stay open
            trial.set_user_attr("fail_reason", f"{type(exc).__name__}: {exc}")
            run.finish(FAILED, tags={"harness.fail_reason": f"{type(exc).__name__}: {exc}"})
            raise

        figures = {"best_dev_loss": result.best_dev_loss, "n_params": result.n_params,
                   "steps_per_sec": result.steps_per_sec}
        for key, value in {**figures, "best_step": result.best_step, "steps": result.steps,
                           "last_dev_loss": result.dev_loss}.items():
            trial.set_user_attr(key, value)
        if result.stopped_early:
            run.finish(KILLED, figures, tags={"harness.state": "PRUNED"})
            raise optuna.TrialPruned(f"pruned at step {result.steps}")
        run.finish(FINISHED, figures, tags={"harness.state": "COMPLETE"})
        return result.best_dev_loss


# ---------------------------------------------------------------------------------------------
# Running a search


def run_search(spec: StudySpec, *, observer: SearchObserver | None = None,
               device: str = "cpu") -> optuna.Study:
    """Create or resume the study and run trials until it has `budget.n_trials` of them.

    n_trials is the study's total: a resumed study only runs what is missing. Diverging trials
    are recorded as failed and the study goes on. Writes the leaderboard CSV at the end.
    """
    read_words(spec.data.path)  # a bad data file fails here, before any storage is created
    storage = open_storage(spec)
    study = optuna.create_study(storage=storage, study_name=spec.name, direction="minimize",
                                pruner=build_pruner(spec), load_if_exists=True)
    done = counted_trials(study)
    remaining = spec.budget.n_trials - done
    if remaining <= 0:
        log.info("study %s already has %d of %d trials; nothing to run",
                 spec.name, done, spec.budget.n_trials)
        return study
    # Seed the sampler past the trials already run, so a resumed study does not repeat them.
    study.sampler = build_sampler(spec, seed_offset=len(study.trials))

    tracker = Tracker(spec.tracking.uri, spec.tracking.experiment or spec.name)
    parent = tracker.study_run(spec.name, _spec_yaml(spec))
    study.set_user_attr("mlflow_parent_run_id", parent)
    objective = _Objective(spec, tracker, parent, observer, device)

    def after_trial(study: optuna.Study, trial: FrozenTrial) -> None:
        if observer:
            best = _best_value(study)
            observer.trial_finished(trial, counted_trials(study), spec.budget.n_trials, best)

    status = KILLED
    try:
        with sealed_test_split():  # no trial can read the test split, even by mistake
            study.optimize(
                objective,
                n_trials=remaining,
                timeout=spec.budget.timeout,
                catch=(TrainingDiverged,),
                callbacks=[
                    after_trial,
                    # The total holds when several processes share the study.
                    optuna.study.MaxTrialsCallback(spec.budget.n_trials, states=COUNTED_STATES),
                ],
            )
        status = FINISHED
    finally:
        _write_leaderboard(spec, study, tracker, parent)
        tracker.end_run(parent, status)
    return study


def _best_value(study: optuna.Study) -> float | None:
    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    return min((t.value for t in complete if t.value is not None), default=None)


def _spec_yaml(spec: StudySpec) -> str:
    import yaml

    return yaml.safe_dump(dict(spec.raw), sort_keys=False)


def _write_leaderboard(spec: StudySpec, study: optuna.Study, tracker: Tracker, parent: str) -> None:
    out = paths.study_dir(spec.name) / "leaderboard.csv"
    out.parent.mkdir(parents=True, exist_ok=True)
    leaderboard.build(study).to_csv(out, index=False)
    tracker.log_artifact(parent, out)
    log.info("leaderboard written to %s", out)
