"""MLflow runs: one experiment per study, a parent run for the study, a child run per trial.

The tracking floor (this package) is the only one that imports mlflow. Every trial run logs
every hyperparameter under the same keys (so the MLflow UI's parallel coordinates and scatter
views work across trials), its dev and train loss per evaluation step, and ends with a status
that follows the trial's state.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from harness.config import StudySpec
from harness.tracking.store import call, quiet, store_lock
from harness.util import paths

log = logging.getLogger(__name__)

# MLflow prints "View run ... at: URL" to stdout after every run on a tracking server; the
# harness prints the one address that matters itself.
os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")
# ... and a progress bar for every artifact it downloads (a checkpoint, a trial's model).
os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")

# Run statuses, as MLflow names them.
FINISHED, KILLED, FAILED = "FINISHED", "KILLED", "FAILED"

# Tags that let the harness find its own runs again.
TAG_STUDY = "harness.study"
TAG_ROLE = "harness.role"  # "study" (the parent) or "trial"
TAG_TRIAL = "harness.trial_number"
TAG_IDENTITY = "harness.study_identity"  # the study's identity in its storage (StudyRecord)
TAG_PARENT = "mlflow.parentRunId"  # MLflow's own: nests the run under its parent in the UI

FLUSH_EVERY_S = 5.0  # metrics are buffered and sent at most this often (and at the end)


def open_tracker(spec: StudySpec) -> Tracker:
    """The study's MLflow experiment: `tracking.experiment`, else the study's name."""
    return Tracker(spec.tracking.uri, spec.tracking.experiment or spec.name)


def _now_ms() -> int:
    return int(time.time() * 1000)


class Tracker:
    """An MLflow experiment for one study, reached through a thread-safe MlflowClient."""

    def __init__(self, uri: str | None, experiment: str) -> None:
        from mlflow import MlflowClient  # imported here: mlflow takes a second to import

        quiet()

        self.uri = uri or paths.tracking_uri()
        if uri is None:
            paths.root().mkdir(parents=True, exist_ok=True)
        location = paths.artifacts_uri(experiment) if uri is None else None
        # The first use of a database store creates its schema: two processes starting at once
        # would both create it, so a local store is first used under a file lock.
        with store_lock(self.uri):
            self.client = call(self.uri, lambda: MlflowClient(tracking_uri=self.uri))
            self.experiment_id = call(self.uri, lambda: self._experiment(experiment, location))

    def _experiment(self, name: str, location: str | None) -> str:
        exp = self.client.get_experiment_by_name(name)
        if exp is not None:
            return exp.experiment_id
        try:
            return self.client.create_experiment(name, location)
        except Exception:  # created by another process since (a tracking server)
            exp = self.client.get_experiment_by_name(name)
            if exp is None:
                raise
            return exp.experiment_id

    def study_run(self, study_name: str, identity: str, spec_yaml: str) -> str:
        """The study's parent run, found by the study's identity in its storage (two studies
        of one name in two storages have two parent runs): reopened, else created."""
        def find_or_create() -> str:
            found = self.client.search_runs(
                [self.experiment_id], filter_string=f"tags.`{TAG_IDENTITY}` = '{identity}'",
                max_results=1)
            if found:
                self.client.update_run(found[0].info.run_id, status="RUNNING")
                return found[0].info.run_id
            run = self.client.create_run(
                self.experiment_id, run_name=f"study {study_name}",
                tags={TAG_STUDY: study_name, TAG_ROLE: "study", TAG_IDENTITY: identity})
            self.client.log_text(run.info.run_id, spec_yaml, "study.yaml")
            return run.info.run_id

        return call(self.uri, find_or_create)

    def start_run(self, parent_run_id: str, study_name: str, role: str, run_name: str,
                  params: Mapping[str, Any], tags: Mapping[str, str] | None = None) -> ChildRun:
        """A run nested under the study's parent run, with `params` logged."""
        from mlflow.entities import Param

        def start() -> str:
            run = self.client.create_run(
                self.experiment_id, run_name=run_name,
                tags={TAG_STUDY: study_name, TAG_ROLE: role, TAG_PARENT: parent_run_id,
                      **(tags or {})})
            self.client.log_batch(run.info.run_id,
                                  params=[Param(k, str(v)) for k, v in params.items()])
            return run.info.run_id

        return ChildRun(self.client, call(self.uri, start), self.uri)

    def start_trial(self, parent_run_id: str, study_name: str, number: int,
                    params: Mapping[str, Any], tags: Mapping[str, str] | None = None) -> ChildRun:
        """A child run for trial `number`, with its number and hyperparameters as params."""
        return self.start_run(parent_run_id, study_name, "trial", f"trial-{number:04d}",
                              {"trial_number": number, **params},
                              {TAG_TRIAL: str(number), **(tags or {})})

    def find_runs(self, tags: Mapping[str, str]) -> list[tuple[str, str]]:
        """(run id, status) of the experiment's runs that carry all of `tags`."""
        where = " and ".join(f"tags.`{k}` = '{v}'" for k, v in tags.items())
        found = call(self.uri, lambda: self.client.search_runs([self.experiment_id],
                                                               filter_string=where))
        return [(r.info.run_id, r.info.status) for r in found]

    def set_tags(self, run_id: str, tags: Mapping[str, str]) -> None:
        from mlflow.entities import RunTag

        batch = [RunTag(k, str(v)) for k, v in tags.items()]
        call(self.uri, lambda: self.client.log_batch(run_id, tags=batch))

    def tags(self, run_id: str) -> dict[str, str]:
        return dict(call(self.uri, lambda: self.client.get_run(run_id)).data.tags)

    def end_run(self, run_id: str, status: str) -> None:
        call(self.uri, lambda: self.client.set_terminated(run_id, status=status))

    def log_artifact(self, run_id: str, path: Path, artifact_path: str | None = None) -> None:
        call(self.uri, lambda: self.client.log_artifact(run_id, str(path), artifact_path))

    def metric_history(self, run_id: str, key: str) -> list[tuple[int, float]]:
        """A run's metric as (step, value) pairs, by step."""
        history = call(self.uri, lambda: self.client.get_metric_history(run_id, key))
        return sorted((m.step, m.value) for m in history)


