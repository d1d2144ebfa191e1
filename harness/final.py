"""The final model: chosen on dev among the best trials, then evaluated once on the test split.

`finalize` runs in phases, each a function below:

1. claim: one process at a time finalizes a study, by a claim in the study's storage, and a
   study already finalized is refused unless forced;
2. candidates: the `finalize.top_k` best complete trials (by best dev loss), distinct configs;
   in Pareto mode the one trial of the front that `finalize.pick` picks;
3. retrain: each candidate with the same `train` function on fresh seeds 1..`finalize.seeds`,
   for `finalize.steps` (or as many steps as fit in `finalize.minutes` at the speed its trial
   measured), here or in spawned processes;
4. choose: the candidate with the lowest *mean* dev loss over the fresh seeds, so one lucky
   seed cannot win; the final model is its best seed's, or with `finalize.ensemble` all its
   seeds' models averaged, and its trial's own model from the search with them when the
   trial ran as many steps (no training is thrown away, and its lucky seed decides nothing);
   with `finalize.fill`, the time left before `budget.wall_time` trains more seeds of the
   chosen config, each joining the ensemble only if it lowers its dev loss;
5. test: only then is the test split read, for the chosen models; each evaluation is counted
   in the storage before it happens;
6. record: `FinalResult` in the study's storage, a final MLflow run under the study's run, and
   `final.json` and `model.pt` in the study's folder.

This module is the only caller of `harness.data.load_test_examples` and `load_test_words`.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import multiprocessing
import re
import statistics
import tempfile
import time
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import TrialState

from harness import baseline, pareto, paths, plots, provenance, storage, trials
from harness.baseline import Reference
from harness.coordinator import threads_per_worker
from harness.data import (
    Examples,
    load_search_data,
    load_test_examples,
    load_test_words,
    training_words,
)
from harness.events import FinalizeObserver
from harness.hparams import HParams
from harness.model import (
    MLP,
    Ensemble,
    LanguageModel,
    load_model,
    mean_loss,
    n_params,
    sample_words,
    save_model,
)
from harness.spec import StudySpec
from harness.study import load_study, open_tracker
from harness.tracking import FAILED, FINISHED, RunArtifacts
from harness.train import train

log = logging.getLogger(__name__)

TEST_COUNTER = "test-evaluation"  # storage counter: one number per evaluation of the test split
FINALIZE_CLAIM = "finalize"


class AlreadyFinalized(RuntimeError):
    """The study's test split was already evaluated (or another process is finalizing it)."""

    def __init__(self, message: str, result: FinalResult | None = None) -> None:
        super().__init__(message)
        self.result = result


class NothingToFinalize(RuntimeError):
    """The study has no complete trial to choose from, or no final model yet."""


@dataclass(frozen=True)
class CandidateResult:
    """One candidate config retrained on every seed."""

    trial: int
    config: dict[str, Any]
    steps: int
    dev_losses: tuple[float, ...]
    dev_mean: float
    dev_std: float
    # Seconds per seed in training steps and in dev evaluations (empty in older records).
    train_s: tuple[float, ...] = ()
    eval_s: tuple[float, ...] = ()


