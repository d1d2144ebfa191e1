"""The final model: chosen on dev among the best trials, then evaluated once on the test split.

Finalize is a transaction that can always be finished. It runs in phases, each in a module of
its own, and whatever interrupts it, running it again finishes the job:

1. claim (`claim`): one process at a time, by a claim in the study's storage that names its
   claimant; the claim of a process that died is taken over;
2. candidates (`candidates`): the `finalize.top_k` best complete trials, distinct configs; in
   Pareto mode the one trial of the front that `finalize.pick` picks;
3. retrain (`retrain`): each candidate with the same `train` function on fresh seeds
   1..`finalize.seeds`, here or in spawned processes; finished retrainings are kept and
   unfinished ones continue from their checkpoints;
4. choose (`choose`): the candidate with the lowest *mean* dev loss over the fresh seeds; then
   the final rules the study enables reshape the final model (`rules`: the ensemble, fill),
   which is saved before anything else happens;
5. test (`evaluate`): only then is the test split read, and the evaluation is counted in the
   same write that records its result: a finalize killed after it publishes that result when
   run again, and never reads the test split a second time;
6. publish (`publish`): the model file, a final MLflow run, the registry, final.json, and last
   the study's record of the result.
"""

from __future__ import annotations

import logging
import time

import optuna

from harness.config import StudySpec
from harness.errors import AlreadyFinalized
from harness.final import claim, evaluate, publish
from harness.final.candidates import candidates, plan_steps
from harness.final.choose import Context, choose
from harness.final.data_note import DataChanges
from harness.final.events import FinalizeObserver
from harness.final.result import FinalResult, Section
from harness.final.retrain import plan_jobs, retrain
from harness.final.rules import RULES
from harness.search import data_guard, records
from harness.search.liveness import load_study
from harness.util import failpoints

log = logging.getLogger(__name__)


def finalize(spec: StudySpec, *, force: bool = False, device: str = "cpu", workers: int = 1,
             observer: FinalizeObserver | None = None,
             allow_data_change: bool = False) -> FinalResult:
    """Choose the final config on dev, evaluate it once on test, save and record it; or
    finish the finalize that an interruption left.

    Raises AlreadyFinalized when the study was finalized (unless `force`: the test split is
    then evaluated again, and counted) or a live process is finalizing it, NothingToFinalize
    when it has no complete trial, and DataChanged when its data changed (unless
    `allow_data_change`).
    """
    study = load_study(spec)
    record = records.read_record(study)
    if record is not None:
        record = data_guard.check(spec, study, record, allow_data_change)
    _refuse_if_published(study, force)
    held = claim.acquire(study)
    with held.beating():
        _refuse_if_published(study, force)  # by the holder that just gave the claim up
        if (recorded := _unpublished(study)) is not None:  # killed after its test evaluation
            if observer:
                observer.resuming(recorded.test_evaluations)
            return publish.publish(spec, study, recorded)
        if not force and evaluate.count(study) and evaluate.recorded(study) is None:
            raise AlreadyFinalized(
                f"study {study.study_name!r} had its test split evaluated by an earlier "
                "version of the harness, which was interrupted before it recorded the result; "
                "use --force to evaluate it again (the record counts it)")
        changes = data_guard.accepted(record)
        extra: list[Section] = [DataChanges(tuple(changes))] if changes else []
        return _transact(spec, study, workers, device, observer, extra)


def _unpublished(study: optuna.Study) -> FinalResult | None:
    """The result of the study's latest test evaluation when it was never published (its
    finalize was killed after the evaluation), else None."""
    recorded = evaluate.recorded(study)
    published = records.read_final(study)
    if recorded is None or (published is not None and published.get("test_evaluations", 0)
                            >= recorded.test_evaluations):
        return None
    return recorded


def _transact(spec: StudySpec, study: optuna.Study, workers: int, device: str,
              observer: FinalizeObserver | None, extra: list[Section]) -> FinalResult:
    """Phases 2-6, for a study whose test split has not been evaluated (or is forced)."""
    started = time.time()
    pool = candidates(study, spec, observer)
    for cand in pool:
        cand.steps = plan_steps(cand, spec)
    seeds = tuple(range(1, spec.finalize.seeds + 1))
    jobs = plan_jobs(pool, seeds)
    processes = min(workers, len(jobs))
    if observer:
        observer.retrainings_planned(jobs, processes)
    retrain(spec, pool, jobs, device=device, processes=processes, observer=observer)
    # Seconds per step of one retraining in one process, all told (a resumed finalize's
    # retrainings kept from before included), with a tenth more for starting processes.
    step_s = 1.1 * max((r.train_s + r.eval_s) / c.steps for c in pool for r in c.retrained)
    ctx = Context(spec, study, seeds, step_s, device, workers, observer)
    choice = choose(pool)
    enabled = [rule for rule in RULES if rule.applies(spec)]
    for rule in enabled:
        choice = rule.apply(ctx, choice)
    names = publish.save_choice(spec, choice, seeds)
    failpoints.reached("finalize:chosen")
    tested = evaluate.evaluate_test(spec, choice)
    sections = {rule.name: s for rule in enabled
                if (s := rule.section(choice, tested.named)) is not None}
    sections |= {s.KEY: s for s in extra}
    result = publish.assemble(spec, pool, choice, seeds, names, tested, sections, started)
    result = evaluate.record(study, result)
    failpoints.reached("finalize:recorded")
    return publish.publish(spec, study, result)


def _refuse_if_published(study: optuna.Study, force: bool) -> None:
    """Raise AlreadyFinalized when the study's latest result is published (unless forced: the
    test split is then evaluated again, and counted)."""
    final = records.read_final(study)
    if final is None or force or _unpublished(study) is not None:
        return
    result = FinalResult.from_dict(final)
    raise AlreadyFinalized(
        f"study {study.study_name!r} was already finalized: test loss {result.test_mean:.4f} "
        f"+- {result.test_std:.4f} (trial {result.chosen_trial}), on {result.finished_at}. "
        "The test split is evaluated once; use --force to evaluate it again (the record "
        "counts it).", result)
