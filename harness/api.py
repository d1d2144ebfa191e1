"""The harness as Python functions: what the `harness` command runs, for a notebook too.

    import harness

    study = harness.run_study("studies/quick.yaml")  # or a dict of its keys
    study.leaderboard()                              # trials ranked: a DataFrame
    study.final.test_mean                            # the test split, read once
    study.sample(10)                                 # names from the final model

`run_study` searches and finalizes; `open_study` opens a study that ran (or runs elsewhere).
Both return a `Study`, whose methods read what the study recorded: nothing is trained or
evaluated again. `search` and `finalize` are the two halves of `run_study`, as the CLI runs
them. Each raises a `harness.errors.HarnessError` with a message fit to show a person.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
import pandas as pd

from harness.config import StudySpec, load_mapping, load_spec
from harness.errors import AlreadyFinalized
from harness.final import finalize as final
from harness.final.events import FinalizeObserver
from harness.final.publish import final_model
from harness.final.result import FinalResult
from harness.results import leaderboard as boards
from harness.results import report
from harness.results.publish import publish_final, publish_search
from harness.search import counting, records
from harness.search.events import SearchObserver
from harness.search.liveness import load_study
from harness.search.local import run_search
from harness.search.records import TrialRecord
from harness.training.model import LanguageModel, sample_words
from harness.util import paths

# A study: its file, its keys as a mapping, or a validated spec.
Source = str | Path | Mapping[str, Any] | StudySpec


def study_spec(source: Source, overrides: Sequence[str] = ()) -> StudySpec:
    """A validated study from a file, a mapping of a study file's keys, or a spec as it is;
    `overrides` are `KEY=VALUE` strings, as `--set` takes them. Raises SpecError with every
    problem at once."""
    if isinstance(source, StudySpec):
        return load_mapping(dict(source.raw), source.source, source.name, overrides) \
            if overrides else source
    if isinstance(source, Mapping):
        return load_mapping(dict(source), "<dict>", str(source.get("name", "study")),
                            overrides)
    return load_spec(source, overrides)


@dataclass(frozen=True)
class Study:
    """A study that ran (or runs), read from its stores: nothing here trains or evaluates."""

    spec: StudySpec

    @property
    def name(self) -> str:
        return self.spec.name

    def optuna(self) -> optuna.Study:
        """The Optuna study itself (its storage as the study file names it)."""
        return load_study(self.spec)

    def trials(self) -> list[TrialRecord]:
        """Every trial, as the harness records it (surplus ones left out)."""
        return records.search_records(self.optuna())

    def best(self) -> TrialRecord | None:
        """The best feasible complete trial, or None."""
        return counting.best(self.trials())

    def leaderboard(self) -> pd.DataFrame:
        """The trials ranked by best dev loss, as the leaderboard CSV has them."""
        return boards.build(self.optuna(), pareto_metric=self.spec.objective.pareto)

    @property
    def final(self) -> FinalResult | None:
        """The final result, once the study was finalized."""
        recorded = records.read_final(self.optuna())
        return FinalResult.from_dict(recorded) if recorded else None

    def model(self) -> LanguageModel:
        """The final model (an MLP, or an ensemble of them). Raises NothingToFinalize."""
        return final_model(self.spec)[0]

    def sample(self, n: int = 10, *, seed: int = 0, temperature: float = 1.0) -> list[str]:
        """`n` names sampled from the final model (seeded)."""
        model, _hp, itos = final_model(self.spec)
        return sample_words(model, itos, n, seed=seed, temperature=temperature)

    def figures(self) -> list[Path]:
        """The study's figures (PNG files): history, importances, coordinates, ..."""
        return sorted((paths.study_dir(self.name) / "plots").glob("*.png"))

    def report(self, out: Path | None = None) -> Path:
        """Write the study's report (Markdown); returns where."""
        return report.write(self.spec, out)


def run_study(source: Source, *, overrides: Sequence[str] = (), workers: int | None = None,
              device: str = "cpu", finalize: bool = True,
              observer: Any = None) -> Study:
    """Run (or resume) a study to its budget, then finalize it (unless `finalize` is False
    or its file says `finalize.enabled: false`). `observer` receives the progress events
    (harness.search.events, harness.final.events): none is shown without one."""
    spec = study_spec(source, overrides)
    finalizes = finalize and spec.finalize.enabled
    search(spec, workers=workers, device=device, observer=observer, finalize_next=finalizes)
    if finalizes:
        with contextlib.suppress(AlreadyFinalized):  # finalized before: as asked
            _finalize(spec, device=device, workers=workers or spec.workers.count,
                      observer=observer)
    return Study(spec)


def open_study(source: Source, overrides: Sequence[str] = ()) -> Study:
    """A study that ran (its storage as the file names it). Raises StudyNotFound."""
    spec = study_spec(source, overrides)
    load_study(spec)
    return Study(spec)


def search(spec: StudySpec, *, workers: int | None = None, device: str = "cpu",
           observer: SearchObserver | None = None, finalize_next: bool = False,
           allow_data_change: bool = False) -> optuna.Study:
    """Create or resume the study and run its trials until it has budget.n_trials (or a stop
    rule ends it); the leaderboard and figures are written at the end, interrupted or not.
    `finalize_next`: the final model follows (budget.wall_time keeps time for it).
    `allow_data_change`: accept data that changed since the study was created."""
    paths.require_writable()
    return run_search(spec, workers=workers, observer=observer, device=device,
                      finalize=finalize_next, on_end=functools.partial(publish_search, spec),
                      allow_data_change=allow_data_change)


def finalize(spec: StudySpec, *, force: bool = False, device: str = "cpu", workers: int = 1,
             observer: FinalizeObserver | None = None,
             allow_data_change: bool = False) -> FinalResult:
    """Choose the final model on dev, evaluate it once on test, save and record it (or finish
    what an interrupted finalize left)."""
    paths.require_writable()
    result = final.finalize(spec, force=force, device=device, workers=workers,
                            observer=observer, allow_data_change=allow_data_change)
    publish_final(spec, result)
    return result


_finalize = finalize  # for run_study, whose `finalize` flag hides this function
