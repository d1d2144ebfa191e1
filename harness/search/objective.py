"""The objective: one trial is one call of `train`, tracked in MLflow, checkpointed.

Each trial: suggest hyperparameters from the spec's space -> train() with a callback that logs
to MLflow and reports to the pruner -> its state and figures stored in Optuna (a TrialRecord)
and MLflow, and a complete trial's model kept in its MLflow run (`keep_trial_model`). A trial
whose worker died, was interrupted, or lost its tracking server is failed and re-queued by the
worker loop (harness.search.worker), and does not count against budget.n_trials.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
import torch
from optuna.trial import TrialState

from harness.config import StudySpec
from harness.config.hparams import HParams
from harness.errors import MemoryBudgetExceeded, TrackingError, TrainingDiverged, TrialLost
from harness.search import constraints, counting, liveness, pareto, records, storage
from harness.search.checkpoints import CheckpointStore
from harness.search.events import SearchObserver
from harness.search.records import StudyRecord, TrialRecord
from harness.search.space import suggest
from harness.tracking import FAILED, FINISHED, KILLED, ChildRun, Tracker
from harness.training import memory
from harness.training.data import load_search_data, summarize
from harness.training.model import MLP, ms_per_name, save_model
from harness.training.train import Evaluation, OnCheckpoint, OnEval, TrainResult, TrainState, train
from harness.util import provenance

log = logging.getLogger(__name__)

# Faults that fail one trial, and the study goes on.
TRIAL_FAULTS = (TrainingDiverged, torch.cuda.OutOfMemoryError, MemoryBudgetExceeded)
# Faults of the worker's surroundings, not of the trial: its trial is re-queued, the worker stops.
REQUEUED_FAULTS = (KeyboardInterrupt, TrackingError)


def fail_reason(exc: BaseException) -> str:
    """One line that says why a trial failed."""
    if isinstance(exc, TrainingDiverged | TrialLost | TrackingError | MemoryBudgetExceeded):
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
class Objective:
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
        if counting.is_surplus(trial.number, records.records(trial.study), self.record.n_trials):
            records.write(trial, TrialRecord(surplus=True))
            log.info("trial %d not run: other workers started the study's last trials",
                     trial.number)
            raise optuna.TrialPruned("surplus: beyond n_trials")
        with clock("sample"):
            hp = spec.base_hparams(**suggest(trial, spec.search))
        records.write(trial, TrialRecord(config=hp.to_dict(),
                                         worker=liveness.worker_id(self.device),
                                         threads=torch.get_num_threads(),
                                         commit=provenance.commit()))
        if spec.objective.bounds("n_params"):
            # Known before training: a model over the bound is never trained (nor built).
            size = memory.n_params(hp, summarize(spec.data).vocab_size)
            if not constraints.judge(spec, trial, {"n_params": size}, n_params=size).feasible:
                raise optuna.TrialPruned("infeasible before training")
        # Memory is checked before it is spent: examples that cannot fit fail the trial here.
        data = load_search_data(spec.data, hp.context_length)
        if origin is None:
            origin = records.current(trial).origin
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
        values = pareto.objective_values(spec, record)
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
        records.write(trial, TrialRecord(mlflow_run_id=run.run_id))
        report = self._reporter(trial)
        if resume is not None:
            records.write(trial, TrialRecord(resumed_from_step=resume.step))
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
        records.write(trial, record)
        constraints.judge(self.spec, trial, measured)
        figures = {"best_dev_loss": result.best_dev_loss, "n_params": result.n_params,
                   "steps_per_sec": result.steps_per_sec}
        with clock("tracking"):
            if not result.stopped_early:
                keep_trial_model(run, result.model, hp, itos)
            run.finish(KILLED if result.stopped_early else FINISHED, figures,
                       tags={"harness.state": "PRUNED" if result.stopped_early else "COMPLETE"})
        records.write(trial, TrialRecord(times=_times(clock, before_train, result)))
        return record

    def _reporter(self, trial: optuna.Trial) -> Callable[[int, float], None]:
        """Records the trial's dev loss at a step: Optuna's intermediate value (what pruners
        read), or in Pareto mode, where Optuna keeps none, the trial's `dev_curve`."""
        if not self.spec.objective.pareto:
            return lambda step, dev_loss: trial.report(dev_loss, step)
        curve: list[tuple[int, float]] = []

        def report(step: int, dev_loss: float) -> None:
            curve.append((step, dev_loss))
            records.write(trial, TrialRecord(dev_curve=list(curve)))

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
                records.write(trial, TrialRecord(checkpoint_step=state.step,
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
            records.write(trial, TrialRecord(fail_reason=reason))  # unless failed by another
    if isinstance(exc, TrackingError):
        return  # the tracking server is gone: the run cannot be closed now
    try:
        run.finish(FAILED, tags={"harness.fail_reason": reason})
    except TrackingError as err:
        log.warning("could not close the MLflow run of trial %d: %s", trial.number, err)
