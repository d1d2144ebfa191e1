"""What a search and a finalize leave behind to look at.

`publish_search` (the `on_end` that run-study gives the search): when it ends, interrupted or
not, the leaderboard CSV and the figures, on disk and on the study's MLflow run, and the run
closed with the search's status. `publish_final`: the final model's embeddings figure.
"""

from __future__ import annotations

import logging
from pathlib import Path

import optuna

from harness.config import StudySpec
from harness.errors import TrackingError
from harness.final.publish import final_model
from harness.final.result import FinalResult
from harness.results import leaderboard, plots
from harness.search import records
from harness.search.records import StudyRecord
from harness.tracking import KILLED, Tracker, open_tracker
from harness.training.model import MLP, Ensemble, neural_part
from harness.util import paths

log = logging.getLogger(__name__)


def publish_search(spec: StudySpec, study: optuna.Study, record: StudyRecord,
                   status: str) -> None:
    """The leaderboard CSV and the figures, on disk and on the study's run; the run closed.
    An interrupted search (KILLED) draws no figures: stopping stays prompt, and the next
    run-study draws them."""
    out = paths.study_dir(spec.name) / "leaderboard.csv"
    out.parent.mkdir(parents=True, exist_ok=True)
    board = leaderboard.build(study, pareto_metric=spec.objective.pareto)
    out.write_text(leaderboard.to_csv(board), encoding="utf-8")
    try:
        tracker = open_tracker(spec)
        tracker.log_artifact(record.parent_run_id, out)
        if status != KILLED:
            _plot(spec, study, tracker, record.parent_run_id)
        tracker.end_run(record.parent_run_id, status)
    except TrackingError as exc:  # the leaderboard is on disk; the run waits for a rerun
        log.warning("could not update the study's MLflow run: %s", exc)


def _plot(spec: StudySpec, study: optuna.Study, tracker: Tracker, parent: str) -> None:
    """The study's figures on its parent run; loss curves on each finished trial's run that
    has none yet (an earlier study's, added by warm start, keeps its own)."""
    try:
        out = paths.study_dir(spec.name) / "plots"
        figures = plots.study_figures(study, out)
        if spec.objective.pareto:
            figures.append(plots.pareto_front(records.search_records(study),
                                              spec.objective.pareto, out / "pareto.png"))
        for path in figures:
            tracker.log_artifact(parent, path, "plots")
        for r in records.records(study):
            run_id = r.mlflow_run_id
            path = out / "trials" / f"trial-{r.number:04d}.png"
            if not r.state.is_finished() or r.warm_from or not run_id or path.exists():
                continue
            plots.loss_curves(tracker.metric_history(run_id, "dev_loss"),
                              tracker.metric_history(run_id, "train_loss"),
                              f"{spec.name}, trial {r.number} ({r.state.name.lower()})", path)
            tracker.log_artifact(run_id, path)
    except Exception:  # a figure that cannot be drawn must not cost the study
        log.exception("drawing the study's figures failed")


def publish_final(spec: StudySpec, result: FinalResult) -> Path:
    """The final model's character embeddings (its best seed's model) as a figure, on disk
    and on the final MLflow run."""
    mixed, _hp, itos = final_model(spec)
    model = neural_part(mixed)  # a Mixed model's network
    if isinstance(model, Ensemble):  # its members in seed order: the best seed's is one
        model = model.models[result.seeds.index(result.model_seed)]
    assert isinstance(model, MLP)
    path = plots.embeddings(model.embedding.weight, itos,
                            paths.study_dir(spec.name) / "plots" / "embeddings.png")
    if result.mlflow_run_id:
        open_tracker(spec).log_artifact(result.mlflow_run_id, path)
    return path
