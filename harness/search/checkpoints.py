"""Trial checkpoints: where a running trial's training state is kept, so that a retry resumes it.

A trial lost with its worker (killed, interrupted, stale) is re-queued as a new trial; the
chain of retries shares one checkpoint, named for the first trial of the chain:

    <results root>/studies/<study>/checkpoints/trial-<first>.pt

Each save replaces the file atomically (written beside it, then renamed), so a process killed
mid-save leaves the previous checkpoint whole. With a tracking server the file is also uploaded
as an artifact of the study's MLflow run (`checkpoints/trial-<first>.pt`), and a worker on any
machine loads it from there. A damaged or foreign checkpoint is reported and ignored: the trial
starts from step 0 and never crashes on it.
"""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path
from typing import Protocol

import optuna
import torch
from optuna.trial import TrialState

from harness.config import StudySpec
from harness.search.records import records
from harness.tracking import RunArtifacts, Tracker, is_server
from harness.training.train import TrainState
from harness.util import paths

log = logging.getLogger(__name__)

SUFFIX = ".pt"
ARTIFACT_DIR = "checkpoints"


class Remote(Protocol):
    """Where checkpoints are shared between machines (the study's MLflow run artifacts)."""

    def upload(self, path: Path, artifact_dir: str) -> None: ...

    def download(self, artifact_path: str, dst_dir: Path) -> Path | None:
        """The artifact, fetched under dst_dir; None when there is none."""
        ...

    def delete(self, artifact_path: str) -> None: ...


class CheckpointStore:
    """The checkpoints of one study: a folder, and optionally a remote copy."""

    def __init__(self, folder: Path, remote: Remote | None = None) -> None:
        self.folder = folder
        self.remote = remote

    def path(self, key: int) -> Path:
        return self.folder / f"trial-{key}{SUFFIX}"

    def save(self, key: int, state: TrainState) -> None:
        """Replace trial `key`'s checkpoint with `state`, atomically."""
        self.folder.mkdir(parents=True, exist_ok=True)
        final = self.path(key)
        paths.replace_whole(final, lambda partial: torch.save(state.to_dict(), partial))
        if self.remote is not None:
            self.remote.upload(final, ARTIFACT_DIR)

    def load(self, key: int) -> TrainState | None:
        """Trial `key`'s last state; None when there is none or it cannot be read (warned)."""
        path = self.path(key)
        if self.remote is not None:  # the shared copy is the latest, whichever machine saved it
            with tempfile.TemporaryDirectory() as tmp:
                fetched = self.remote.download(f"{ARTIFACT_DIR}/{path.name}", Path(tmp))
                return None if fetched is None else self._read(fetched, key)
        return self._read(path, key) if path.exists() else None

    @staticmethod
    def _read(path: Path, key: int) -> TrainState | None:
        try:
            return TrainState.from_dict(torch.load(path, map_location="cpu", weights_only=True))
        except Exception as exc:  # truncated, not a zip, not a state, unsafe pickle
            log.warning("checkpoint %s cannot be read (%s: %s); trial %d starts again from "
                        "step 0", path, type(exc).__name__, str(exc).splitlines()[0][:200], key)
            return None

    def delete(self, key: int) -> None:
        """Remove trial `key`'s checkpoint (and any partial save left by a killed process)."""
        for p in self.folder.glob(f"trial-{key}{SUFFIX}*"):
            p.unlink(missing_ok=True)
        if self.remote is not None:
            try:
                self.remote.delete(f"{ARTIFACT_DIR}/{self.path(key).name}")
            except Exception as exc:  # the run may be gone; the local copy is removed anyway
                log.warning("could not delete the remote checkpoint of trial %d: %s", key, exc)

    def keys(self) -> list[int]:
        """The trials (first of their chains) that have a checkpoint on this machine."""
        if not self.folder.is_dir():
            return []
        return sorted(int(p.stem.removeprefix("trial-")) for p in self.folder.glob("trial-*.pt")
                      if p.stem.removeprefix("trial-").isdigit())

    def disk_bytes(self) -> int:
        """Bytes the study's checkpoints take on this machine's disk."""
        if not self.folder.is_dir():
            return 0
        return sum(p.stat().st_size for p in self.folder.iterdir() if p.is_file())


def open_checkpoints(spec: StudySpec, tracker: Tracker | None = None,
                     parent_run_id: str | None = None) -> CheckpointStore:
    """The study's trial checkpoints: a folder under the results root, shared through the
    study's MLflow run when the tracking store is a server (give its tracker and run)."""
    remote = None
    if tracker is not None and parent_run_id and is_server(spec.tracking.uri):
        remote = RunArtifacts(tracker, parent_run_id)
    return CheckpointStore(paths.study_dir(spec.name) / "checkpoints", remote)


def drop_orphan_checkpoints(spec: StudySpec, study: optuna.Study) -> list[int]:
    """Delete the checkpoints that no running or waiting trial will continue (a chain out of
    retries, a study stopped for good); returns their keys. Keeps all with keep_checkpoints."""
    if spec.budget.keep_checkpoints:
        return []
    live = {r.origin for r in records(study)
            if r.state in (TrialState.RUNNING, TrialState.WAITING)}
    store = open_checkpoints(spec)
    orphans = [k for k in store.keys() if k not in live]
    for key in orphans:
        store.delete(key)
    return orphans
