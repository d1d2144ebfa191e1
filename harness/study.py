"""The Optuna study: creating or joining it, the objective, and one worker's trial loop.

Each trial: suggest hyperparameters from the spec's space -> train() with a callback that logs to
MLflow and reports to the pruner -> its state and figures stored in Optuna (a TrialRecord) and
MLflow, and a complete trial's model kept in its MLflow run (`keep_trial_model`). A trial whose
worker died, was interrupted, or lost its tracking server is failed and re-queued, and does not
count against budget.n_trials. This module never touches the test split: workers run with it
sealed.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import socket
import tempfile
import time
import uuid
import warnings
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
import torch
from optuna.trial import FrozenTrial, TrialState

from harness import hparams, pareto, paths, precision, provenance, storage, trials
from harness.checkpoints import CheckpointStore
from harness.data import DataError, load_search_data, sealed_test_split, summarize
from harness.events import SearchObserver
from harness.hparams import HParams
from harness.model import MLP, ms_per_name, n_params, save_model
from harness.redact import redact
from harness.samplers import build_pruner, build_sampler, fit
from harness.spec import CategoricalParam, FloatParam, IntParam, Param, StudySpec, iter_params
from harness.storage import StudyNotFound, StudyRecord
from harness.tracking import (
    FAILED,
    FINISHED,
    KILLED,
    ChildRun,
    RunArtifacts,
    Tracker,
    TrackingError,
    check_reachable,
    is_server,
)
from harness.train import (
    Evaluation,
    OnCheckpoint,
    OnEval,
    TrainingDiverged,
    TrainResult,
    TrainState,
    train,
)
from harness.trials import TrialRecord

log = logging.getLogger(__name__)

# Faults that fail one trial, and the study goes on.
TRIAL_FAULTS = (TrainingDiverged, torch.cuda.OutOfMemoryError)
# Faults of the worker's surroundings, not of the trial: its trial is re-queued, the worker stops.
REQUEUED_FAULTS = (KeyboardInterrupt, TrackingError)


class TrialLost(RuntimeError):
    """Another process failed this worker's trial while it trained (a stale heartbeat)."""

    @classmethod
    def at(cls, number: int, step: int) -> TrialLost:
        return cls(f"trial {number} was failed by another worker (its heartbeat went stale) "
                   f"at step {step}; stopped training")


class BudgetConflict(ValueError):
    """A joining worker's study file disagrees with what the study recorded: a budget set on
    its command line, or fixed.precision auto where the study chose none."""


# ---------------------------------------------------------------------------------------------
# Opening the study's stores


def open_study_storage(spec: StudySpec) -> optuna.storages.BaseStorage:
    """The study's storage; a database one re-queues the trials of workers that stop beating."""
    return storage.open_storage(spec.storage, heartbeat_s=spec.workers.heartbeat_s,
                                on_stale=_RetryStale(spec))


def open_tracker(spec: StudySpec) -> Tracker:
    """The study's MLflow experiment: `tracking.experiment`, else the study's name."""
    return Tracker(spec.tracking.uri, spec.tracking.experiment or spec.name)


def open_checkpoints(spec: StudySpec, tracker: Tracker | None = None,
                     parent_run_id: str | None = None) -> CheckpointStore:
    """The study's trial checkpoints: a folder under the results root, shared through the
    study's MLflow run when the tracking store is a server (give its tracker and run)."""
    remote = None
    if tracker is not None and parent_run_id and is_server(spec.tracking.uri):
        remote = RunArtifacts(tracker, parent_run_id)
    return CheckpointStore(paths.study_dir(spec.name) / "checkpoints", remote)


def drop_orphan_checkpoints(spec: StudySpec, study: optuna.Study) -> list[int]:
    """Delete the checkpoints that no running or waiting trial will continue (a chain out of
    retries, a study stopped for good); returns their keys. Keeps all with keep_checkpoints."""
    if spec.budget.keep_checkpoints:
        return []
    live = {r.origin for r in trials.records(study)
            if r.state in (TrialState.RUNNING, TrialState.WAITING)}
    store = open_checkpoints(spec)
    orphans = [k for k in store.keys() if k not in live]
    for key in orphans:
        store.delete(key)
    return orphans


