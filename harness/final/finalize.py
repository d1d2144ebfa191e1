"""The final model: chosen on dev among the best trials, then evaluated once on the test split.

`finalize` runs in phases, each in a module of its own:

1. claim (here): one process at a time finalizes a study, by a claim in the study's storage,
   and a study already finalized is refused unless forced;
2. candidates (`candidates`): the `finalize.top_k` best complete trials, distinct configs; in
   Pareto mode the one trial of the front that `finalize.pick` picks;
3. retrain (`retrain`): each candidate with the same `train` function on fresh seeds
   1..`finalize.seeds`, here or in spawned processes;
4. choose (`choose`): the candidate with the lowest *mean* dev loss over the fresh seeds; then
   the final rules the study enables reshape the final model (`rules`: the ensemble, fill);
5. test (`evaluate`): only then is the test split read, for the chosen models; each
   evaluation is counted in the storage before it happens;
6. record (`publish`): the result in the study's storage, a final MLflow run under the study's
   run, `final.json` and `model.pt` in the study's folder.
"""

from __future__ import annotations

import logging
import time

import optuna

from harness.config import StudySpec
from harness.errors import AlreadyFinalized
from harness.final.candidates import candidates, plan_steps
from harness.final.choose import Context, choose
from harness.final.evaluate import TEST_COUNTER, evaluate_test
from harness.final.events import FinalizeObserver
from harness.final.publish import publish
from harness.final.result import FinalResult
from harness.final.retrain import plan_jobs, retrain
from harness.final.rules import RULES
from harness.search import claims, records
from harness.search.liveness import load_study

log = logging.getLogger(__name__)

FINALIZE_CLAIM = "finalize"


def finalize(spec: StudySpec, *, force: bool = False, device: str = "cpu", workers: int = 1,
             observer: FinalizeObserver | None = None) -> FinalResult:
    """Choose the final config on dev, evaluate it once on test, save and record it.

    Raises AlreadyFinalized when the study was finalized (unless `force`) or another process
    is finalizing it, and NothingToFinalize when it has no complete trial.
    """
    study = load_study(spec)
    started = time.time()
    pool = candidates(study, spec, observer)
    _claim(study, force)
    for cand in pool:
        cand.steps = plan_steps(cand, spec)
    seeds = tuple(range(1, spec.finalize.seeds + 1))
    jobs = plan_jobs(pool, seeds)
    processes = min(workers, len(jobs))
    if observer:
        observer.retrainings_planned(jobs, processes)
    retrained = time.time()
    retrain(spec, pool, jobs, device=device, processes=processes, observer=observer)
    # Seconds per step, all told (processes started, evaluations), in rounds of `processes`.
    step_s = (time.time() - retrained) / (-(-len(jobs) // processes)) / max(
        c.steps for c in pool)
    ctx = Context(spec, study, seeds, step_s, device, workers, observer)
    choice = choose(pool)
    enabled = [rule for rule in RULES if rule.applies(spec)]
    for rule in enabled:
        choice = rule.apply(ctx, choice)
    tested = evaluate_test(study, spec, choice)
    sections = {rule.name: s for rule in enabled
                if (s := rule.section(choice, tested.named)) is not None}
    return publish(spec, study, pool, choice, seeds, tested, sections, started)


def _claim(study: optuna.Study, force: bool) -> None:
    """Phase 1: exactly one process goes on (a claim in the storage), and a finalized study
    only when forced."""
    done = claims.count(study, TEST_COUNTER)
    previous = records.read_final(study)
    result = FinalResult.from_dict(previous) if previous else None
    if done and not force:
        what = (f"test loss {result.test_mean:.4f} +- {result.test_std:.4f} (trial "
                f"{result.chosen_trial}), on {result.finished_at}" if result else
                "its finalize did not record a result")
        raise AlreadyFinalized(
            f"study {study.study_name!r} was already finalized: {what}. The test split is "
            "evaluated once; use --force to evaluate it again (the record counts it).", result)
    if force:
        claims.next_number(study, FINALIZE_CLAIM)  # forced: a claim of its own
    elif not claims.claim(study, f"{FINALIZE_CLAIM}.0"):
        raise AlreadyFinalized(
            f"study {study.study_name!r} is being finalized by another process (or one died "
            "while finalizing it: then use --force)")
