"""Retraining: every candidate on every seed, with the same `train` as the trials, here or
in spawned processes (each with its share of the cores).

Nothing a retraining did is lost to an interruption: while it trains, its state is kept like a
trial's (a checkpoint at every evaluation), and when it ends, its result; both under
`<results root>/studies/<study>/finalize/`, each file replaced whole. A resumed finalize takes
the finished retrainings as they are and continues the others from their checkpoints.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import multiprocessing
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path
from typing import Any

import torch

from harness.config import StudySpec
from harness.config.hparams import HParams
from harness.final.candidates import Candidate, Retrained
from harness.final.events import FinalizeObserver, Retraining
from harness.training.data import load_search_data
from harness.training.model import MLP
from harness.training.train import Evaluation, TrainState, train
from harness.util import paths
from harness.util.processes import threads_per_worker


def plan_jobs(pool: list[Candidate], seeds: Sequence[int]) -> list[Retraining]:
    """Every candidate of `pool` on every seed, each for its planned steps."""
    return [Retraining(i, c.trial, seed, c.steps) for i, c in enumerate(pool) for seed in seeds]


def retrain(spec: StudySpec, pool: list[Candidate], jobs: list[Retraining], *, device: str,
            processes: int, observer: FinalizeObserver | None) -> None:
    """The `jobs` (candidates of `pool` on seeds), here or on `processes` spawned processes;
    each candidate gets its dev losses and models, in seed order."""
    if processes <= 1:
        done = _retrain_here(spec, pool, jobs, device, observer)
    else:
        done = _retrain_spawned(spec, pool, jobs, device, processes, observer)
    for job in jobs:
        pool[job.candidate].retrained.append(done[job])


def folder(spec: StudySpec) -> Path:
    """Where finalize keeps its work until the result is recorded."""
    return paths.study_dir(spec.name) / "finalize"


def _seeded(cand: Candidate, seed: int) -> HParams:
    return dataclasses.replace(cand.hparams, seed=seed)


def _retrain_here(spec: StudySpec, pool: list[Candidate], jobs: list[Retraining], device: str,
                  observer: FinalizeObserver | None) -> dict[Retraining, Retrained]:
    done: dict[Retraining, Retrained] = {}
    for job in jobs:
        hp = _seeded(pool[job.candidate], job.seed)

        def on_eval(ev: Evaluation, job: Retraining = job) -> None:
            if observer:
                observer.retraining_evaluated(job, ev.step, ev.dev_loss)

        dev, state, train_s, eval_s = run_job(hp, spec, job.steps, device, on_eval)
        done[job] = Retrained(dev, _model(spec, hp, state), train_s, eval_s)
        if observer:
            observer.retraining_done(job, dev, len(done), len(jobs))
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
            done[job] = Retrained(dev, _model(spec, hp, state), train_s, eval_s)
            if observer:
                observer.retraining_done(job, dev, len(done), len(jobs))
    return done


def _model(spec: StudySpec, hp: HParams, state: dict[str, Any]) -> MLP:
    model = MLP.from_hparams(hp, len(load_search_data(spec.data, hp.context_length).vocab))
    model.load_state_dict(state)
    return model.eval()


Outcome = tuple[float, dict[str, Any], float, float]  # dev loss, weights, train s, eval s


def _retrain_one(hp: HParams, spec: StudySpec, steps: int, device: str,
                 threads: int) -> Outcome:
    """One retraining in a spawned process."""
    torch.set_num_threads(threads)
    return run_job(hp, spec, steps, device)


def run_job(hp: HParams, spec: StudySpec, steps: int, device: str,
            on_eval: Any = None) -> Outcome:
    """One retraining: its best dev loss, weights, and seconds in training steps and in dev
    evaluations; taken from its finished record when there is one, else trained (from its
    checkpoint when there is one), checkpointed at each evaluation, and recorded."""
    name = f"trial-config-{_key(hp)}-steps-{steps}"
    done, ckpt = folder(spec) / f"{name}.pt", folder(spec) / f"{name}.ckpt.pt"
    if (kept := _read(done)) is not None and kept.get("config") == hp.to_dict():
        return (float(kept["dev_loss"]), kept["state"], float(kept["train_s"]),
                float(kept["eval_s"]))
    state = _read(ckpt)
    resume = None
    if state is not None:
        try:
            resume = TrainState.from_dict(state)
        except ValueError:
            resume = None
        if resume is not None and (resume.config != hp.to_dict() or resume.steps != steps):
            resume = None
    folder(spec).mkdir(parents=True, exist_ok=True)

    def keep(s: TrainState) -> None:
        paths.replace_whole(ckpt, lambda partial: torch.save(s.to_dict(), partial))

    result = train(hp, load_search_data(spec.data, hp.context_length), steps=steps,
                   eval_every=spec.budget.eval_every, on_eval=on_eval, device=device,
                   checkpoint_every=spec.budget.checkpoint_interval, on_checkpoint=keep,
                   resume=resume)
    weights = {k: v.cpu() for k, v in result.model.state_dict().items()}
    outcome = (result.best_dev_loss, weights, result.elapsed_s - result.eval_s, result.eval_s)
    record = {"config": hp.to_dict(), "steps": steps, "dev_loss": outcome[0], "state": weights,
              "train_s": outcome[2], "eval_s": outcome[3]}
    paths.replace_whole(done, lambda partial: torch.save(record, partial))
    ckpt.unlink(missing_ok=True)
    return outcome


def _key(hp: HParams) -> str:
    """A short name of a config, its seed included."""
    return hashlib.sha256(json.dumps(hp.to_dict(), sort_keys=True).encode()).hexdigest()[:16]


def _read(path: Path) -> dict[str, Any] | None:
    """A file written by torch.save of plain values, or None when there is none or it cannot
    be read (a damaged file: the retraining starts again)."""
    if not path.exists():
        return None
    try:
        d = torch.load(path, map_location="cpu", weights_only=True)
    except Exception:  # truncated, not a zip, not plain values
        return None
    return d if isinstance(d, dict) else None
