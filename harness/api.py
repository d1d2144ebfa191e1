"""The harness as Python functions: what the `harness` command runs, for a notebook too.

Each takes a validated study (`load_study_file`, or `harness.config.load_spec`) and returns a
typed result; the CLI is a thin layer that parses arguments and prints what these return.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from pathlib import Path

import optuna

from harness.config import StudySpec, load_spec
from harness.final import finalize as final
from harness.final.events import FinalizeObserver
from harness.final.result import FinalResult
from harness.results.publish import publish_final, publish_search
from harness.search.events import SearchObserver
from harness.search.local import run_search
from harness.util import paths


def load_study_file(path: str | Path, overrides: Sequence[str] = ()) -> StudySpec:
    """A study file, validated (every error at once, as a SpecError), with `KEY=VALUE`
    overrides applied as `--set` does."""
    return load_spec(path, overrides)


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
