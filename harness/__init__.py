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

__version__ = "0.1.0"
