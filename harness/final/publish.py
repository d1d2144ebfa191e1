"""The final result, assembled before the test split is read and published after it is
recorded: the model file, the result in the study's storage and in final.json, a "final
model" MLflow run under the study's run, and a version in MLflow's Model Registry.

Publishing can be interrupted anywhere and run again: the final run and the model version of
a result are found again (by its test evaluation's number, and by that run) rather than made
twice, and the study's `final` record, written last, marks the result published.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
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
from harness.final.retrain import folder
from harness.search import records
from harness.tracking import FAILED, FINISHED, open_tracker
from harness.training.data import load_search_data, training_words
from harness.training.model import LanguageModel, load_model, n_params, sample_words, save_model
from harness.util import failpoints, paths, provenance

TAG_STAGE = "harness.stage"
TAG_EVALUATION = "harness.test_evaluations"
TAG_COMPLETE = "harness.final_run_complete"  # the run holds all of its result


def model_path(spec: StudySpec) -> Path:
    return paths.study_dir(spec.name) / "model.pt"


def pending_model(spec: StudySpec) -> Path:
    """The chosen model, saved before the test split is read, until its result is published."""
    return folder(spec) / "model.pt"


def save_choice(spec: StudySpec, choice: Choice, seeds: Sequence[int]) -> list[str]:
    """Save the chosen model (what the rules made, else the best seed's) as the pending model,
    and sample its names (seeded): all before the test split is read."""
    hp = dataclasses.replace(choice.candidate.hparams, seed=seeds[choice.best_seed])
    itos = load_search_data(spec.data, hp.context_length).vocab.itos
    save_model(pending_model(spec), choice.model, hp, itos)
    return (sample_words(choice.model, itos, spec.finalize.samples, seed=0)
            if spec.finalize.samples else [])


def assemble(spec: StudySpec, pool: list[Candidate], choice: Choice, seeds: Sequence[int],
             names: list[str], tested: Tested, sections: dict[str, Section],
             started: float) -> FinalResult:
    """The result of a finalize, from its choice and the test split's readings."""
    chosen, best = choice.candidate, choice.best_seed
    model_hp = dataclasses.replace(chosen.hparams, seed=seeds[best])
    known = training_words(spec.data)
    dev_mean, dev_std = mean_std(chosen.dev_losses)
    test_mean, test_std = mean_std(tested.losses)
    return FinalResult(
        study=spec.name, chosen_trial=chosen.trial, config=model_hp.to_dict(),
        seeds=tuple(seeds), steps=chosen.steps, dev_losses=tuple(chosen.dev_losses),
        dev_mean=dev_mean, dev_std=dev_std, test_losses=tuple(tested.losses),
        test_mean=test_mean, test_std=test_std, model_seed=seeds[best],
        model_test_loss=tested.losses[best], n_params=n_params(chosen.models[best]),
        candidates=tuple(c.result() for c in pool), samples=tuple(names),
        novel_share=sum(n not in known for n in names) / len(names) if names else None,
        model_path=str(model_path(spec)), test_evaluations=0,
        started_at=_iso(started), finished_at=_iso(time.time()), commit=provenance.commit(),
        references=tuple(tested.references),
        pick=spec.finalize.pick.as_written() if spec.finalize.pick else None,
        sections=sections)


def publish(spec: StudySpec, study: optuna.Study, result: FinalResult) -> FinalResult:
    """Put the recorded `result` where people look: the model file, MLflow (run and
    registry), final.json, and the study's record of it (last: it marks it published)."""
    pending, final = pending_model(spec), model_path(spec)
    if pending.exists():
        paths.replace_whole(final, lambda partial: shutil.copyfile(pending, partial))
    elif not final.exists():
        raise NothingToFinalize(
            f"the model of study {spec.name!r}'s recorded final result is gone ({pending}): "
            "it was saved on another machine, or deleted; finalize there, or with --force "
            "(the test split is then evaluated again, and counted)")
    result = dataclasses.replace(result, mlflow_run_id=_track(spec, study, result, final))
    failpoints.reached("finalize:tracked")
    if spec.registry.enabled and result.mlflow_run_id:
        result = dataclasses.replace(result, registered=_register(spec, result, final))
    failpoints.reached("finalize:registered")
    result.save(paths.study_dir(spec.name) / "final.json")
    records.write_final(study, result.to_dict())
    shutil.rmtree(folder(spec), ignore_errors=True)  # retrainings' files, the pending model
    return result


def _iso(t: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(t))


def _track(spec: StudySpec, study: optuna.Study, result: FinalResult, model: Path) -> str:
    """The final MLflow run of `result`, nested under the study's parent run: found again when
    an earlier publish finished it, else made (one an interrupted publish left is closed)."""
    tracker = open_tracker(spec)
    tags = {TAG_STAGE: "final", TAG_EVALUATION: str(result.test_evaluations)}
    for run_id, status in tracker.find_runs(tags):
        if tracker.tags(run_id).get(TAG_COMPLETE) == "true":  # (registering reopens it)
            if status != FINISHED:
                tracker.end_run(run_id, FINISHED)
            return run_id
        if status == "RUNNING":  # cut off while it was logged: closed, and made anew
            tracker.end_run(run_id, FAILED)
    parent = records.wait_for_record(study).parent_run_id
    run = tracker.start_run(parent, spec.name, "final", "final model",
                            {"chosen_trial": result.chosen_trial, **result.config},
                            {**tags, **provenance.collect()})
    try:
        run.log_text(json.dumps(result.to_dict(), indent=2), "final.json")
        run.log_text("\n".join(result.samples) + "\n", "samples.txt")
        run.log_artifact(model)
        for key, value, step in result.metrics():
            run.log_metrics({key: value}, step=step)
        run.finish(FINISHED, tags={TAG_COMPLETE: "true"})
    except BaseException:
        run.finish(FAILED)
        raise
    return run.run_id


def _register(spec: StudySpec, result: FinalResult, model: Path) -> str:
    """Register the final model (alias champion, its figures as version tags), unless its run
    registered it already."""
    from harness.tracking.registry import register  # mlflow.pyfunc: seconds to import

    name = spec.registry.name or spec.name
    assert result.mlflow_run_id is not None
    version = register(open_tracker(spec).uri, result.mlflow_run_id, model, name,
                       result.registry_tags())
    return f"models:/{name}/{version}"


def final_model(spec: StudySpec) -> tuple[LanguageModel, HParams, tuple[str, ...]]:
    """The study's saved final model. Raises NothingToFinalize when there is none yet."""
    path = model_path(spec)
    if not path.exists():
        raise NothingToFinalize(f"study {spec.name!r} has no final model yet ({path}); run "
                                f"`harness finalize {spec.source}` first")
    return load_model(path)
