"""MLflow tracking: one experiment per study, a parent run for the study, a child run per trial.

This is the only module that imports mlflow. Every trial run logs every hyperparameter under the
same keys (so the MLflow UI's parallel coordinates and scatter views work across trials), its
dev and train loss per evaluation step, and ends with a status that follows the trial's state.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from harness import paths
from harness.redact import redact

log = logging.getLogger(__name__)

# Run statuses, as MLflow names them.
FINISHED, KILLED, FAILED = "FINISHED", "KILLED", "FAILED"

# Tags that let the harness find its own runs again.
TAG_STUDY = "harness.study"
TAG_ROLE = "harness.role"  # "study" (the parent) or "trial"
TAG_TRIAL = "harness.trial_number"
TAG_PARENT = "mlflow.parentRunId"  # MLflow's own: nests the run under its parent in the UI

FLUSH_EVERY_S = 5.0  # metrics are buffered and sent at most this often (and at the end)


class TrackingError(RuntimeError):
    """The tracking store cannot be reached or used."""


def check_reachable(uri: str | None, timeout_s: float = 5.0) -> None:
    """Fail fast, with one clear line, when a tracking server or database does not answer.

    (MLflow itself retries an unreachable database for minutes before it gives up.)
    """
    if not uri:
        return
    if uri.startswith(("http://", "https://")):
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
        import sqlalchemy

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


def _now_ms() -> int:
    return int(time.time() * 1000)


class Tracker:
    """An MLflow experiment for one study, reached through a thread-safe MlflowClient."""

    def __init__(self, uri: str | None, experiment: str) -> None:
        from mlflow import MlflowClient  # imported here: mlflow takes a second to import

        self.uri = uri or paths.tracking_uri()
        if uri is None:
            paths.root().mkdir(parents=True, exist_ok=True)
        self.client = MlflowClient(tracking_uri=self.uri)
        try:
            exp = self.client.get_experiment_by_name(experiment)
            if exp is None:
                location = paths.artifacts_uri(experiment) if uri is None else None
                self.experiment_id = self.client.create_experiment(experiment, location)
            else:
                self.experiment_id = exp.experiment_id
        except Exception as exc:  # mlflow raises many types for an unreachable store
            reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise TrackingError(f"cannot use the MLflow tracking store {redact(self.uri)}: "
                                f"{redact(reason)}") from None

    def study_run(self, study_name: str, spec_yaml: str) -> str:
        """The study's parent run: the existing one when resuming, else a new one."""
        found = self.runs(study_name, "study")
        if found:
            run_id = found[0].info.run_id
            self.client.update_run(run_id, status="RUNNING")
            return run_id
        run = self.client.create_run(
            self.experiment_id,
            run_name=f"study {study_name}",
            tags={TAG_STUDY: study_name, TAG_ROLE: "study"},
        )
        self.client.log_text(run.info.run_id, spec_yaml, "study.yaml")
        return run.info.run_id

    def start_run(self, parent_run_id: str, study_name: str, role: str, run_name: str,
                  params: Mapping[str, Any], tags: Mapping[str, str] | None = None) -> ChildRun:
        """A run nested under the study's parent run, with `params` logged."""
        from mlflow.entities import Param

        run = self.client.create_run(
            self.experiment_id,
            run_name=run_name,
            tags={TAG_STUDY: study_name, TAG_ROLE: role, TAG_PARENT: parent_run_id, **(tags or {})},
        )
        run_id = run.info.run_id
        self.client.log_batch(run_id, params=[Param(k, str(v)) for k, v in params.items()])
        return ChildRun(self.client, run_id)

    def start_trial(self, parent_run_id: str, study_name: str, number: int,
                    params: Mapping[str, Any]) -> ChildRun:
        """A child run for trial `number`, with its number and hyperparameters as params."""
        return self.start_run(parent_run_id, study_name, "trial", f"trial-{number:04d}",
                              {"trial_number": number, **params}, {TAG_TRIAL: str(number)})

    def end_run(self, run_id: str, status: str) -> None:
        self.client.set_terminated(run_id, status=status)

    def log_artifact(self, run_id: str, path: Path, artifact_path: str | None = None) -> None:
        self.client.log_artifact(run_id, str(path), artifact_path)

    def metric_history(self, run_id: str, key: str) -> list[tuple[int, float]]:
        """A run's metric as (step, value) pairs, by step."""
        return sorted((m.step, m.value) for m in self.client.get_metric_history(run_id, key))

    def runs(self, study_name: str, role: str) -> list[Any]:
        """The study's runs of one role ("study", "trial" or "final")."""
        return list(self.client.search_runs(
            [self.experiment_id],
            filter_string=f"tags.`{TAG_STUDY}` = '{study_name}' and tags.`{TAG_ROLE}` = '{role}'",
            max_results=10_000,
        ))


def ui_command(uri: str, host: str, port: int) -> list[str]:
    """The command that serves the MLflow UI for a tracking store (a database or sqlite file)."""
    import sys

    return [sys.executable, "-m", "mlflow", "ui", "--backend-store-uri", uri,
            "--host", host, "--port", str(port)]


class ChildRun:
    """A trial's (or the final model's) run. Metrics are buffered and flushed every few
    seconds and at the end."""

    def __init__(self, client: Any, run_id: str) -> None:
        self.client = client
        self.run_id = run_id
        self._pending: list[Any] = []
        self._last_flush = time.monotonic()
        self._last_step = 0

    def log_metrics(self, metrics: Mapping[str, float], step: int) -> None:
        from mlflow.entities import Metric

        ts = _now_ms()
        self._last_step = step
        self._pending += [Metric(k, float(v), ts, step) for k, v in metrics.items()]
        if time.monotonic() - self._last_flush >= FLUSH_EVERY_S:
            self.flush()

    def flush(self) -> None:
        if self._pending:
            self.client.log_batch(self.run_id, metrics=self._pending)
            self._pending = []
        self._last_flush = time.monotonic()

    def log_text(self, text: str, artifact_file: str) -> None:
        self.client.log_text(self.run_id, text, artifact_file)

    def log_artifact(self, path: Path) -> None:
        self.client.log_artifact(self.run_id, str(path))

    def finish(self, status: str, metrics: Mapping[str, float] | None = None,
               tags: Mapping[str, str] | None = None) -> None:
        """Send what is buffered, the final metrics and tags, and close the run with `status`."""
        from mlflow.entities import RunTag

        try:
            self.log_metrics(metrics or {}, self._last_step)
            self.flush()
            if tags:
                self.client.log_batch(self.run_id, tags=[RunTag(k, v) for k, v in tags.items()])
        finally:
            self.client.set_terminated(self.run_id, status=status)
