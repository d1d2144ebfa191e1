"""Trial checkpoints on disk and on a tracking server: atomic, damage-tolerant, deletable."""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path

import pytest
import torch

from harness.config import DataConfig
from harness.config.hparams import HParams
from harness.search.checkpoints import CheckpointStore
from harness.training.data import load_search_data
from harness.training.train import TrainState, train

SMALL = HParams(context_length=3, embedding_dim=4, hidden_width=8, batch_size=16,
                optimizer="adamw", lr=3.0e-3)


@pytest.fixture(scope="module")
def state() -> TrainState:
    states: list[TrainState] = []
    data = load_search_data(DataConfig(), 3)

    def keep(s: TrainState) -> None:  # the live tensors change after the callback: copy
        torch.save(s.to_dict(), buf := Path(os.environ.get("TMPDIR", "/tmp")) /
                   f"harness-test-{os.getpid()}.pt")
        states.append(TrainState.from_dict(torch.load(buf, weights_only=True)))
        buf.unlink()

    train(SMALL, data, steps=100, eval_every=50, checkpoint_every=50, on_checkpoint=keep)
    return states[0]


def same(a: TrainState, b: TrainState) -> bool:
    return a.step == b.step and a.dev_curve == b.dev_curve and all(
        torch.equal(a.model[k], b.model[k]) for k in a.model)


def test_save_load_delete_and_disk_used(tmp_path, state):
    store = CheckpointStore(tmp_path / "checkpoints")
    assert store.load(3) is None and store.disk_bytes() == 0
    store.save(3, state)
    loaded = store.load(3)
    assert loaded is not None and same(loaded, state) and loaded.optimizer is not None
    assert store.disk_bytes() == store.path(3).stat().st_size > 0
    store.delete(3)
    assert store.load(3) is None and store.disk_bytes() == 0


def test_a_save_cut_off_by_a_kill_leaves_the_previous_checkpoint_whole(tmp_path, state,
                                                                        monkeypatch):
    store = CheckpointStore(tmp_path)
    store.save(1, state)

    def killed(obj, f, *args, **kwargs):  # the process dies halfway through writing
        Path(f).write_bytes(b"PK\x03\x04 half a file")
        raise KeyboardInterrupt

    monkeypatch.setattr(torch, "save", killed)
    with pytest.raises(KeyboardInterrupt):
        store.save(1, state)
    monkeypatch.undo()
    loaded = store.load(1)
    assert loaded is not None and same(loaded, state)
    store.delete(1)  # the partial file goes with it
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("damage", ["truncated", "garbage", "not a state", "a pickle"])
def test_a_damaged_checkpoint_is_reported_and_ignored(tmp_path, state, damage, caplog):
    store = CheckpointStore(tmp_path)
    store.save(2, state)
    path = store.path(2)
    if damage == "truncated":
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    elif damage == "garbage":
        path.write_bytes(os.urandom(1000))
    elif damage == "not a state":
        torch.save({"step": 5}, path)
    else:  # arbitrary objects are refused by weights_only=True, never unpickled
        torch.save({"evil": Path("/etc/passwd")}, path)
    with caplog.at_level(logging.WARNING):
        assert store.load(2) is None
    assert "cannot be read" in caplog.text and "starts again from step 0" in caplog.text


@pytest.mark.slow
def test_checkpoints_travel_through_a_tracking_server(tmp_path, state):
    """With a tracking server, a checkpoint saved on one machine is loaded on another (two
    folders here), and deleting it removes the server's copy."""
    from harness.tracking import RunArtifacts, Tracker

    from ..cli.test_ui import free_port, serve

    port = free_port()
    uri = f"http://127.0.0.1:{port}"
    proc = serve([sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port",
                  str(port), "--backend-store-uri", f"sqlite:///{tmp_path / 'server.db'}",
                  "--artifacts-destination", str(tmp_path / "server-artifacts")],
                 f"{uri}/health", tmp_path)
    try:
        tracker = Tracker(uri, "checkpoints")
        parent = tracker.study_run("checkpoints", "identity", "name: checkpoints\n")
        here = CheckpointStore(tmp_path / "here", RunArtifacts(tracker, parent))
        there = CheckpointStore(tmp_path / "there", RunArtifacts(tracker, parent))
        assert there.load(7) is None
        here.save(7, state)
        loaded = there.load(7)
        assert loaded is not None and same(loaded, state)
        here.delete(7)
        assert there.load(7) is None and here.disk_bytes() == 0
    finally:
        os.killpg(proc.pid, 15)
        proc.wait(timeout=30)


def test_checkpoints_no_trial_will_continue_are_dropped(write_study, state):
    """A chain out of retries leaves its checkpoint behind: run-study's wrap-up drops every
    checkpoint that no running or waiting trial will continue, and keeps the others."""
    from harness.config import load_spec
    from harness.search.checkpoints import drop_orphan_checkpoints, open_checkpoints
    from harness.search.create import prepare_study

    from ..conftest import tiny_study

    spec = load_spec(write_study(tiny_study()))
    study, _record = prepare_study(spec)
    running = study.ask()
    study.enqueue_trial({"lr": 0.005, "batch_size": 32})
    waiting = len(study.trials) - 1
    store = open_checkpoints(spec)
    for key in (running.number, waiting, 17):
        store.save(key, state)
    assert drop_orphan_checkpoints(spec, study) == [17]
    assert store.keys() == [running.number, waiting]
    kept = load_spec(write_study(tiny_study(budget={"keep_checkpoints": True})))
    store.save(17, state)
    assert drop_orphan_checkpoints(kept, study) == [] and 17 in store.keys()
