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

from harness.errors import InputError
from harness.util.processes import pid_alive


def root() -> Path:
    """The results root: $HARNESS_ROOT, else ./mlruns (relative to the working directory).
    Raises InputError when it names something that is not a folder."""
    path = Path(os.environ.get("HARNESS_ROOT", "mlruns"))
    if path.exists() and not path.is_dir():
        raise InputError(f"the results folder {path} is not a folder (set HARNESS_ROOT to a "
                         "folder, or move the file away)")
    return path


def writable(path: Path) -> bool:
    """Whether this process may create files in `path` (the nearest folder that exists, for a
    path not made yet)."""
    while not path.exists() and path != path.parent:
        path = path.parent
    return os.access(path, os.W_OK)


def require_writable(path: Path | None = None) -> None:
    """Raise InputError unless this process may write under `path` (default: the results
    root), before anything is written."""
    path = root() if path is None else path
    if not writable(path):
        raise InputError(f"cannot write under {path}: it is read-only for this user (commands "
                         "that only read, such as status and leaderboard, work on it; set "
                         "HARNESS_ROOT to a writable folder to run studies)")


def output_file(path: Path) -> Path:
    """`path` as a file to write (its folder made): raises InputError when it is a folder or
    cannot be written."""
    if path.is_dir():
        raise InputError(f"{path} is a folder; give a file name to write to")
    require_writable(path.parent)
    path.parent.mkdir(parents=True, exist_ok=True)
    return path


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