def load_study(spec: StudySpec) -> optuna.Study:
    """The existing study of a spec (no sampler or pruner needed). Raises StudyNotFound."""
    return storage.load(spec.storage, spec.name, heartbeat_s=spec.workers.heartbeat_s,
                        on_stale=_RetryStale(spec))


def close_run_failed(spec: StudySpec) -> trials.CloseRun:
    """A callback that closes a lost trial's MLflow run as FAILED."""
    return lambda run_id: open_tracker(spec).end_run(run_id, FAILED)


def reap(spec: StudySpec, study: optuna.Study) -> list[int]:
    """Fail and re-queue the running trials of dead worker processes on this host."""
    return trials.reap_dead(study, spec.workers.max_retry, close_run_failed(spec))


class _RetryStale:
    """Optuna's heartbeat callback for database storages: re-queue the stale trial (picklable)."""

    def __init__(self, spec: StudySpec) -> None:
        self.spec = spec

    def __call__(self, study: optuna.Study, trial: FrozenTrial) -> None:
        trials.retry(study, trial.number, self.spec.workers.max_retry,
                     close_run_failed(self.spec))


# ---------------------------------------------------------------------------------------------
# Creating the study, or joining it


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
    """The largest value hyperparameter `name` can take in the study: its searched values, and
    its fixed (or default) value unless every trial samples it (a conditional one may not)."""
    top_level = any(p.name == name for p in spec.search)
    values = [] if top_level else [spec.fixed.get(name, hparams.DEFAULTS[name])]
    for p in iter_params(spec.search):
        if p.name == name:
            values += list(p.choices) if isinstance(p, CategoricalParam) else [p.high]
    return max(values)


def prepare_study(spec: StudySpec, final_processes: int = 0, *, device: str = "cpu",
                  threads: int | None = None) -> tuple[optuna.Study, StudyRecord]:
    """Create the study (or open it), record its budget, open its parent MLflow run, and reap
    trials of dead workers. Safe when several processes prepare one study at once: one of them
    (the one that claims its creation in the storage) creates its identity and parent run.
    `final_processes`: the processes this run-study's finalize will retrain on (0: it will not
    finalize), which `budget.wall_time` keeps time for. With fixed.precision auto, the creator
    times the step on `device` with a worker's `threads` and records the choice.

    Bad inputs fail first (check_inputs), before any storage or run is created.
    """
    check_inputs(spec)
    # A database named by the user is opened first and the embedded journal last, so that a
    # bad URL of either kind fails before the other store is created.
    opened = open_study_storage(spec) if spec.storage else None
    tracker = open_tracker(spec)
    study = optuna.create_study(storage=opened or open_study_storage(spec),
                                study_name=spec.name, directions=spec.objective.directions,
                                load_if_exists=True)
    if spec.objective.pareto and spec.pruner.type != "none":
        log.warning("pruner %s is off: a Pareto study has two objectives and Optuna's pruners "
                    "judge one (optuna issue 3450); every trial trains its full budget.steps",
                    spec.pruner.type)
    now = time.time()
    if storage.claim(study, "created"):
        identity = uuid.uuid4().hex
        parent = tracker.study_run(spec.name, identity, _spec_yaml(spec))
        chosen = _precision(spec, study, None, device, threads)
        record = StudyRecord(identity, parent, spec.budget.n_trials, spec.budget.timeout,
                             timeout_start=now, created=now, **chosen,
                             **_budget(spec, final_processes),
                             **_warm_start(resolved(spec, chosen.get("precision")), study))
        for params in spec.enqueue:  # once, by the process that created the study
            study.enqueue_trial(dict(params), skip_if_exists=True)
    else:  # run-study owns the budget: a new total or timeout from it is recorded
        record = storage.wait_for_record(study)
        record = dataclasses.replace(record, n_trials=spec.budget.n_trials,
                                     timeout=spec.budget.timeout, timeout_start=now,
                                     **_budget(spec, final_processes),
                                     **_precision(spec, study, record, device, threads))
        tracker.study_run(spec.name, record.identity, _spec_yaml(spec))
    if record.precision_ms is not None:  # auto: the choice and the ms per step it read
        tracker.set_tags(record.parent_run_id, {
            "harness.precision": record.precision,
            **{f"harness.precision_ms.{p}": f"{ms:.2f}" for p, ms in record.precision_ms.items()}})
    storage.write_record(study, record)
    tracker.set_tags(record.parent_run_id, provenance.collect())  # this run-study's
    storage.write_stopped(study, None)  # patience is judged afresh by this run
    reap(spec, study)
    return study, record


