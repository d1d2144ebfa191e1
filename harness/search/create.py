"""Creating a study, or joining it: what every process that works on a study does first.

`prepare_study` (run-study) checks the inputs before anything is created, creates the study or
opens it, claims its creation (one process of any number racing creates its identity, its
parent MLflow run and, with fixed.precision auto, measures the precision), records its budget
(`StudyRecord`), and reaps the trials of dead workers. `join_study` (a worker) reads what was
recorded and refuses a budget that disagrees with it.
"""

from __future__ import annotations

import dataclasses
import logging
import time
import uuid
from collections.abc import Collection
from typing import Any

import optuna
import yaml

from harness.config import StudySpec
from harness.errors import BudgetConflict, DataError, StudyNotFound
from harness.search import claims, data_guard, records, warm_start
from harness.search.liveness import load_study, open_study_storage, reap
from harness.search.records import StudyRecord
from harness.tracking import check_reachable, open_tracker
from harness.training import precision
from harness.training.data import summarize
from harness.util import provenance
from harness.util.redact import redact

log = logging.getLogger(__name__)


def check_inputs(spec: StudySpec) -> None:
    """Everything that can be checked before anything is created: the data file, the split,
    the batch sizes against the training examples, a tracking server's reachability."""
    summary = summarize(spec.data)
    batch = spec.largest("batch_size")
    if batch > summary.train_examples:
        raise DataError(f"batch_size {batch} is larger than the {summary.train_examples} "
                        f"training examples of {spec.data.path or 'the bundled names'}")
    check_reachable(spec.tracking.uri)


def prepare_study(spec: StudySpec, final_processes: int = 0, *, device: str = "cpu",
                  threads: int | None = None,
                  allow_data_change: bool = False) -> tuple[optuna.Study, StudyRecord]:
    """Create the study (or open it), record its budget, open its parent MLflow run, and reap
    trials of dead workers. Safe when several processes prepare one study at once: one of them
    (the one that claims its creation in the storage) creates its identity and parent run.
    `final_processes`: the processes this run-study's finalize will retrain on (0: it will not
    finalize), which `budget.wall_time` keeps time for. With fixed.precision auto, the creator
    times the step on `device` with a worker's `threads` and records the choice. The creator
    records the data's fingerprint; a resume on other data raises DataChanged (unless
    `allow_data_change`: harness.search.data_guard).

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
    if claims.claim(study, "created"):
        identity = uuid.uuid4().hex
        parent = tracker.study_run(spec.name, identity, _spec_yaml(spec))
        chosen = _precision(spec, study, None, device, threads)
        record = StudyRecord(identity, parent, spec.budget.n_trials, spec.budget.timeout,
                             timeout_start=now, created=now, **chosen,
                             data=data_guard.first_record(spec),
                             **_budget(spec, final_processes),
                             **warm_start.add_trials(resolved(spec, chosen.get("precision")),
                                                     study))
        for params in spec.enqueue:  # once, by the process that created the study
            study.enqueue_trial(dict(params), skip_if_exists=True)
    else:  # run-study owns the budget: a new total or timeout from it is recorded
        record = data_guard.check(spec, study, records.wait_for_record(study),
                                  allow_data_change)
        record = dataclasses.replace(record, n_trials=spec.budget.n_trials,
                                     timeout=spec.budget.timeout, timeout_start=now,
                                     **_budget(spec, final_processes),
                                     **_precision(spec, study, record, device, threads))
        tracker.study_run(spec.name, record.identity, _spec_yaml(spec))
    if record.precision_ms is not None:  # auto: the choice and the ms per step it read
        tracker.set_tags(record.parent_run_id, {
            "harness.precision": str(record.precision),
            **{f"harness.precision_ms.{p}": f"{ms:.2f}" for p, ms in record.precision_ms.items()}})
    records.write_record(study, record)
    tracker.set_tags(record.parent_run_id, provenance.collect())  # this run-study's
    records.write_stopped(study, None)  # patience is judged afresh by this run
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
    can sample timed here and now (harness.training.precision)."""
    if not spec.auto_precision:
        return {"precision": None, "precision_ms": None}
    if record is not None and record.precision is not None:
        return {}
    largest = spec.base_hparams(precision="fp32", **{n: spec.largest(n) for n in _SIZES})
    timing = precision.measure(largest, summarize(spec.data).vocab_size, device=device,
                               threads=threads)
    log.info("precision auto: %s (ms per step of the largest model: %s)", timing.choice,
             timing.ms)
    chosen = {"precision": timing.choice, "precision_ms": timing.ms}
    if record is None:  # the study's creator, which alone measures (its "created" claim)
        return chosen
    # Two run-studies that resume a study at once, switching it from a named precision to
    # auto, both measure: both record the first choice stored for the record they read.
    return claims.settle(study, f"precision@{record.timeout_start!r}", chosen)


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


def join_study(spec: StudySpec, explicit: Collection[str] = (),
               allow_data_change: bool = False) -> tuple[optuna.Study, StudyRecord]:
    """An existing study and what it was created with, for a worker that joins it.

    `explicit` names the spec keys the user set on the command line: a budget set there that
    differs from the recorded one raises BudgetConflict (the study's budget is the recorded
    one; a worker does not change it). Other data than the study's raises DataChanged
    (unless `allow_data_change`).
    """
    study = load_study(spec)
    record = records.read_record(study)
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
    return study, data_guard.check(spec, study, record, allow_data_change)


def _spec_yaml(spec: StudySpec) -> str:
    """The study file as run (overrides applied), credentials masked."""
    return redact(yaml.safe_dump(dict(spec.raw), sort_keys=False))
