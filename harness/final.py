"""The final model: chosen on dev among the best trials, then evaluated once on the test split.

1. Candidates: the `finalize.top_k` best complete trials (by best dev loss), distinct configs.
2. Each is retrained with the same `train` function on fresh seeds 1..`finalize.seeds`, for
   `finalize.steps` (or as many steps as fit in `finalize.minutes` at the speed its trial
   measured); the candidate with the lowest *mean* dev loss wins, so one lucky seed
   cannot.
3. Only then is the test split read: the winner's models (one per seed) are evaluated on it.
4. The result goes to the study's records (an Optuna study attribute), a final MLflow run under
   the study's parent run, and `final.json` and `model.pt` in the study's folder.

This module is the only caller of `harness.data.load_test_examples`.
"""

from __future__ import annotations

import json
import logging
import multiprocessing
import statistics
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import TrialState

from harness import paths, plots
from harness.coordinator import threads_per_worker
from harness.data import load_search_data, load_test_examples, training_words
from harness.hparams import HParams
from harness.model import MLP, load_model, mean_loss, n_params, sample_words, save_model
from harness.spec import StudySpec
from harness.study import load_study, open_tracker
from harness.tracking import FAILED, FINISHED
from harness.train import Evaluation, train

log = logging.getLogger(__name__)

RECORD_ATTR = "final"  # the study attribute that holds the final result


class AlreadyFinalized(RuntimeError):
    """The study's test split was already evaluated; `record` is that result."""

    def __init__(self, record: dict[str, Any]) -> None:
        super().__init__(
            f"study {record['study']!r} was already finalized on {record['finished_at']}: test "
            f"loss {record['test_mean']:.4f} +- {record['test_std']:.4f} (trial "
            f"{record['chosen_trial']}). The test split is evaluated once; use --force to "
            "evaluate it again (the record will show it)."
        )
        self.record = record


class NothingToFinalize(RuntimeError):
    """The study has no complete trial to choose from, or no final model yet."""


