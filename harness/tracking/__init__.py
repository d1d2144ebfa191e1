"""The tracking floor: MLflow runs, the model registry, remote artifacts. The only importer of
mlflow (imported where it is used, never by `import harness.tracking`)."""

from harness.tracking.runs import (
    FAILED,
    FINISHED,
    KILLED,
    ChildRun,
    RunArtifacts,
    Tracker,
    open_tracker,
)
from harness.tracking.store import check_reachable, is_server

__all__ = ["FAILED", "FINISHED", "KILLED", "ChildRun", "RunArtifacts", "Tracker",
           "check_reachable", "is_server", "open_tracker"]
