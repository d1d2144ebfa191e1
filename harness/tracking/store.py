"""The MLflow tracking store as a place: is it a server, can it be reached, and calls to it
whose failures become one TrackingError. No mlflow import at module level: MLflow takes a
second or more to import, and a command that fails early should not wait for it.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import socket
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TypeVar

from harness.errors import TrackingError
from harness.util.redact import redact

T = TypeVar("T")


def is_server(uri: str | None) -> bool:
    """Whether `uri` names a tracking server (reached by other machines, over HTTP) rather
    than a database or a file: the one place that tells them apart."""
    return bool(uri) and str(uri).startswith(("http://", "https://"))


def check_reachable(uri: str | None, timeout_s: float = 5.0) -> None:
    """Fail fast, with one clear line, when a tracking server or database does not answer.

    (MLflow itself retries an unreachable database for minutes before it gives up.)
    """
    if not uri:
        return
    if is_server(uri):
        import urllib.error
        import urllib.request

        try:
            with urllib.request.urlopen(uri.rstrip("/") + "/health", timeout=timeout_s):
                return
        except (urllib.error.URLError, OSError, ValueError) as exc:
            reason = str(getattr(exc, "reason", exc))
            raise TrackingError(f"cannot reach the MLflow tracking server at {redact(uri)}: "
                                f"{redact(reason)}") from None
    if "://" in uri and not uri.startswith(("file:", "databricks")):
        import sqlalchemy  # MLflow's own dependency, heavy: only for a database URI

        try:
            engine = sqlalchemy.create_engine(uri)
            engine.connect().close()
            engine.dispose()
        except Exception as exc:  # a bad scheme, a dead server, a missing folder
            reason = str(getattr(exc, "orig", None) or exc).strip().splitlines()[0]
            raise TrackingError(f"cannot use the MLflow tracking store {redact(uri)}: "
                                f"{redact(reason)}") from None


def preload() -> None:
    """Import MLflow now (a second or more), e.g. while waiting for a study to be created."""
    import mlflow  # noqa: F401


def quiet() -> None:
    """Silence what MLflow prints itself ("Successfully registered model ...", "Created
    version ...") unless the harness runs verbose (harness.util.logs)."""
    from mlflow.utils import logging_utils  # mlflow is loaded by the caller already

    if not os.environ.get("HARNESS_VERBOSE"):
        logging_utils.disable_logging()


def call(uri: str, fn: Callable[[], T]) -> T:
    """`fn()`, with any failure of the store (after MLflow's own retries) as a TrackingError."""
    try:
        return fn()
    except TrackingError:
        raise
    except Exception as exc:  # mlflow raises many types for an unreachable or broken store
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise TrackingError(f"the MLflow tracking store {redact(uri)} failed: "
                            f"{redact(reason)}") from None


@contextlib.contextmanager
def store_lock(uri: str) -> Iterator[None]:
    """An exclusive lock beside a local sqlite store while the block runs (no-op otherwise)."""
    if not uri.startswith("sqlite:///"):
        yield
        return
    db = Path(uri.removeprefix("sqlite:///").split("?")[0])
    lock_path = db.with_name(db.name + ".lock")
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    with lock_path.open("a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def ui_command(uri: str, host: str, port: int) -> list[str]:
    """The command that serves the MLflow UI for a tracking store (a database or sqlite file)."""
    return [sys.executable, "-m", "mlflow", "ui", "--backend-store-uri", uri,
            "--host", host, "--port", str(port)]


def port_in_use(host: str, port: int) -> bool:
    """Whether something already listens on host:port (the UI would not get it)."""
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # TIME_WAIT is not "in use"
        try:
            s.bind((host, port))
        except OSError:
            return True
    return False
