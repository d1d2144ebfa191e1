"""Retraining: every candidate on every seed, with the same `train` as the trials, here or
in spawned processes (each with its share of the cores)."""

from __future__ import annotations

import dataclasses
import multiprocessing
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from typing import Any

import torch

from harness.config import StudySpec
from harness.config.hparams import HParams
from harness.final.candidates import Candidate, Retrained
from harness.final.events import FinalizeObserver, Retraining
from harness.training.data import load_search_data
from harness.training.model import MLP
from harness.training.train import train
from harness.util.processes import threads_per_worker


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
    threads = threads_per_worker(processes, spec.workers.threads)
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
    torch.set_num_threads(threads)
    result = train(hp, load_search_data(spec.data, hp.context_length), steps=steps,
                   eval_every=spec.budget.eval_every, device=device)
    return (result.best_dev_loss, {k: v.cpu() for k, v in result.model.state_dict().items()},
            result.elapsed_s - result.eval_s, result.eval_s)


