"""Where the harness keeps things on disk: everything lives under one results root.

    mlruns/                 the root (HARNESS_ROOT overrides it); git-ignored
      mlflow.db             MLflow's tracking store (sqlite)
      artifacts/            MLflow's artifacts, one folder per experiment
      optuna.journal        the embedded Optuna storage, shared safely by local processes
      studies/<name>/       the harness's own outputs per study (leaderboard, plots, model)
"""

from __future__ import annotations

import glob
import os
import socket
from collections.abc import Callable
from pathlib import Path

from harness.util.processes import pid_alive


def root() -> Path:
    """The results root: $HARNESS_ROOT, else ./mlruns (relative to the working directory)."""
    return Path(os.environ.get("HARNESS_ROOT", "mlruns"))


def tracking_uri() -> str:
    """The default MLflow tracking URI (MLflow 3.17 refuses a plain ./mlruns file store)."""
    return f"sqlite:///{root().resolve() / 'mlflow.db'}"


def artifacts_uri(experiment: str) -> str:
    """Artifact location for an experiment in the default store."""
    return (root().resolve() / "artifacts" / experiment).as_uri()


def journal_path() -> Path:
    """The embedded Optuna storage file."""
    return root() / "optuna.journal"


def replace_whole(path: Path, write: Callable[[Path], object]) -> None:
    """Replace `path` by what `write` writes, whole: it writes a file beside it, which is then
    renamed over it, so a process killed mid-write leaves the previous file, never a cut-off
    one (a write that raises removes its partial file; the partial files of writers on this
    host that were killed before they could are removed by the next write of `path`)."""
    for stale in path.parent.glob(f"{glob.escape(path.name)}.*.partial"):
        host, _, pid = stale.name[len(path.name) + 1:-len(".partial")].rpartition(".")
        if host == socket.gethostname() and pid.isdigit() and not pid_alive(int(pid)):
            stale.unlink(missing_ok=True)
    partial = path.with_name(f"{path.name}.{socket.gethostname()}.{os.getpid()}.partial")
    try:
        write(partial)
        os.replace(partial, path)
    except BaseException:
        partial.unlink(missing_ok=True)
        raise


def study_dir(name: str) -> Path:
    """The folder for one study's own outputs. `name` is validated by the spec (no '/' or '..')."""
    return root() / "studies" / name