class RunArtifacts:
    """Files kept as artifacts of one run, shared by every machine that reaches the tracking
    server (a harness.search.checkpoints.Remote)."""

    def __init__(self, tracker: Tracker, run_id: str) -> None:
        self.tracker, self.run_id = tracker, run_id

    def upload(self, path: Path, artifact_dir: str) -> None:
        self.tracker.log_artifact(self.run_id, path, artifact_dir)

    def download(self, artifact_path: str, dst_dir: Path) -> Path | None:
        client, folder = self.tracker.client, os.path.dirname(artifact_path)

        def fetch() -> Path | None:
            if artifact_path not in {f.path for f in client.list_artifacts(self.run_id, folder)}:
                return None
            return Path(client.download_artifacts(self.run_id, artifact_path, str(dst_dir)))

        return call(self.tracker.uri, fetch)

    def delete(self, artifact_path: str) -> None:
        from mlflow.store.artifact.artifact_repository_registry import get_artifact_repository

        def delete() -> None:
            uri = self.tracker.client.get_run(self.run_id).info.artifact_uri
            get_artifact_repository(uri, tracking_uri=self.tracker.uri).delete_artifacts(
                artifact_path)

        call(self.tracker.uri, delete)


class ChildRun:
    """A trial's (or the final model's) run. Metrics are buffered and flushed every few
    seconds and at the end. A store that stays unreachable raises TrackingError."""

    def __init__(self, client: Any, run_id: str, uri: str) -> None:
        self.client = client
        self.run_id = run_id
        self.uri = uri
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
            call(self.uri, lambda: self.client.log_batch(self.run_id, metrics=self._pending))
            self._pending = []
        self._last_flush = time.monotonic()

    def log_text(self, text: str, artifact_file: str) -> None:
        call(self.uri, lambda: self.client.log_text(self.run_id, text, artifact_file))

    def log_artifact(self, path: Path) -> None:
        call(self.uri, lambda: self.client.log_artifact(self.run_id, str(path)))

    def finish(self, status: str, metrics: Mapping[str, float] | None = None,
               tags: Mapping[str, str] | None = None) -> None:
        """Send what is buffered, the final metrics and tags, and close the run with `status`."""
        from mlflow.entities import RunTag

        try:
            self.log_metrics(metrics or {}, self._last_step)
            self.flush()
            if tags:
                run_tags = [RunTag(k, v) for k, v in tags.items()]
                call(self.uri, lambda: self.client.log_batch(self.run_id, tags=run_tags))
        finally:
            call(self.uri, lambda: self.client.set_terminated(self.run_id, status=status))
