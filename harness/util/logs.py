"""Logging set-up for the processes the harness starts: the CLI and its worker processes."""

from __future__ import annotations

import logging
import os

from harness.util.redact import RedactingFilter


def configure(verbose: bool = False) -> None:
    """Warnings only (INFO with `verbose`), for the harness and the libraries it drives."""
    level = logging.INFO if verbose else logging.WARNING
    # MLflow installs its own handler at import, at INFO unless told otherwise.
    os.environ.setdefault("MLFLOW_LOGGING_LEVEL", logging.getLevelName(level))
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")
    for handler in logging.getLogger().handlers:  # no password reaches a log line
        handler.addFilter(RedactingFilter())
    for noisy in ("alembic", "mlflow", "optuna"):
        logging.getLogger(noisy).setLevel(level)
    import optuna  # here, not at the top: the CLI imports this module before a study is valid

    # Optuna logs every failed trial with a traceback; the progress display already says what
    # happened to each trial, with its reason.
    optuna.logging.set_verbosity(level if verbose else logging.ERROR)