def _budget(spec: StudySpec, final_processes: int) -> dict[str, Any]:
    """The StudyRecord fields a run-study sets from its budget (besides n_trials, timeout)."""
    p, f = spec.budget.patience, spec.finalize
    jobs = (1 if f.pick else f.top_k) * f.seeds  # Pareto mode retrains the picked trial only
    rounds = -(-jobs // min(final_processes, jobs)) if final_processes and f.enabled else 0
    return {"patience_trials": p.trials if p else None,
            "patience_min_delta": p.min_delta if p else 0.0,
            "wall_time": spec.budget.wall_time, "final_rounds": rounds}


# What decides a step's speed: the largest value of each is timed for fixed.precision auto.
_SIZES = ("context_length", "embedding_dim", "hidden_width", "hidden_layers", "batch_size")


def _precision(spec: StudySpec, study: optuna.Study, record: StudyRecord | None,
               device: str, threads: int | None) -> dict[str, Any]:
    """The StudyRecord fields of fixed.precision: none measured when the spec names one; with
    auto, the study's earlier choice (it stays), else the step of the largest model the study
    can sample timed here and now (harness.precision)."""
    if not spec.auto_precision:
        return {"precision": None, "precision_ms": None}
    if record is not None and record.precision is not None:
        return {}
    largest = spec.base_hparams(precision="fp32", **{n: _largest(spec, n) for n in _SIZES})
    timing = precision.measure(largest, summarize(spec.data).vocab_size, device=device,
                               threads=threads)
    log.info("precision auto: %s (ms per step of the largest model: %s)", timing.choice,
             timing.ms)
    chosen = {"precision": timing.choice, "precision_ms": timing.ms}
    if record is None:  # the study's creator, which alone measures (its "created" claim)
        return chosen
    # Two run-studies that resume a study at once, switching it from a named precision to
    # auto, both measure: both record the first choice stored for the record they read.
    return storage.settle(study, f"precision@{record.timeout_start!r}", chosen)


def resolved(spec: StudySpec, chosen: str | None) -> StudySpec:
    """`spec` as its trials run: fixed.precision auto replaced by the study's `chosen` one
    (StudyRecord.precision). Raises BudgetConflict when the study has none (its latest
    run-study named a precision)."""
    if not spec.auto_precision:
        return spec
    if chosen is None:
        raise BudgetConflict(
            f"fixed.precision is auto, but study {spec.name!r} was started with a precision "
            "named, so none was measured: name the same one here (--set fixed.precision=...)")
    return spec.with_precision(chosen)


def _warm_start(spec: StudySpec, study: optuna.Study) -> dict[str, Any]:
    """Add the earlier study's complete trials that fit this one's space, fixed values and
    steps, as finished trials (linked to their MLflow runs, not copied); warn of the others.
    Returns what to record: the earlier study and how many trials were added and skipped."""
    if spec.warm_start is None:
        return {}
    source = _earlier_study(spec)
    complete = sorted((r for r in trials.records(source)
                       if r.state == TrialState.COMPLETE and r.value is not None),
                      key=lambda r: r.value)[:spec.warm_start.top]
    added = 0
    for r in complete:
        dists, why = fit(spec.search, r.hparams)
        params = {k: r.hparams[k] for k in dists}
        values = _objective_values(spec, r)
        if why := why or _misfit(spec, r, params) or (
                None if values else f"it has no {spec.objective.pareto} figure"):
            log.warning("warm start: trial %d of %s skipped: %s", r.number, source.study_name,
                        why)
            continue
        warm = optuna.trial.create_trial(
            params=params, distributions=dists, values=values,
            intermediate_values=r.intermediate,
            user_attrs=dataclasses.replace(
                r, warm_from=r.warm_from or f"{source.study_name}#{r.number}").to_attrs())
        # When it ran (not when it was copied): "the last improvement" stays true.
        warm.datetime_start, warm.datetime_complete = r.started, r.completed
        study.add_trial(warm)
        added += 1
    return {"warm_from": source.study_name, "warm_trials": added,
            "warm_skipped": len(complete) - added}


def _objective_values(spec: StudySpec, r: TrialRecord) -> list[float] | None:
    """The objective values of the complete trial `r` in this study (None: a figure is
    missing): its best dev loss, then in Pareto mode its n_params or train seconds."""
    if spec.objective.pareto is None:
        return [r.value]
    extra = pareto.cost(r, spec.objective.pareto)
    return None if extra is None else [r.value, extra]


def _misfit(spec: StudySpec, r: TrialRecord, params: dict[str, Any]) -> str | None:
    """Why an earlier trial whose params fit the space still does not fit this study: another
    value of a hyperparameter this study fixes (the seed aside), or another step budget."""
    for k, v in spec.base_hparams(**params).to_dict().items():
        if k != "seed" and r.hparams.get(k) != v:
            return f"it trained with {k}={r.hparams.get(k)!r}, this study uses {v!r}"
    if r.steps != spec.budget.steps:
        return f"it trained {r.steps} steps, this study's trials train {spec.budget.steps}"
    return None


def _earlier_study(spec: StudySpec) -> optuna.Study:
    """warm_start.study: a study file (its storage and name), else a name in this storage."""
    assert spec.warm_start is not None
    name = spec.warm_start.study
    if name.endswith((".yaml", ".yml")):
        from harness.spec import load_spec

        path = Path(name) if Path(name).exists() else Path(spec.source).parent / name
        earlier = load_spec(path)
        return storage.load(earlier.storage, earlier.name)
    return storage.load(spec.storage, name)


def join_study(spec: StudySpec, explicit: Collection[str] = ()) -> tuple[optuna.Study,
                                                                         StudyRecord]:
    """An existing study and what it was created with, for a worker that joins it.

    `explicit` names the spec keys the user set on the command line: a budget set there that
    differs from the recorded one raises BudgetConflict (the study's budget is the recorded
    one; a worker does not change it).
    """
    study = load_study(spec)
    record = storage.read_record(study)
    if record is None:
        raise StudyNotFound(f"study {spec.name!r} was not prepared; start it with "
                            f"`harness run-study {spec.source}`")
    for key, mine, recorded in (("budget.n_trials", spec.budget.n_trials, record.n_trials),
                                ("budget.timeout", spec.budget.timeout, record.timeout),
                                ("budget.wall_time", spec.budget.wall_time, record.wall_time)):
        if key in explicit and mine != recorded:
            raise BudgetConflict(
                f"{key}={mine} was given, but study {spec.name!r} was started with "
                f"{'none' if recorded is None else recorded}: "
                "a worker uses the study's recorded budget. Drop the setting, or change the "
                f"study's budget with `harness run-study {spec.source} --set {key}=...`")
    return study, record


def choose_threads(spec: StudySpec, study: optuna.Study) -> tuple[int, int]:
    """Torch threads for a worker joining `study` on this host: `workers.threads`, else the
    cores shared with the study's live workers here. Returns (threads, live local workers)."""
    others = trials.local_workers(study)
    threads = spec.workers.threads or max(1, (os.cpu_count() or 1) // (others + 1))
    return threads, others


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


def fail_reason(exc: BaseException) -> str:
    """One line that says why a trial failed."""
    if isinstance(exc, TrainingDiverged | TrialLost | TrackingError):
        return str(exc)
    if isinstance(exc, torch.cuda.OutOfMemoryError):
        return f"out of GPU memory: {str(exc).splitlines()[0]}"
    return f"{type(exc).__name__}: {exc}".rstrip(": ")


class _Clock:
    """Seconds spent per phase of one trial (what `TrialRecord.times` records)."""

    def __init__(self, **start: float) -> None:
        self.seconds: dict[str, float] = dict(start)

    @contextlib.contextmanager
    def __call__(self, phase: str) -> Any:
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[phase] = self.seconds.get(phase, 0.0) + time.perf_counter() - t0


@dataclass
class _Objective:
    """Optuna objective: one trial = one call of `train`, tracked in MLflow, checkpointed."""

    spec: StudySpec
    tracker: Tracker
    record: StudyRecord
    observer: SearchObserver | None
    device: str
    checkpoints: CheckpointStore

    def __call__(self, trial: optuna.Trial, origin: int | None = None,
                 ask_s: float = 0.0) -> list[float]:
        """The trial's objective values: its best dev loss (and, in Pareto mode, its n_params
        or train seconds). `origin`: the first trial of its chain of retries (None: read it);
        `ask_s`: seconds the sampler took in study.ask."""
        spec = self.spec
        called, clock = time.perf_counter(), _Clock(sample=ask_s)
        if trials.is_surplus(trial.number, trials.records(trial.study), self.record.n_trials):
            trials.write(trial, TrialRecord(surplus=True))
            log.info("trial %d not run: other workers started the study's last trials",
                     trial.number)
            raise optuna.TrialPruned("surplus: beyond n_trials")
        with clock("sample"):
            hp = spec.base_hparams(**suggest(trial, spec.search))
        trials.write(trial, TrialRecord(config=hp.to_dict(), worker=trials.worker_id(self.device),
                                        threads=torch.get_num_threads(),
                                        commit=provenance.commit()))
        data = load_search_data(spec.data, hp.context_length)
        if spec.objective.bounds("n_params"):
            # Known before training: a model over the bound is never trained.
            size = n_params(MLP.from_hparams(hp, len(data.vocab)))
            if not self._judge(trial, {"n_params": size}, n_params=size).feasible:
                raise optuna.TrialPruned("infeasible before training")
        if origin is None:
            origin = trials.current(trial).origin
        resume = self._resume_state(trial, origin, hp)
        run, report = self._open_run(trial, hp, origin, resume, clock)
        clock.seconds["setup"] = (time.perf_counter() - called
                                  - (sum(clock.seconds.values()) - ask_s))
        before_train = dict(clock.seconds)
        if self.observer:
            self.observer.trial_started(trial.number, hp.to_dict())
        try:
            result = train(hp, data, steps=spec.budget.steps, eval_every=spec.budget.eval_every,
                           on_eval=self._on_eval(trial, run, report, clock),
                           device=self.device,
                           checkpoint_every=spec.budget.checkpoint_interval,
                           on_checkpoint=self._on_checkpoint(trial, origin, clock),
                           resume=resume)
        except BaseException as exc:  # diverged, out of memory, lost, a bug, Ctrl-C: close
            _close_failed(trial, run, exc)
            raise

        record = self._record(trial, run, hp, data.vocab.itos, result, clock, before_train)
        if result.stopped_early:
            raise optuna.TrialPruned(f"pruned at step {result.steps}")
        values = _objective_values(spec, record)
        assert values is not None  # a trained trial has every figure
        return values

    def _open_run(self, trial: optuna.Trial, hp: HParams, origin: int,
                  resume: TrainState | None,
                  clock: _Clock) -> tuple[ChildRun, Callable[[int, float], None]]:
        """The trial's MLflow run, and how to report its dev losses; a resumed trial's run and
        report get the curve its chain already had."""
        with clock("tracking"):
            run = self.tracker.start_trial(
                self.record.parent_run_id, self.spec.name, trial.number, hp.to_dict(),
                {**provenance.collect(), "harness.device": self.device,
                 "harness.threads": str(torch.get_num_threads()), **_resume_tags(origin, resume)})
        trials.write(trial, TrialRecord(mlflow_run_id=run.run_id))
        report = self._reporter(trial)
        if resume is not None:
            trials.write(trial, TrialRecord(resumed_from_step=resume.step))
            for (step, dev_loss), (_, train_loss) in zip(resume.dev_curve,
                                                         resume.train_curve, strict=True):
                run.log_metrics({"dev_loss": dev_loss, "train_loss": train_loss}, step)
                report(step, dev_loss)
        return run, report

    def _record(self, trial: optuna.Trial, run: ChildRun, hp: HParams, itos: Sequence[str],
                result: TrainResult, clock: _Clock,
                before_train: dict[str, float]) -> TrialRecord:
        """Store what training found, judge the constraints, keep a complete trial's model,
        close the run, store where the time went. Returns the trial's figures."""
        record = TrialRecord(
            value=result.best_dev_loss, best_dev_loss=result.best_dev_loss,
            best_step=result.best_step, steps=result.steps, last_dev_loss=result.dev_loss,
            train_s=result.elapsed_s, n_params=result.n_params,
            steps_per_sec=result.steps_per_sec)
        measured = {"n_params": result.n_params, "steps_per_sec": result.steps_per_sec}
        if self.spec.objective.bounds("ms_per_name"):
            itos = load_search_data(self.spec.data, result.model.context_length).vocab.itos
            measured["ms_per_name"] = ms_per_name(result.model, itos)
            record = dataclasses.replace(record, ms_per_name=measured["ms_per_name"])
        trials.write(trial, record)
        self._judge(trial, measured)
        figures = {"best_dev_loss": result.best_dev_loss, "n_params": result.n_params,
                   "steps_per_sec": result.steps_per_sec}
        with clock("tracking"):
            if not result.stopped_early:
                keep_trial_model(run, result.model, hp, itos)
            run.finish(KILLED if result.stopped_early else FINISHED, figures,
                       tags={"harness.state": "PRUNED" if result.stopped_early else "COMPLETE"})
        trials.write(trial, TrialRecord(times=_times(clock, before_train, result)))
        return record

    def _judge(self, trial: optuna.Trial, measured: dict[str, float],
               **figures: Any) -> TrialRecord:
        """Record the trial's constraint violations for what is measured (a figure not
        measured yet counts as within its bound) and why it is infeasible, if it is."""
        constraints = self.spec.objective.constraints
        if not constraints:
            return TrialRecord()
        violations = [c.violation(measured[c.metric]) if c.metric in measured else 0.0
                      for c in constraints]
        def figure(x: float) -> str:
            return f"{x:,.0f}" if abs(x) >= 100 else f"{x:.3g}"

        reason = "; ".join(
            f"{c.metric} {figure(measured[c.metric])} is "
            f"{'above' if c.bound == 'max' else 'below'} its {c.bound} {figure(c.value)}"
            for c, v in zip(constraints, violations, strict=True) if v > 0)
        record = TrialRecord(violations=violations, infeasible=reason or None, **figures)
        trials.write(trial, record)
        known = trial.constraints  # set once each, by the first call that measures its figure
        for c, v in zip(constraints, violations, strict=True):  # what TPE reads: > 0 infeasible
            key = f"{c.metric}.{c.bound}"
            if c.metric in measured and key not in known:
                trial.set_constraint(key, v)
        return record

    def _reporter(self, trial: optuna.Trial) -> Callable[[int, float], None]:
        """Records the trial's dev loss at a step: Optuna's intermediate value (what pruners
        read), or in Pareto mode, where Optuna keeps none, the trial's `dev_curve`."""
        if not self.spec.objective.pareto:
            return lambda step, dev_loss: trial.report(dev_loss, step)
        curve: list[tuple[int, float]] = []

        def report(step: int, dev_loss: float) -> None:
            curve.append((step, dev_loss))
            trials.write(trial, TrialRecord(dev_curve=list(curve)))

        return report

    def _on_eval(self, trial: optuna.Trial, run: ChildRun,
                 report: Callable[[int, float], None], clock: _Clock) -> OnEval:
        """Log each evaluation, report it, and ask the pruner whether to stop."""
        watch = storage.heartbeats(trial.study)  # another worker may fail this trial as stale
        steps = self.spec.budget.steps
        prunes = not self.spec.objective.pareto  # Optuna prunes on one objective only

        def on_eval(ev: Evaluation) -> bool:
            with clock("storage"):
                if watch and storage.trial_state(trial) != TrialState.RUNNING:
                    raise TrialLost.at(trial.number, ev.step)
            with clock("tracking"):
                run.log_metrics({"dev_loss": ev.dev_loss, "train_loss": ev.train_loss,
                                 "lr": ev.lr}, ev.step)
            with clock("storage"):  # the pruner's reading and deciding included
                report(ev.step, ev.dev_loss)
                stop = prunes and trial.should_prune()
            if self.observer:
                self.observer.evaluated(trial.number, ev.step, steps, ev.dev_loss)
            return stop

        return on_eval

    def _on_checkpoint(self, trial: optuna.Trial, origin: int, clock: _Clock) -> OnCheckpoint:
        """Save the chain's checkpoint and record its step and the time saving took."""

        def on_checkpoint(state: TrainState) -> None:
            with clock("checkpoints"):
                self.checkpoints.save(origin, state)
            try:
                trials.write(trial, TrialRecord(checkpoint_step=state.step,
                                                checkpoint_s=clock.seconds["checkpoints"]))
            except optuna.exceptions.UpdateFinishedTrialError:  # failed by another, just now
                raise TrialLost.at(trial.number, state.step) from None

        return on_checkpoint

    def _resume_state(self, trial: optuna.Trial, origin: int, hp: HParams) -> TrainState | None:
        """The checkpoint a retry continues from; None for a new trial or one that cannot be
        used (warned: the trial starts from step 0)."""
        if origin == trial.number:
            return None
        state = self.checkpoints.load(origin)
        if state is not None and (state.config != hp.to_dict()
                                  or state.steps != self.spec.budget.steps):
            log.warning("the checkpoint of trial %d was made with another config or "
                        "budget.steps; trial %d starts again from step 0", origin, trial.number)
            return None
        if state is not None:
            log.info("trial %d resumes trial %d from its checkpoint at step %d", trial.number,
                     origin, state.step)
        return state


# A complete trial's model (its best evaluation's weights, a model file): an artifact of its
# MLflow run, so the UI offers it and finalize, on any machine that reaches the tracking
# store, can make it a member of the final ensemble instead of training that seed again.
TRIAL_MODEL_ARTIFACT = "model.pt"


def keep_trial_model(run: ChildRun, model: MLP, hp: HParams, itos: Sequence[str]) -> None:
    """Log `model` as the run's `TRIAL_MODEL_ARTIFACT`."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / TRIAL_MODEL_ARTIFACT
        save_model(path, model, hp, itos)
        run.log_artifact(path)


def _times(clock: _Clock, before_train: dict[str, float],
           result: TrainResult) -> dict[str, float]:
    """The trial's seconds per phase: what the clock measured (its callbacks' checkpoints,
    tracking and storage included), evaluation as train() measured it, and training as the
    rest of train()'s time."""
    seconds = {"checkpoints": 0.0, **clock.seconds}
    in_callbacks = sum(v - before_train.get(k, 0.0) for k, v in seconds.items())
    seconds["eval"] = result.eval_s
    seconds["train"] = result.elapsed_s - result.eval_s - in_callbacks
    return {k: round(v, 4) for k, v in seconds.items()}


def _resume_tags(origin: int, resume: TrainState | None) -> dict[str, str]:
    if resume is None:
        return {}
    return {"harness.resumed_from_step": str(resume.step), "harness.resumes_trial": str(origin)}


def _close_failed(trial: optuna.Trial, run: Any, exc: BaseException) -> None:
    """Record why a trial failed (unless another process already ended it) and close its run."""
    reason = fail_reason(exc)
    if isinstance(exc, torch.cuda.OutOfMemoryError):
        torch.cuda.empty_cache()  # the next trial on this worker starts clean
    if not isinstance(exc, TrialLost):
        with contextlib.suppress(optuna.exceptions.UpdateFinishedTrialError):
            trials.write(trial, TrialRecord(fail_reason=reason))  # unless failed by another
    if isinstance(exc, TrackingError):
        return  # the tracking server is gone: the run cannot be closed now
    try:
        run.finish(FAILED, tags={"harness.fail_reason": reason})
    except TrackingError as err:
        log.warning("could not close the MLflow run of trial %d: %s", trial.number, err)


# ---------------------------------------------------------------------------------------------
# One worker's trial loop


def work(spec: StudySpec, *, observer: SearchObserver | None = None, device: str = "cpu",
         threads: int | None = None, explicit: Collection[str] = ()) -> None:
    """Run trials of an existing study until it has its recorded n_trials (all workers
    together) or its recorded timeout has passed.

    This is one worker, local or on another machine. Its sampler seed offset is drawn from a
    counter in the storage, so no two processes (workers, resumes) propose the same trials.
    `threads` torch threads (default: choose_threads). Raises TrackingError when the tracking
    server stays unreachable (the trial it was running is re-queued).
    """
    study, record = join_study(spec, explicit)
    spec = resolved(spec, record.precision)  # every worker trains in the study's precision
    torch.set_num_threads(threads or choose_threads(spec, study)[0])
    trials.register_worker(study, torch.get_num_threads())
    study.sampler = build_sampler(spec, seed_offset=1000 * storage.next_number(study, "sampler"))
    study.pruner = build_pruner(spec)
    tracker = open_tracker(spec)
    host = socket.gethostname()
    tracker.set_tags(record.parent_run_id, {  # every host that worked on the study
        f"harness.worker_host.{host}": f"{torch.get_num_threads()} threads, {device}"})
    objective = _Objective(spec, tracker, record, observer, device,
                           open_checkpoints(spec, tracker, record.parent_run_id))
    recs = trials.records(study)
    if observer:
        observer.search_started(record)
    with sealed_test_split():  # no trial can read the test split, even by mistake
        while not trials.budget_taken(recs, record.n_trials):
            if record.deadline is not None and time.time() >= record.deadline:
                log.info("budget.timeout reached; no new trials")
                break
            if record.patience_trials and (reason := trials.stalled(
                    recs, record.patience_trials, record.patience_min_delta)):
                storage.write_stopped(study, reason)
                log.info("budget.patience: %s; no new trials", reason)
                break
            if record.wall_time is not None and (reason := trials.out_of_wall_time(
                    recs, time.time(), record.timeout_start + record.wall_time,
                    steps=spec.budget.steps, final_rounds=record.final_rounds,
                    top_k=None if spec.finalize.pick else spec.finalize.top_k,
                    retraining_s=lambda s: spec.finalize.retraining_s(s, spec.budget.steps))):
                storage.write_stopped(study, reason)
                log.info("%s; no new trials", reason)
                break
            number = _run_trial(spec, study, objective)
            recs = trials.records(study)
            if observer and number is not None and not recs[number].surplus:
                observer.trial_finished(recs[number], trials.counted(recs), record.n_trials,
                                        trials.best_value(recs))


def _run_trial(spec: StudySpec, study: optuna.Study, objective: _Objective) -> int | None:
    """Ask for a trial, run the objective with heartbeats, tell its outcome. Returns the
    finished trial's number; None when another process took the trial over."""
    storage.fail_stale(study)  # as study.optimize does before each trial
    with warnings.catch_warnings():  # Optuna warns that only study.optimize beats: this does
        warnings.filterwarnings("ignore", "Heartbeat of storage", UserWarning)
        asked = time.perf_counter()
        trial = study.ask()  # the sampler's joint (multivariate) sampling happens here
        asked = time.perf_counter() - asked
    value, state = None, TrialState.FAIL
    origin = trials.current(trial).origin
    with storage.heartbeat(study, trial):
        try:
            value, state = objective(trial, origin, asked), TrialState.COMPLETE
        except optuna.TrialPruned:
            state = TrialState.PRUNED
        except TrialLost as exc:
            log.warning("%s", exc)
            return None  # failed and re-queued by the process that found it stale
        except TRIAL_FAULTS:
            pass  # failed, with its reason; the study goes on
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
        trials.write(trial, TrialRecord(fail_reason=fail_reason(exc)))
    study.tell(trial, state=TrialState.FAIL, skip_if_finished=True)
    if isinstance(exc, REQUEUED_FAULTS):
        close = None if isinstance(exc, TrackingError) else close_run_failed(spec)
        trials.retry(study, trial.number, spec.workers.max_retry, close)


def _spec_yaml(spec: StudySpec) -> str:
    """The study file as run (overrides applied), credentials masked."""
    import yaml

    return redact(yaml.safe_dump(dict(spec.raw), sort_keys=False))