@dataclass(frozen=True)
class FinalResult:
    """What finalize found: the chosen config, its dev and test losses per seed, the model.
    `final.json` is its JSON form (`to_dict`/`from_dict`)."""

    study: str
    chosen_trial: int
    config: dict[str, Any]  # the saved model's config (its seed is model_seed)
    seeds: tuple[int, ...]
    steps: int
    dev_losses: tuple[float, ...]
    dev_mean: float
    dev_std: float
    test_losses: tuple[float, ...]
    test_mean: float
    test_std: float
    model_seed: int
    model_test_loss: float
    n_params: int  # one model of the chosen config (an ensemble holds one per seed)
    candidates: tuple[CandidateResult, ...]
    samples: tuple[str, ...]
    novel_share: float | None  # share of the samples that are not training words
    model_path: str
    test_evaluations: int  # times the study's test split was evaluated, this one included
    started_at: str
    finished_at: str
    mlflow_run_id: str | None = None
    commit: str = "unknown"  # the harness's git commit ("+dirty" with local changes)
    registered: str | None = None  # models:/NAME/VERSION in MLflow's Model Registry
    pick: str | None = None  # Pareto mode: the rule that picked the trial from the front
    # Count-based models scored on test at the same moment (chosen on dev): test beside test.
    references: tuple[Reference, ...] = ()
    # finalize.ensemble: the saved model averages the chosen config's models over all seeds
    # (model_seed and model_test_loss are then its best single seed's); its dev and test loss.
    ensemble_dev_loss: float | None = None
    ensemble_test_loss: float | None = None
    # The chosen trial's own model (its seed, trained in the search), a member of that
    # ensemble when it was kept; None otherwise. Its dev loss is read again, not the trial's.
    trial_model_seed: int | None = None
    trial_model_dev_loss: float | None = None
    trial_model_test_loss: float | None = None
    # finalize.fill: the models it trained in the time left (seeds after the retrainings'),
    # their steps and best dev losses, and which joined the ensemble (empty: none trained).
    fill_seeds: tuple[int, ...] = ()
    fill_steps: int = 0
    fill_dev_losses: tuple[float, ...] = ()
    fill_kept: tuple[bool, ...] = ()
    fill_train_s: tuple[float, ...] = ()
    fill_eval_s: tuple[float, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @property
    def members(self) -> int:
        """Models in the saved one: the seeds' (and the trial's own) for an ensemble, else 1."""
        if self.ensemble_test_loss is None:
            return 1
        return len(self.seeds) + (self.trial_model_seed is not None) + sum(self.fill_kept)

    @property
    def size(self) -> str:
        """The saved model's parameters, in words: "12,345", or "3 x 12,345" (an ensemble)."""
        return f"{self.members} x {self.n_params:,}" if self.members > 1 else f"{self.n_params:,}"

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> FinalResult:
        d = dict(d)
        d["candidates"] = tuple(
            CandidateResult(**{**c, **{k: tuple(c[k]) for k in _SEQUENCES if k in c}})
            for c in d["candidates"])
        for key in ("seeds", "dev_losses", "test_losses", "samples"):
            d[key] = tuple(d[key])
        for key in ("fill_seeds", "fill_dev_losses", "fill_kept", "fill_train_s",
                    "fill_eval_s"):  # absent in older records
            d[key] = tuple(d.get(key, ()))
        d["references"] = tuple(Reference(**r) for r in d.get("references", ()))
        return cls(**d)

    def save(self, path: Path) -> None:
        text = json.dumps(self.to_dict(), indent=2) + "\n"
        paths.replace_whole(path, lambda partial: partial.write_text(text, encoding="utf-8"))

    @classmethod
    def load(cls, path: Path) -> FinalResult:
        return cls.from_dict(json.loads(path.read_text(encoding="utf-8")))


_SEQUENCES = ("dev_losses", "train_s", "eval_s")  # CandidateResult's tuples, lists in JSON


@dataclass
class Candidate:
    """One config being retrained on several seeds; its dev losses decide."""

    trial: int
    hparams: HParams
    steps_per_sec: float | None = None  # as its trial measured it
    steps: int = 0  # steps per retraining, set by `plan_steps`
    retrained: list[Retrained] = field(default_factory=list, repr=False)  # in seed order

    @property
    def dev_losses(self) -> list[float]:
        return [r.dev_loss for r in self.retrained]

    @property
    def models(self) -> list[MLP]:
        return [r.model for r in self.retrained]

    @property
    def dev_mean(self) -> float:
        return mean_std(self.dev_losses)[0]

    def result(self) -> CandidateResult:
        mean, std = mean_std(self.dev_losses)
        return CandidateResult(self.trial, self.hparams.to_dict(), self.steps,
                               tuple(self.dev_losses), mean, std,
                               tuple(r.train_s for r in self.retrained),
                               tuple(r.eval_s for r in self.retrained))


@dataclass(frozen=True)
class Retraining:
    """One candidate on one seed: a unit of work of phase 3."""

    candidate: int  # index into the candidates
    trial: int
    seed: int
    steps: int


@dataclass(frozen=True)
class Retrained:
    """What one retraining produced: its best dev loss, the model of that evaluation, and its
    seconds in training steps and in dev evaluations."""

    dev_loss: float
    model: MLP
    train_s: float
    eval_s: float


@dataclass(frozen=True)
class TrialModel:
    """The chosen trial's own model, trained in the search (see `study.keep_trial_model`)."""

    seed: int
    dev_loss: float  # read again on dev here
    model: MLP


@dataclass(frozen=True)
class Choice:
    """Phase 4's outcome: the chosen candidate and, with finalize.ensemble, the ensemble of its
    seeds' models (and its trial's own, `trial_model`) with its dev loss."""

    candidate: Candidate
    ensemble: Ensemble | None = None
    ensemble_dev_loss: float | None = None
    trial_model: TrialModel | None = None
    filled: Filled | None = None  # finalize.fill's models, when it trained any


@dataclass(frozen=True)
class Filled:
    """finalize.fill's models of the chosen config: their seeds, steps, best dev losses, and
    whether each joined the ensemble (it did when it lowered the ensemble's dev loss)."""

    seeds: tuple[int, ...]
    steps: int
    dev_losses: tuple[float, ...]
    kept: tuple[bool, ...]
    train_s: tuple[float, ...]  # seconds per seed in training steps ...
    eval_s: tuple[float, ...]  # ... and in dev evaluations


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for a single value)."""
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0


# ---------------------------------------------------------------------------------------------
# The phases


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
    seeds = list(range(1, spec.finalize.seeds + 1))
    jobs = plan_jobs(pool, seeds)
    processes = min(workers, len(jobs))
    if observer:
        observer.retrainings_planned(jobs, processes)
    retrained = time.time()
    retrain(spec, pool, jobs, device=device, processes=processes, observer=observer)
    # Seconds per step, all told (processes started, evaluations), in rounds of `processes`.
    step_s = (time.time() - retrained) / (-(-len(jobs) // processes)) / max(
        c.steps for c in pool)
    choice = choose(spec, study, pool, seeds)
    if spec.finalize.fill:
        choice = fill(spec, study, choice, seeds, step_s, device=device, workers=workers,
                      observer=observer)
    tested = evaluate_test(study, spec, choice)
    return record(spec, study, pool, choice, seeds, tested, started)


def _claim(study: optuna.Study, force: bool) -> None:
    """Phase 1: exactly one process goes on (a claim in the storage), and a finalized study
    only when forced."""
    done = storage.count(study, TEST_COUNTER)
    previous = storage.read_final(study)
    result = FinalResult.from_dict(previous) if previous else None
    if done and not force:
        what = (f"test loss {result.test_mean:.4f} +- {result.test_std:.4f} (trial "
                f"{result.chosen_trial}), on {result.finished_at}" if result else
                "its finalize did not record a result")
        raise AlreadyFinalized(
            f"study {study.study_name!r} was already finalized: {what}. The test split is "
            "evaluated once; use --force to evaluate it again (the record counts it).", result)
    if force:
        storage.next_number(study, FINALIZE_CLAIM)  # forced: a claim of its own
    elif not storage.claim(study, f"{FINALIZE_CLAIM}.0"):
        raise AlreadyFinalized(
            f"study {study.study_name!r} is being finalized by another process (or one died "
            "while finalizing it: then use --force)")


def candidates(study: optuna.Study, spec: StudySpec,
               observer: FinalizeObserver | None = None) -> list[Candidate]:
    """Phase 2: the best `finalize.top_k` feasible complete trials with distinct configs (the
    seed aside); in Pareto mode the trial of the front that `finalize.pick` picks. Raises
    NothingToFinalize when there is none."""
    recs = trials.records(study)
    rule = spec.finalize.pick
    if rule is not None:
        on_front = pareto.front(recs, rule.metric)
        chosen = pareto.pick(on_front, rule)
        if chosen is None:
            raise NothingToFinalize(f"no trial on the front of study {spec.name!r} satisfies "
                                    f"finalize.pick {rule.as_written()} (front: "
                                    f"{len(on_front)} trials)")
        if observer:
            observer.picked(chosen, on_front, rule)
        return [Candidate(chosen.number, HParams(**_unseeded(chosen)), chosen.steps_per_sec)]
    pool = _best_distinct([r for r in recs if r.state == TrialState.COMPLETE and r.feasible],
                          spec.finalize.top_k)
    if not pool:
        raise NothingToFinalize(f"study {spec.name!r} has no complete trial within its "
                                "constraints to finalize")
    return pool


def _unseeded(r: trials.TrialRecord) -> dict[str, Any]:
    return {k: v for k, v in r.hparams.items() if k != "seed"}


def _best_distinct(complete: list[trials.TrialRecord], top_k: int) -> list[Candidate]:
    """The best `top_k` of `complete` by dev loss, one per config (the seed aside)."""
    complete = sorted(complete, key=lambda r: r.value)
    out: list[Candidate] = []
    seen: set[tuple] = set()
    for r in complete:
        config = _unseeded(r)
        key = tuple(sorted(config.items()))
        if key not in seen:
            seen.add(key)
            out.append(Candidate(r.number, HParams(**config), r.steps_per_sec))
        if len(out) == top_k:
            break
    return out


def plan_steps(cand: Candidate, spec: StudySpec) -> int:
    """Steps for each retraining of `cand`: `finalize.steps` (default budget.steps), or, with
    `finalize.minutes`, as many as fit in that time at the trial's measured speed, in whole
    evaluation intervals, capped by `finalize.steps` when it is given."""
    f, every = spec.finalize, spec.budget.eval_every
    if f.minutes is None or not cand.steps_per_sec:
        return f.steps or spec.budget.steps
    # 5% held back for the evaluations, which the trial's steps/s leaves out.
    fit = int(f.minutes * 60 * cand.steps_per_sec * 0.95) // every * every
    return max(every, min(fit, f.steps) if f.steps else fit)


def plan_jobs(pool: list[Candidate], seeds: Sequence[int]) -> list[Retraining]:
    """Every candidate of `pool` on every seed, each for its planned steps."""
    return [Retraining(i, c.trial, seed, c.steps) for i, c in enumerate(pool) for seed in seeds]


def retrain(spec: StudySpec, pool: list[Candidate], jobs: list[Retraining], *, device: str,
            processes: int, observer: FinalizeObserver | None) -> None:
    """Phase 3: the `jobs` (candidates of `pool` on seeds), here or on `processes` spawned
    processes; each candidate gets its dev losses and models, in seed order."""
    if processes <= 1:
        done = _retrain_here(spec, pool, jobs, device, observer)
    else:
        done = _retrain_spawned(spec, pool, jobs, device, processes, observer)
    for job in jobs:
        pool[job.candidate].retrained.append(done[job])


def _seeded(cand: Candidate, seed: int) -> HParams:
    return dataclasses.replace(cand.hparams, seed=seed)


def _retrain_here(spec: StudySpec, pool: list[Candidate], jobs: list[Retraining], device: str,
                  observer: FinalizeObserver | None) -> dict[Retraining, Retrained]:
    done: dict[Retraining, Retrained] = {}
    for job in jobs:
        hp = _seeded(pool[job.candidate], job.seed)

        def on_eval(ev: Any, job: Retraining = job) -> None:
            if observer:
                observer.retraining_evaluated(job, ev.step, ev.dev_loss)

        result = train(hp, load_search_data(spec.data, hp.context_length), steps=job.steps,
                       eval_every=spec.budget.eval_every, on_eval=on_eval, device=device)
        done[job] = Retrained(result.best_dev_loss, result.model,
                              result.elapsed_s - result.eval_s, result.eval_s)
        if observer:
            observer.retraining_done(job, result.best_dev_loss, len(done), len(jobs))
    return done


def _retrain_spawned(spec: StudySpec, pool: list[Candidate], jobs: list[Retraining],
                     device: str, processes: int, observer: FinalizeObserver | None,
                     ) -> dict[Retraining, Retrained]:
    threads = threads_per_worker(spec, processes)
    done: dict[Retraining, Retrained] = {}
    ctx = multiprocessing.get_context("spawn")  # never fork a process with torch threads
    with ProcessPoolExecutor(max_workers=processes, mp_context=ctx) as ex:
        futures = {ex.submit(_retrain_one, _seeded(pool[job.candidate], job.seed), spec,
                             job.steps, device, threads): job for job in jobs}
        for future in as_completed(futures):
            job = futures[future]
            dev, state, train_s, eval_s = future.result()
            hp = _seeded(pool[job.candidate], job.seed)
            model = MLP.from_hparams(hp, len(load_search_data(spec.data,
                                                              hp.context_length).vocab))
            model.load_state_dict(state)
            done[job] = Retrained(dev, model.eval(), train_s, eval_s)
            if observer:
                observer.retraining_done(job, dev, len(done), len(jobs))
    return done


def _retrain_one(hp: HParams, spec: StudySpec, steps: int, device: str,
                 threads: int) -> tuple[float, dict[str, Any], float, float]:
    """One retraining in a spawned process: its best dev loss, weights, and seconds in
    training steps and in dev evaluations."""
    import torch

    torch.set_num_threads(threads)
    result = train(hp, load_search_data(spec.data, hp.context_length), steps=steps,
                   eval_every=spec.budget.eval_every, device=device)
    return (result.best_dev_loss, {k: v.cpu() for k, v in result.model.state_dict().items()},
            result.elapsed_s - result.eval_s, result.eval_s)


def choose(spec: StudySpec, study: optuna.Study, pool: list[Candidate],
           seeds: Sequence[int]) -> Choice:
    """Phase 4: the candidate with the lowest mean dev loss over the fresh `seeds`; with
    finalize.ensemble, its models averaged, its trial's own model among them when it can be
    used (`trial_model`)."""
    chosen = min(pool, key=lambda c: c.dev_mean)
    if not spec.finalize.ensemble:
        return Choice(chosen)
    kept = trial_model(spec, study, chosen, seeds)
    ensemble = Ensemble(chosen.models + ([kept.model] if kept else []))
    dev = load_search_data(spec.data, chosen.hparams.context_length).dev
    return Choice(chosen, ensemble, _loss(ensemble, dev), kept)


def fill(spec: StudySpec, study: optuna.Study, choice: Choice, seeds: Sequence[int],
         step_s: float, *, device: str, workers: int,
         observer: FinalizeObserver | None = None) -> Choice:
    """Phase 4b (finalize.fill): the time left before the study's budget.wall_time, less
    FINAL_OVERHEAD_S for what follows, trains more seeds of the chosen config, one per
    process, for as many steps as fit at `step_s` seconds per step (the retrainings' pace):
    `fill_steps`. Each joins the ensemble only if it lowers the ensemble's dev loss; the
    choice was made without them. `choice` unchanged when too little time is left."""
    record = storage.read_record(study)
    cand = choice.candidate
    if choice.ensemble is None or record is None or record.wall_time is None:
        return choice
    left_s = record.timeout_start + record.wall_time - trials.FINAL_OVERHEAD_S - time.time()
    steps = fill_steps(left_s, step_s, cand.steps, spec.budget.eval_every)
    if not steps:
        log.info("finalize.fill: %.0f s left, too few for half a retraining (%d steps at "
                 "%.1f ms each)", left_s, cand.steps, 1e3 * step_s)
        return choice
    first = max([*seeds, choice.trial_model.seed if choice.trial_model else 0]) + 1
    extra = Candidate(cand.trial, cand.hparams, cand.steps_per_sec, steps)
    jobs = plan_jobs([extra], range(first, first + max(1, workers)))
    processes = min(workers, len(jobs))
    if observer:
        observer.filling(jobs, processes, left_s)
    retrain(spec, [extra], jobs, device=device, processes=processes, observer=observer)
    dev = load_search_data(spec.data, cand.hparams.context_length).dev
    ensemble, loss, kept = grow(choice.ensemble, extra.models, dev)
    filled = Filled(tuple(j.seed for j in jobs), steps, tuple(extra.dev_losses), kept,
                    tuple(r.train_s for r in extra.retrained),
                    tuple(r.eval_s for r in extra.retrained))
    return dataclasses.replace(choice, ensemble=ensemble, ensemble_dev_loss=loss,
                               filled=filled)


def grow(ensemble: Ensemble, models: Sequence[MLP],
         dev: Examples) -> tuple[Ensemble, float, tuple[bool, ...]]:
    """`ensemble` with each of `models` that lowers its dev loss, judged in order with those
    taken before it; its dev loss, and which were taken."""
    members, loss = list(ensemble.members), _loss(ensemble, dev)
    kept = []
    for model in models:
        grown = _loss(Ensemble([*members, model]), dev)
        kept.append(grown < loss)
        if kept[-1]:
            members, loss = [*members, model], grown
    return Ensemble(members), loss, tuple(kept)


def fill_steps(left_s: float, step_s: float, steps: int, eval_every: int) -> int:
    """Steps of a finalize.fill model in `left_s` seconds at `step_s` each: whole evaluation
    intervals, at most `steps` (a retraining's); 0 when less than half of `steps` fit."""
    fit = min(steps, int(max(left_s, 0.0) / step_s) // eval_every * eval_every)
    return fit if fit >= steps / 2 else 0


def trial_model(spec: StudySpec, study: optuna.Study, cand: Candidate,
                seeds: Sequence[int]) -> TrialModel | None:
    """The candidate's trial's own model, as its MLflow run keeps it, on the device of the
    candidate's retrained models; None (and why, logged) when it cannot stand beside them:
    a trial of an earlier study, one that ran other steps than the retrainings, a seed that
    was retrained anyway, or no readable model in its run."""
    r = trials.records(study)[cand.trial]
    seed = r.hparams.get("seed")
    why = ("it is an earlier study's (warm_start)" if r.warm_from else
           f"it ran {r.steps} steps, the retrainings {cand.steps}" if r.steps != cand.steps else
           f"its seed {seed} is among the retrained ones" if seed in seeds else None)
    model, why = (None, why) if why else _kept_model(spec, r)
    if model is None:
        log.warning("trial %d's own model is not in the final ensemble: %s", cand.trial, why)
        return None
    model = model.to(next(cand.models[0].parameters()).device)
    dev = load_search_data(spec.data, cand.hparams.context_length).dev
    return TrialModel(seed, _loss(model, dev), model)


def _kept_model(spec: StudySpec, r: trials.TrialRecord) -> tuple[MLP | None, str | None]:
    """The model trial `r`'s MLflow run keeps (on the CPU), or None and why not."""
    from harness.study import TRIAL_MODEL_ARTIFACT

    if not r.mlflow_run_id:
        return None, "its run is not recorded"
    with tempfile.TemporaryDirectory() as tmp:
        try:
            path = RunArtifacts(open_tracker(spec), r.mlflow_run_id).download(
                TRIAL_MODEL_ARTIFACT, Path(tmp))
            loaded = load_model(path) if path is not None else None
        except Exception as exc:  # unreadable file, store unreachable, run gone
            return None, f"its model cannot be read ({exc})"
    if loaded is None:
        return None, "its run keeps no model"
    model, hp, _ = loaded
    if not isinstance(model, MLP) or hp != HParams(**r.hparams):
        return None, "its run keeps a model of another config"
    return model, None


@dataclass(frozen=True)
class Tested:
    """Phase 5's readings of the test split."""

    losses: list[float]  # each seed's model of the chosen config, in seed order
    ensemble_loss: float | None  # their ensemble's (finalize.ensemble), else None
    trial_model_loss: float | None  # the chosen trial's own model's, when in the ensemble
    evaluations: int  # the study's count of test evaluations, this one included
    references: list[Reference]  # the count-based models', at the same moment


def evaluate_test(study: optuna.Study, spec: StudySpec, choice: Choice) -> Tested:
    """Phase 5: the chosen models' losses on the test split (and their ensemble's), read here
    and nowhere else, and the count-based references' at the same moment. The evaluation is
    counted in the storage first."""
    evaluations = storage.next_number(study, TEST_COUNTER) + 1
    chosen, kept = choice.candidate, choice.trial_model
    test = load_test_examples(spec.data, chosen.hparams.context_length)
    dev_results = baseline.cached(spec.data, paths.study_dir(spec.name) / "baselines.json")
    references = baseline.test_references(spec.data, load_test_words(spec.data), dev_results)
    return Tested([_loss(m, test) for m in chosen.models],
                  _loss(choice.ensemble, test) if choice.ensemble is not None else None,
                  _loss(kept.model, test) if kept is not None else None, evaluations,
                  references)


def _loss(model: LanguageModel, examples: Examples) -> float:
    """`model`'s mean loss on `examples`, moved to the model's device (a GPU's, in finalize
    on one)."""
    device = next(model.parameters()).device
    return mean_loss(model, examples.X.to(device), examples.Y.to(device))


def record(spec: StudySpec, study: optuna.Study, pool: list[Candidate], choice: Choice,
           seeds: list[int], tested: Tested, started: float) -> FinalResult:
    """Phase 6: save the model (the chosen config's ensemble, else its best seed), sample
    names, and record the result in the storage, in MLflow and in final.json."""
    chosen, ensemble, kept = choice.candidate, choice.ensemble, choice.trial_model
    test_losses = tested.losses
    best = min(range(len(seeds)), key=lambda j: chosen.dev_losses[j])
    best_model, model_hp = chosen.models[best], _seeded(chosen, seeds[best])
    itos = load_search_data(spec.data, model_hp.context_length).vocab.itos
    model: LanguageModel = best_model if ensemble is None else ensemble
    out_dir = paths.study_dir(spec.name)
    model_path = out_dir / "model.pt"
    save_model(model_path, model, model_hp, itos)
    names = sample_words(model, itos, spec.finalize.samples, seed=0) if spec.finalize.samples \
        else []
    known = training_words(spec.data)
    dev_mean, dev_std = mean_std(chosen.dev_losses)
    test_mean, test_std = mean_std(test_losses)
    result = FinalResult(
        study=spec.name, chosen_trial=chosen.trial, config=model_hp.to_dict(),
        seeds=tuple(seeds), steps=chosen.steps, dev_losses=tuple(chosen.dev_losses),
        dev_mean=dev_mean, dev_std=dev_std, test_losses=tuple(test_losses),
        test_mean=test_mean, test_std=test_std, model_seed=seeds[best],
        model_test_loss=test_losses[best], n_params=n_params(best_model),
        candidates=tuple(c.result() for c in pool), samples=tuple(names),
        novel_share=sum(n not in known for n in names) / len(names) if names else None,
        model_path=str(model_path), test_evaluations=tested.evaluations,
        started_at=_iso(started), finished_at=_iso(time.time()), commit=provenance.commit(),
        references=tuple(tested.references),
        pick=spec.finalize.pick.as_written() if spec.finalize.pick else None,
        ensemble_dev_loss=choice.ensemble_dev_loss, ensemble_test_loss=tested.ensemble_loss,
        trial_model_seed=kept.seed if kept else None,
        trial_model_dev_loss=kept.dev_loss if kept else None,
        trial_model_test_loss=tested.trial_model_loss,
        **(_filled(choice.filled) if choice.filled else {}))
    figure = plots.embeddings(best_model.embedding.weight, itos,
                              out_dir / "plots" / "embeddings.png")
    result = dataclasses.replace(result, mlflow_run_id=_track(spec, study, result,
                                                              [model_path, figure]))
    if spec.registry.enabled and result.mlflow_run_id:
        result = dataclasses.replace(result, registered=_register(spec, result, model_path))
    storage.write_final(study, result.to_dict())
    result.save(out_dir / "final.json")
    return result


def _filled(filled: Filled) -> dict[str, Any]:
    """FinalResult's finalize.fill fields."""
    return {"fill_seeds": filled.seeds, "fill_steps": filled.steps,
            "fill_dev_losses": filled.dev_losses, "fill_kept": filled.kept,
            "fill_train_s": filled.train_s, "fill_eval_s": filled.eval_s}


def _iso(t: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(t))


def _track(spec: StudySpec, study: optuna.Study, result: FinalResult,
           files: Sequence[Path]) -> str:
    """The final MLflow run, nested under the study's parent run, with `files` as artifacts."""
    tracker = open_tracker(spec)
    parent = storage.wait_for_record(study).parent_run_id
    run = tracker.start_run(parent, spec.name, "final", "final model",
                            {"chosen_trial": result.chosen_trial, **result.config},
                            {"harness.stage": "final",
                             "harness.test_evaluations": str(result.test_evaluations),
                             **provenance.collect()})
    try:
        for j, (dev, test) in enumerate(zip(result.dev_losses, result.test_losses, strict=True)):
            run.log_metrics({"seed_dev_loss": dev, "seed_test_loss": test}, step=j)
        run.log_text(json.dumps(result.to_dict(), indent=2), "final.json")
        run.log_text("\n".join(result.samples) + "\n", "samples.txt")
        for path in files:
            run.log_artifact(path)
        figures = {"dev_mean": result.dev_mean, "dev_std": result.dev_std,
                   "test_mean": result.test_mean, "test_std": result.test_std,
                   "n_params": result.n_params, "test_evaluations": result.test_evaluations}
        if result.novel_share is not None:
            figures["novel_share"] = result.novel_share
        if result.ensemble_test_loss is not None:
            figures |= {"ensemble_dev_loss": result.ensemble_dev_loss,
                        "ensemble_test_loss": result.ensemble_test_loss}
        if result.trial_model_test_loss is not None:
            figures |= {"trial_model_dev_loss": result.trial_model_dev_loss,
                        "trial_model_test_loss": result.trial_model_test_loss}
        for j, dev in enumerate(result.fill_dev_losses):
            run.log_metrics({"fill_dev_loss": dev, "fill_kept": float(result.fill_kept[j])},
                            step=j)
        if result.fill_seeds:
            figures["fill_steps"] = result.fill_steps
        for ref in result.references:  # e.g. reference_test_loss.kneser-ney_6-gram
            key = re.sub(r"[^a-z0-9-]+", "_", ref.model.lower()).strip("_")
            figures |= {f"reference_dev_loss.{key}": ref.dev_loss,
                        f"reference_test_loss.{key}": ref.test_loss}
        run.finish(FINISHED, figures)
    except BaseException:
        run.finish(FAILED)
        raise
    return run.run_id


def _register(spec: StudySpec, result: FinalResult, model_path: Path) -> str:
    """Register the final model (alias champion, its figures as version tags)."""
    from harness.registry import register

    name = spec.registry.name or spec.name
    assert result.mlflow_run_id is not None
    version = register(open_tracker(spec).uri, result.mlflow_run_id, model_path, name, {
        "dev_mean": f"{result.dev_mean:.6f}", "dev_std": f"{result.dev_std:.6f}",
        "test_mean": f"{result.test_mean:.6f}", "test_std": f"{result.test_std:.6f}",
        "chosen_trial": str(result.chosen_trial), "commit": result.commit,
        "study": spec.name,
        **({"ensemble_test_loss": f"{result.ensemble_test_loss:.6f}"}
           if result.ensemble_test_loss is not None else {})})
    return f"models:/{name}/{version}"


def final_model(spec: StudySpec) -> tuple[LanguageModel, HParams, tuple[str, ...]]:
    """The study's saved final model. Raises NothingToFinalize when there is none yet."""
    path = paths.study_dir(spec.name) / "model.pt"
    if not path.exists():
        raise NothingToFinalize(f"study {spec.name!r} has no final model yet ({path}); run "
                                f"`harness finalize {spec.source}` first")
    return load_model(path)
