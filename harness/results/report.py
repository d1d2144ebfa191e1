"""A study's report: one Markdown file a person pastes into a paper's appendix or a pull request.

Provenance (of the last run-study), the leaderboard's top 10 beside the count-based references
(dev), the figures as image links, the final model's dev and test losses with the references
scored on test at the same moment, and 20 names sampled from it. Nothing is evaluated here:
every figure is read from what the study recorded.
"""

from __future__ import annotations

import os
from pathlib import Path

from harness.config import StudySpec
from harness.errors import TrackingError
from harness.final.publish import final_model
from harness.final.result import FinalResult
from harness.results import leaderboard
from harness.search import records
from harness.search.liveness import load_study
from harness.tracking import open_tracker
from harness.training import baseline
from harness.training.model import sample_words
from harness.util import paths, provenance

TOP = 10
SAMPLES = 20


def render(spec: StudySpec, out: Path) -> str:
    """The report's Markdown; image links are relative to `out`'s folder."""
    study = load_study(spec)
    record = records.read_record(study)
    parts = [f"# Study `{spec.name}`", ""]
    parts += _provenance(spec, record.parent_run_id if record else None)
    refs = baseline.cached(spec.data, paths.study_dir(spec.name) / "baselines.json")
    board = leaderboard.board(spec.name, study, spec.search_names(), refs,
                              spec.objective.pareto)
    parts += [f"## Leaderboard (top {TOP}, dev loss; references: count-based models on dev)",
              "", leaderboard.render([board], "md", TOP).rstrip(), ""]
    figures = sorted((paths.study_dir(spec.name) / "plots").glob("*.png"))
    if figures:
        parts += ["## Figures", ""]
        parts += [f"![{f.stem}]({os.path.relpath(f.resolve(), out.resolve().parent)})"
                  for f in figures]
        parts.append("")
    final = records.read_final(study)
    parts += _final(spec, FinalResult.from_dict(final)) if final else [
        "## Final model", "", "Not finalized yet: the test split has not been evaluated.", ""]
    return "\n".join(parts) + "\n"


def _provenance(spec: StudySpec, parent_run_id: str | None) -> list[str]:
    tags: dict[str, str] = {}
    if parent_run_id:
        try:
            tags = open_tracker(spec).tags(parent_run_id)
        except TrackingError:
            tags = {}
    rows = [(k.removeprefix(provenance.PREFIX), v) for k, v in sorted(tags.items())
            if k.startswith(provenance.PREFIX)]
    hosts = sorted(k.removeprefix("harness.worker_host.") + f" ({v})"
                   for k, v in tags.items() if k.startswith("harness.worker_host."))
    if hosts:
        rows.append(("worker hosts", ", ".join(hosts)))
    lines = ["## Provenance (the last `run-study`)", "", "| key | value |", "| --- | --- |"]
    lines += [f"| {k} | `{v}` |" for k, v in rows] or ["| (none recorded) | |"]
    return [*lines, ""]


def _final(spec: StudySpec, r: FinalResult) -> list[str]:
    lines = [f"## Final model: trial {r.chosen_trial}, {r.size} parameters", "",
             (f"Picked from the Pareto front by `finalize.pick: {r.pick}`, retrained on seeds "
              if r.pick else "Chosen on mean dev loss over seeds ")
             + f"{', '.join(map(str, r.seeds))} ({r.steps:,} steps each); the test split was "
             f"evaluated {r.test_evaluations} time(s).", "",
             "| model | dev loss | test loss |", "| --- | ---: | ---: |"]
    lines += [f"| {model} | {dev} | {test} |" for model, dev, test in r.table_rows()]
    lines += ["", "Config: " + ", ".join(f"`{k}={v}`" for k, v in r.config.items()), ""]
    if r.registered:
        lines += [f"Registered as `{r.registered}` (alias `champion`); commit `{r.commit}`.",
                  ""]
    model, _hp, itos = final_model(spec)
    names = sample_words(model, itos, SAMPLES, seed=0)
    return [*lines, f"## {SAMPLES} names sampled from it (seed 0)", "", " ".join(names), ""]


def write(spec: StudySpec, out: Path | None = None) -> Path:
    """Write the report (default: the study's folder, report.md) and log it to the study's
    MLflow run; returns where it was written."""
    out = out or paths.study_dir(spec.name) / "report.md"
    text = render(spec, out)  # the study is read (or found missing) before anything is made
    paths.output_file(out).write_text(text, encoding="utf-8")
    record = records.read_record(load_study(spec))
    if record is not None:
        open_tracker(spec).log_artifact(record.parent_run_id, out)
    return out