@dataclass
class Candidate:
    """One config retrained on several seeds; its dev losses decide."""

    trial: int
    hparams: HParams
    steps_per_sec: float | None = None  # as its trial measured it
    steps: int = 0  # steps per retraining, set by `plan_steps`
    dev_losses: list[float] = field(default_factory=list)
    models: list[MLP] = field(default_factory=list, repr=False)

    @property
    def dev_mean(self) -> float:
        return mean_std(self.dev_losses)[0]

    @property
    def dev_std(self) -> float:
        return mean_std(self.dev_losses)[1]


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for a single value)."""
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def candidates(study: optuna.Study, top_k: int) -> list[Candidate]:
    """The best `top_k` complete trials with distinct configs (the seed aside)."""
    complete = sorted(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)),
                      key=lambda t: t.value)
    out: list[Candidate] = []
    seen: set[tuple] = set()
    for t in complete:
        config = {k: v for k, v in t.user_attrs["config"].items() if k != "seed"}
        key = tuple(sorted(config.items()))
        if key not in seen:
            seen.add(key)
            out.append(Candidate(t.number, HParams(**config), t.user_attrs.get("steps_per_sec")))
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


def _retrain(hp: HParams, data_cfg: Any, steps: int, eval_every: int, device: str,
             threads: int) -> tuple[float, dict[str, Any]]:
    """One candidate on one seed, in a worker process: its best dev loss and weights."""
    import torch

    torch.set_num_threads(threads)
    result = train(hp, load_search_data(data_cfg, hp.context_length), steps=steps,
                   eval_every=eval_every, device=device)
    return result.best_dev_loss, {k: v.cpu() for k, v in result.model.state_dict().items()}


def finalize(spec: StudySpec, *, force: bool = False, device: str = "cpu", workers: int = 1,
             progress: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Choose the final config on dev, evaluate it once on test, save and record it.

    The candidate x seed retrainings run in this process, or spread over `workers` spawned
    processes (one torch thread each on CPU). Raises AlreadyFinalized when the study has a
    final record and `force` is False, and NothingToFinalize when it has no complete trial.
    """
    study = load_study(spec)
    previous = study.user_attrs.get(RECORD_ATTR)
    if previous and not force:
        raise AlreadyFinalized(previous)
    pool = candidates(study, spec.finalize.top_k)
    if not pool:
        raise NothingToFinalize(f"study {spec.name!r} has no complete trial to finalize")
    say = progress or (lambda message: log.info("%s", message))
    for cand in pool:
        cand.steps = plan_steps(cand, spec)
    seeds = list(range(1, spec.finalize.seeds + 1))
    started = time.time()

    # 1-2. Retrain every candidate on every seed; choose by mean dev loss.
    jobs = {(i, seed): HParams(**{**cand.hparams.to_dict(), "seed": seed})
            for i, cand in enumerate(pool) for seed in seeds}
    done: dict[tuple[int, int], tuple[float, MLP]] = {}
    if workers <= 1:
        for (i, seed), hp in jobs.items():
            def on_eval(ev: Evaluation, i: int = i, seed: int = seed) -> None:
                say(f"candidate {i + 1}/{len(pool)} (trial {pool[i].trial}), seed {seed}: "
                    f"step {ev.step}/{pool[i].steps}, dev {ev.dev_loss:.4f}")

            result = train(hp, load_search_data(spec.data, hp.context_length),
                           steps=pool[i].steps,
                           eval_every=spec.budget.eval_every, on_eval=on_eval, device=device)
            done[i, seed] = result.best_dev_loss, result.model
    else:
        threads = threads_per_worker(spec, workers)
        ctx = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(max_workers=min(workers, len(jobs)), mp_context=ctx) as ex:
            futures = {ex.submit(_retrain, hp, spec.data, pool[key[0]].steps,
                                 spec.budget.eval_every, device, threads): key
                       for key, hp in jobs.items()}
            say(f"{len(jobs)} retrainings on {min(workers, len(jobs))} processes, "
                + ", ".join(f"trial {c.trial}: {c.steps} steps" for c in pool))
            for future in as_completed(futures):
                (i, seed), (dev, state) = futures[future], future.result()
                vocab = load_search_data(spec.data, jobs[i, seed].context_length).vocab
                model = MLP.from_hparams(jobs[i, seed], len(vocab))
                model.load_state_dict(state)
                done[i, seed] = dev, model.eval()
                say(f"{len(done)}/{len(jobs)} done: candidate {i + 1} (trial {pool[i].trial}), "
                    f"seed {seed}: dev {dev:.4f}")
    for i, cand in enumerate(pool):
        for seed in seeds:
            dev, model = done[i, seed]
            cand.dev_losses.append(dev)
            cand.models.append(model)
        say(f"candidate {i + 1}/{len(pool)} (trial {cand.trial}): dev {cand.dev_mean:.4f} "
            f"+- {cand.dev_std:.4f} over {len(seeds)} seeds")
    chosen = min(pool, key=lambda c: c.dev_mean)

    # 3. The test split, read here and nowhere else, once the choice is made.
    test = load_test_examples(spec.data, chosen.hparams.context_length)
    test_losses = [mean_loss(m, test.X.to(_device(m)), test.Y.to(_device(m)))
                   for m in chosen.models]
    test_mean, test_std = mean_std(test_losses)

    # 4. Keep the seed with the best dev loss as the model; record everything.
    best_seed = min(range(len(seeds)), key=lambda j: chosen.dev_losses[j])
    model = chosen.models[best_seed]
    model_hp = HParams(**{**chosen.hparams.to_dict(), "seed": seeds[best_seed]})
    itos = load_search_data(spec.data, model_hp.context_length).vocab.itos
    out_dir = paths.study_dir(spec.name)
    model_path = out_dir / "model.pt"
    save_model(model_path, model, model_hp, itos)

    train_words = training_words(spec.data)
    n = spec.finalize.samples
    names = sample_words(model, itos, n, seed=0) if n else []
    novel = sum(n not in train_words for n in names) / len(names) if names else None

    record: dict[str, Any] = {
        "study": spec.name,
        "chosen_trial": chosen.trial,
        "config": model_hp.to_dict(),
        "seeds": seeds,
        "steps": chosen.steps,
        "dev_losses": chosen.dev_losses,
        "dev_mean": chosen.dev_mean,
        "dev_std": chosen.dev_std,
        "test_losses": test_losses,
        "test_mean": test_mean,
        "test_std": test_std,
        "model_seed": seeds[best_seed],
        "model_test_loss": test_losses[best_seed],
        "n_params": n_params(model),
        "candidates": [{"trial": c.trial, "steps": c.steps, "dev_losses": c.dev_losses,
                        "dev_mean": c.dev_mean, "dev_std": c.dev_std,
                        "config": c.hparams.to_dict()} for c in pool],
        "samples": names,
        "novel_share": novel,
        "model_path": str(model_path),
        "test_evaluations": (previous or {}).get("test_evaluations", 0) + 1,
        "previous": [*(previous or {}).get("previous", []),
                     *([_strip_history(previous)] if previous else [])],
        "started_at": _iso(started),
        "finished_at": _iso(time.time()),
    }
    figure = plots.embeddings(model.embedding.weight, itos, out_dir / "plots" / "embeddings.png")
    record["mlflow_run_id"] = _track(spec, study, record, [model_path, figure])
    study.set_user_attr(RECORD_ATTR, record)
    (out_dir / "final.json").write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
    return record


def _device(model: MLP) -> Any:
    return next(model.parameters()).device


def _iso(t: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(t))


def _strip_history(record: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in record.items() if k != "previous"}


def _track(spec: StudySpec, study: optuna.Study, record: dict[str, Any],
           files: Sequence[Path]) -> str:
    """The final MLflow run, nested under the study's parent run, with `files` as artifacts."""
    tracker = open_tracker(spec)
    parent = study.user_attrs.get("mlflow_parent_run_id") or tracker.study_run(spec.name, "")
    run = tracker.start_run(parent, spec.name, "final", "final model",
                            {"chosen_trial": record["chosen_trial"], **record["config"]},
                            {"harness.stage": "final",
                             "harness.test_evaluations": str(record["test_evaluations"])})
    try:
        for j, (dev, test) in enumerate(zip(record["dev_losses"], record["test_losses"],
                                            strict=True)):
            run.log_metrics({"seed_dev_loss": dev, "seed_test_loss": test}, step=j)
        run.log_text(json.dumps(record, indent=2), "final.json")
        run.log_text("\n".join(record["samples"]) + "\n", "samples.txt")
        for path in files:
            run.log_artifact(path)
        figures = {k: record[k] for k in ("dev_mean", "dev_std", "test_mean", "test_std",
                                          "n_params", "test_evaluations")}
        if record["novel_share"] is not None:
            figures["novel_share"] = record["novel_share"]
        run.finish(FINISHED, figures)
    except BaseException:
        run.finish(FAILED)
        raise
    return run.run_id


def final_model(spec: StudySpec) -> tuple[MLP, HParams, tuple[str, ...]]:
    """The study's saved final model. Raises NothingToFinalize when there is none yet."""
    path = paths.study_dir(spec.name) / "model.pt"
    if not path.exists():
        raise NothingToFinalize(f"study {spec.name!r} has no final model yet ({path}); run "
                                f"`harness finalize {spec.source}` first")
    return load_model(path)
