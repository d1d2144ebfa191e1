"""Recording the final model: the model file and its sampled names, the result in the study's
storage and in final.json, a "final model" MLflow run under the study's run, and a version in
MLflow's Model Registry."""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Sequence
from pathlib import Path

import optuna

from harness.config import StudySpec
from harness.config.hparams import HParams
from harness.errors import NothingToFinalize
from harness.final.candidates import Candidate, mean_std
from harness.final.choose import Choice
from harness.final.evaluate import Tested
from harness.final.result import FinalResult, Section
from harness.search import records
from harness.tracking import FAILED, FINISHED, open_tracker
from harness.training.data import load_search_data, training_words
from harness.training.model import LanguageModel, load_model, n_params, sample_words, save_model
from harness.util import paths, provenance


def publish(spec: StudySpec, study: optuna.Study, pool: list[Candidate], choice: Choice,
            seeds: Sequence[int], tested: Tested, sections: dict[str, Section],
            started: float) -> FinalResult:
    """Save the model (what the rules made, else the best seed's), sample names, and record
    the result in the storage, in MLflow and in final.json."""
    chosen, best = choice.candidate, choice.best_seed
    model_hp = dataclasses.replace(chosen.hparams, seed=seeds[best])
    itos = load_search_data(spec.data, model_hp.context_length).vocab.itos
    out_dir = paths.study_dir(spec.name)
    model_path = out_dir / "model.pt"
    save_model(model_path, choice.model, model_hp, itos)
    names = (sample_words(choice.model, itos, spec.finalize.samples, seed=0)
             if spec.finalize.samples else [])
    known = training_words(spec.data)
    dev_mean, dev_std = mean_std(chosen.dev_losses)
    test_mean, test_std = mean_std(tested.losses)
    result = FinalResult(
        study=spec.name, chosen_trial=chosen.trial, config=model_hp.to_dict(),
        seeds=tuple(seeds), steps=chosen.steps, dev_losses=tuple(chosen.dev_losses),
        dev_mean=dev_mean, dev_std=dev_std, test_losses=tuple(tested.losses),
        test_mean=test_mean, test_std=test_std, model_seed=seeds[best],
        model_test_loss=tested.losses[best], n_params=n_params(chosen.models[best]),
        candidates=tuple(c.result() for c in pool), samples=tuple(names),
        novel_share=sum(n not in known for n in names) / len(names) if names else None,
        model_path=str(model_path), test_evaluations=tested.evaluations,
        started_at=_iso(started), finished_at=_iso(time.time()), commit=provenance.commit(),
        references=tuple(tested.references),
        pick=spec.finalize.pick.as_written() if spec.finalize.pick else None,
        sections=sections)
    result = dataclasses.replace(result, mlflow_run_id=_track(spec, study, result, model_path))
    if spec.registry.enabled and result.mlflow_run_id:
        result = dataclasses.replace(result, registered=_register(spec, result, model_path))
    records.write_final(study, result.to_dict())
    result.save(out_dir / "final.json")
    return result


def _iso(t: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(t))


def _track(spec: StudySpec, study: optuna.Study, result: FinalResult, model_path: Path) -> str:
    """The final MLflow run, nested under the study's parent run, with the model file."""
    tracker = open_tracker(spec)
    parent = records.wait_for_record(study).parent_run_id
    run = tracker.start_run(parent, spec.name, "final", "final model",
                            {"chosen_trial": result.chosen_trial, **result.config},
                            {"harness.stage": "final",
                             "harness.test_evaluations": str(result.test_evaluations),
                             **provenance.collect()})
    try:
        run.log_text(json.dumps(result.to_dict(), indent=2), "final.json")
        run.log_text("\n".join(result.samples) + "\n", "samples.txt")
        run.log_artifact(model_path)
        for key, value, step in result.metrics():
            run.log_metrics({key: value}, step=step)
        run.finish(FINISHED)
    except BaseException:
        run.finish(FAILED)
        raise
    return run.run_id


def _register(spec: StudySpec, result: FinalResult, model_path: Path) -> str:
    """Register the final model (alias champion, its figures as version tags)."""
    from harness.tracking.registry import register  # mlflow.pyfunc: seconds to import

    name = spec.registry.name or spec.name
    assert result.mlflow_run_id is not None
    version = register(open_tracker(spec).uri, result.mlflow_run_id, model_path, name,
                       result.registry_tags())
    return f"models:/{name}/{version}"


def final_model(spec: StudySpec) -> tuple[LanguageModel, HParams, tuple[str, ...]]:
    """The study's saved final model. Raises NothingToFinalize when there is none yet."""
    path = paths.study_dir(spec.name) / "model.pt"
    if not path.exists():
        raise NothingToFinalize(f"study {spec.name!r} has no final model yet ({path}); run "
                                f"`harness finalize {spec.source}` first")
    return load_model(path)
