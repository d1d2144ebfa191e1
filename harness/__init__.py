"""harness: hyperparameter search for character-level MLP language models.

The package is a house of floors. Each floor imports only from the floors below it (the
import contract in pyproject.toml checks it in CI), and data flows one way: study file ->
config -> search (per trial: params -> train() -> records and tracking) -> final (the one test
evaluation) -> results -> the CLI shows it.

    cli/        the `harness` command: parsing, progress display, text of each result
    api         the same as Python functions (a notebook's entry)
    results/    leaderboard, plots, report (read-only over records); reproduce, lr-find
    final/      candidates, retraining, choosing, the final rules (ensemble, fill), the one
                test evaluation, the result
    search/     the Optuna storage, claims, records, space, samplers, stop rules, the
                objective, the worker loop, local workers, warm start, Pareto mode
    tracking/   MLflow runs, the model registry, remote artifacts (the only mlflow importer)
    training/   data (the test split sealed), the MLP, the optimizer step, the one training
                loop, precision, count-based baselines (torch, never Optuna or MLflow)
    config/     hyperparameters and their defaults, the study file's schema, loading and
                validation (no torch, Optuna or MLflow)
    util/       paths and atomic writes, processes and threads, redaction, logs, provenance
    errors      HarnessError(exit_code): the root of every error raised on purpose

The search floor cannot import the final floor: no trial can even reach the test evaluation.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

# The Python API (harness.api), importable from here. Loaded on first use: `import harness`
# stays light, so that the CLI judges a study file before torch, Optuna or MLflow load.
__all__ = ["Study", "finalize", "open_study", "run_study", "search", "study_spec"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        # Through importlib, so that the import contract (which reads import statements)
        # sees the package root as light as it is at run time.
        return getattr(importlib.import_module("harness.api"), name)
    raise AttributeError(f"module 'harness' has no attribute {name!r}")
