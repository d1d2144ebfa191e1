"""Logging set-up for the processes the harness starts: the CLI and its worker processes.

The terminal shows the harness's own warnings (its INFO too with `verbose`); what the
libraries it drives log (MLflow, Optuna, Alembic, Python's warnings) stays out of it, unless
`verbose`, and goes with the harness's INFO to the log file `<results root>/harness.log`,
once the results folder exists and can be written. MLflow's own prints (registering a model,
creating a version) are silenced by the tracking floor unless verbose (HARNESS_VERBOSE).
Passwords are masked in every line, wherever it goes.
"""

from __future__ import annotations

import logging
import os

from harness.errors import HarnessError
from harness.util import paths
from harness.util.redact import RedactingFilter

LOG_FILE = "harness.log"
FORMAT = "%(levelname)s %(name)s: %(message)s"
_LIBRARIES = ("alembic", "mlflow", "optuna", "urllib3", "matplotlib", "git", "py.warnings")


_installed: list[logging.Handler] = []  # the handlers the last configure() added to the root


class _OwnLines(logging.Filter):
    """Lets through the harness's records only."""

    def filter(self, record: logging.LogRecord) -> bool:
        return record.name == "harness" or record.name.startswith("harness.")


class _ResultsLog(logging.Handler):
    """Appends to the log file under the results root, once that folder exists and can be
    written; drops the record otherwise (nothing is created for a log line)."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            root = paths.root()
            if not root.is_dir() or not paths.writable(root):
                return
            with (root / LOG_FILE).open("a", encoding="utf-8") as f:
                f.write(f"{self.formatter.formatTime(record) if self.formatter else ''} "
                        f"{self.format(record)}\n")
        except (OSError, HarnessError):
            return


def configure(verbose: bool = False) -> None:
    """Warnings only (INFO with `verbose`) on the terminal, the harness's alone unless
    `verbose`; INFO to the log file."""
    os.environ["HARNESS_VERBOSE"] = "1" if verbose else ""
    # MLflow configures a handler of its own at import unless told not to: its loggers then
    # reach these handlers, like everyone else's.
    os.environ.setdefault("MLFLOW_CONFIGURE_LOGGING", "false")
    terminal = logging.StreamHandler()
    terminal.setLevel(logging.INFO if verbose else logging.WARNING)
    if not verbose:
        terminal.addFilter(_OwnLines())
    log_file = _ResultsLog(logging.INFO)
    for handler in (terminal, log_file):
        handler.setFormatter(logging.Formatter(FORMAT, "%Y-%m-%d %H:%M:%S"))
        handler.addFilter(RedactingFilter())  # no password reaches a log line
    root = logging.getLogger()
    # Replace the handlers an earlier call added, and keep everyone else's (pytest's caplog,
    # a notebook's): they see the harness's records too.
    for old in _installed:
        root.removeHandler(old)
    _installed[:] = [terminal, log_file]
    for ours in _installed:
        root.addHandler(ours)
    root.setLevel(logging.INFO)
    for name in _LIBRARIES:  # their INFO is chatter (Alembic's at every database opened)
        logging.getLogger(name).setLevel(logging.INFO if verbose else logging.WARNING)
    logging.captureWarnings(True)  # Python's warnings: to the log, not the terminal
    import optuna  # here, not at the top: the CLI imports this module before a study is valid

    # Optuna's own handler would print every failed trial with a traceback; its records go
    # to these handlers instead (the progress display says what happened to each trial).
    optuna.logging.disable_default_handler()
    optuna.logging.enable_propagation()
    optuna.logging.set_verbosity(logging.INFO if verbose else logging.WARNING)
