"""Workers: several processes on one study, many machines on PostgreSQL, crashes and Ctrl-C."""

from __future__ import annotations

import multiprocessing
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import optuna
import pytest
from mlflow import MlflowClient

from harness.api import search as run_search
from harness.config import load_spec
from harness.search import counting, local, records, storage
from harness.search.liveness import load_study
from harness.util import paths

from ..conftest import tiny_study

pytestmark = pytest.mark.slow

POSTGRES_ENV = "HARNESS_TEST_POSTGRES"  # e.g. postgresql://postgres@127.0.0.1:5432/test


def postgres_url() -> str:
    url = os.environ.get(POSTGRES_ENV)
    if not url:
        pytest.skip(f"no PostgreSQL: set {POSTGRES_ENV} to a database URL to run this test "
                    "(CI sets it)")
    import sqlalchemy

    try:
        sqlalchemy.create_engine(url).connect().close()
    except Exception as exc:  # the variable is set, so a dead server is a failure, not a skip
        pytest.fail(f"{POSTGRES_ENV}={url} is set but unreachable: {exc}")
    return url


def mlflow_runs(experiment: str, role: str = "trial"):
    client = MlflowClient(paths.tracking_uri())
    exp = client.get_experiment_by_name(experiment)
    runs = client.search_runs([exp.experiment_id], max_results=1000)
    return [r for r in runs if r.data.tags.get("harness.role") == role]


def check_finished_study(spec, n_trials: int) -> list[records.TrialRecord]:
    """Exactly n_trials count, nothing left RUNNING in Optuna or MLflow. Returns the trials,
    less any surplus one (started when the others had taken the last trial; never run)."""
    study = load_study(spec)
    assert counting.counted(records.records(study)) == n_trials
    states = [t.state.name for t in study.trials]
    assert "RUNNING" not in states and "WAITING" not in states
    recs = records.search_records(study)
    runs = mlflow_runs(spec.name)
    assert "RUNNING" not in {r.info.status for r in runs}
    numbers = {r.data.params["trial_number"] for r in runs}
    assert numbers == {str(t.number) for t in recs if t.mlflow_run_id}
    # Only a trial interrupted before it opened its run (Ctrl-C while its worker was setting
    # it up) has none: it failed and was re-queued.
    assert all(t.state.name == "FAIL" and t.number in counting.retried_numbers(recs)
               for t in recs if not t.mlflow_run_id)
    return recs


def test_two_local_workers_share_the_study(write_study):
    """...and this process shows their progress: the budget as recorded, then every trial."""
    spec = load_spec(write_study(tiny_study(budget={"n_trials": 4, "steps": 150,
                                                    "eval_every": 50, "wall_time": 3600})))
    seen: list[tuple] = []

    class Observer:
        def search_started(self, record):
            seen.append(("started", record.n_trials, record.timeout_start, record.wall_time))
        def trial_started(self, number, params): pass
        def evaluated(self, number, step, steps, dev_loss): pass
        def trial_finished(self, trial, done, total, best):
            seen.append(("finished", done, total))

    study = run_search(spec, workers=2, observer=Observer())
    record = records.read_record(study)
    assert seen[0] == ("started", 4, record.timeout_start, 3600)
    assert seen[1:] == [("finished", k, 4) for k in (1, 2, 3, 4)]
    recs = check_finished_study(spec, 4)
    assert len(recs) == 4
    assert {r.state.name for r in recs} == {"COMPLETE"}
    pids = {r.pid for r in recs}
    assert len(pids) == 2 and os.getpid() not in pids  # two processes, not this one
    assert len({tuple(sorted(r.params.items())) for r in recs}) == 4  # no repeated proposals


def test_workers_start_while_the_study_is_created(write_study, monkeypatch):
    """Workers are spawned before the stores are created (their imports overlap with it); a
    resumed study that needs fewer trials than workers releases only as many as it needs."""
    spec = load_spec(write_study(tiny_study(budget={"n_trials": 3, "steps": 100,
                                                    "eval_every": 50})))
    alive_at_prepare = []
    real_prepare = local.prepare_study

    def prepare(spec, final_processes, **options):
        alive_at_prepare.append(len(multiprocessing.active_children()))
        return real_prepare(spec, final_processes, **options)

    monkeypatch.setattr(local, "prepare_study", prepare)
    run_search(spec, workers=2)
    assert alive_at_prepare == [2]
    check_finished_study(spec, 3)

    # Resumed with one trial missing: one worker is released, the other is stopped unused.
    spec = load_spec(write_study(tiny_study(budget={"n_trials": 4, "steps": 100,
                                                    "eval_every": 50})))
    run_search(spec, workers=2)
    recs = check_finished_study(spec, 4)
    assert len(recs) == 4 and not any(r.surplus for r in recs)
    assert multiprocessing.active_children() == []


def test_a_failing_start_leaves_no_worker_behind(write_study, monkeypatch):
    spec = load_spec(write_study(tiny_study()))

    def prepare(spec, final_processes, **options):
        raise RuntimeError("store down")

    monkeypatch.setattr(local, "prepare_study", prepare)
    with pytest.raises(RuntimeError, match="store down"):
        run_search(spec, workers=2)
    assert multiprocessing.active_children() == []


def test_two_workers_on_postgres(write_study):
    url = postgres_url()
    name = f"pg-{uuid.uuid4().hex[:8]}"
    spec = load_spec(write_study(tiny_study(name=name, storage=url,
                                            budget={"n_trials": 4, "steps": 150,
                                                    "eval_every": 50})))
    run_search(spec, workers=2)
    recs = check_finished_study(spec, 4)
    assert {r.state.name for r in recs} == {"COMPLETE"}
    assert len({r.worker for r in recs}) == 2
    runs = mlflow_runs(name)
    assert {r.info.status for r in runs} == {"FINISHED"} and len(runs) == 4
    optuna.delete_study(study_name=name, storage=url)


def start_run_study(path: Path, cwd: Path, *args: str) -> subprocess.Popen:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    # As from a terminal: SIGINT at its default, even where this test runs as a background job
    # of a non-interactive shell (which starts such jobs with SIGINT ignored).
    return subprocess.Popen([sys.executable, "-m", "harness.cli", "run-study", str(path),
                             "--no-finalize", *args], cwd=cwd, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))


def wait_for_running_trial(spec, proc, min_step: int = 1, timeout: float = 120):
    """A trial that is RUNNING and has reported at least `min_step` steps."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, proc.communicate()
        if paths.journal_path().exists():
            try:
                study = load_study(spec)
            except Exception:  # not created yet
                study = None
            if study:
                for t in study.get_trials(states=(optuna.trial.TrialState.RUNNING,)):
                    if t.intermediate_values and max(t.intermediate_values) >= min_step:
                        return t
        time.sleep(0.2)
    pytest.fail("no trial started running in time")


def test_sigkill_of_a_worker_costs_only_its_trial(write_study, tmp_path: Path):
    study_file = tiny_study(budget={"n_trials": 4, "steps": 1500, "eval_every": 50})
    spec = load_spec(write_study(study_file))
    proc = start_run_study(spec_path := tmp_path / "study.yaml", tmp_path, "--workers", "2")
    assert spec_path.exists()
    victim = wait_for_running_trial(spec, proc)
    worker_pid = records.TrialRecord.from_trial(victim).pid
    os.kill(worker_pid, signal.SIGKILL)
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err

    recs = check_finished_study(spec, 4)
    killed = recs[victim.number]
    assert killed.state.name == "FAIL"
    assert f"worker process {worker_pid} is gone" in killed.fail_reason
    retries = [r for r in recs if r.retry_of == victim.number]
    assert len(retries) == 1 and retries[0].state.name == "COMPLETE"
    assert retries[0].params == killed.params
    status = {r.data.params["trial_number"]: r.info.status for r in mlflow_runs(spec.name)}
    assert status[str(victim.number)] == "FAILED"


@pytest.mark.parametrize("workers", ["1", "2"])
def test_sigint_stops_cleanly_and_a_rerun_resumes(write_study, tmp_path: Path, workers: str):
    study_file = tiny_study(budget={"n_trials": 3, "steps": 1500, "eval_every": 50})
    spec = load_spec(write_study(study_file))
    proc = start_run_study(tmp_path / "study.yaml", tmp_path, "--workers", workers)
    interrupted = wait_for_running_trial(spec, proc, min_step=100)
    os.killpg(proc.pid, signal.SIGINT)  # as a terminal's Ctrl-C: the whole process group
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert "interrupted" in err and "Traceback" not in err

    study = load_study(spec)
    assert "RUNNING" not in {t.state.name for t in study.trials}
    assert "RUNNING" not in {r.info.status for r in mlflow_runs(spec.name)}
    assert study.trials[interrupted.number].state.name == "FAIL"

    proc = start_run_study(tmp_path / "study.yaml", tmp_path, "--workers", workers)
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err
    recs = check_finished_study(spec, 3)
    retry = [r for r in recs if r.retry_of == interrupted.number]
    assert len(retry) == 1 and retry[0].params == interrupted.params
    assert retry[0].resumed_from_step >= 50  # continued from the interrupted one's checkpoint


@pytest.mark.parametrize(("sig", "code"), [(signal.SIGTERM, 130), (signal.SIGKILL, -9)])
def test_killing_run_study_stops_its_workers_too(write_study, tmp_path: Path, sig, code):
    """`kill PID` (SIGTERM to run-study alone, as a scheduler or `timeout` sends it) stops the
    command as Ctrl-C does: exit 130; even SIGKILL, which run-study cannot handle, stops its
    workers (they are told when their parent dies). No worker process is left running, and no
    trial RUNNING: each worker re-queued its own."""
    # Long enough that a worker left running would still be training a minute later.
    spec = load_spec(write_study(tiny_study(budget={"n_trials": 8, "steps": 30_000,
                                                    "eval_every": 50})))
    proc = start_run_study(tmp_path / "study.yaml", tmp_path, "--workers", "2")
    running = wait_for_running_trial(spec, proc, min_step=100)
    worker = records.TrialRecord.from_trial(running).pid
    os.kill(proc.pid, sig)  # the parent only
    proc.wait(timeout=60)  # the command itself (its pipes stay open while any worker lives)
    deadline = time.monotonic() + 15
    while _alive(worker) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not _alive(worker), f"worker {worker} still running after run-study ended"
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == code, err
    assert "RUNNING" not in {t.state.name for t in load_study(spec).trials}


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie (exited, not yet reaped by its parent) counts as gone.
    stat = Path(f"/proc/{pid}/stat")
    return not (stat.exists() and stat.read_text().split(")")[-1].split()[0] == "Z")


def test_heartbeat_stale_trial_is_failed_requeued_and_its_run_closed(write_study, tmp_path):
    # An RDB storage (SQLite here, PostgreSQL for a team) gets Optuna's heartbeats.
    from harness.search.create import prepare_study
    from harness.tracking import Tracker

    url = f"sqlite:///{tmp_path / 'optuna.db'}"
    spec = load_spec(write_study(tiny_study(storage=url, workers={"heartbeat_s": 1})))
    study, record = prepare_study(spec)
    trial = study.ask({"lr": optuna.distributions.FloatDistribution(1e-3, 1e-2, log=True)})
    tracker = Tracker(None, spec.name)
    run = tracker.start_trial(record.parent_run_id, spec.name, trial.number,
                              {"lr": trial.params["lr"]})
    records.write(trial, records.TrialRecord(mlflow_run_id=run.run_id))
    storage.of(study).record_heartbeat(trial._trial_id)  # a worker beat once, then died
    # What the next worker does before its trial, until the grace period (2 beats) has passed.
    deadline = time.monotonic() + 30
    while study.trials[0].state.name == "RUNNING" and time.monotonic() < deadline:
        time.sleep(0.5)
        optuna.storages.fail_stale_trials(study)

    recs = records.records(load_study(spec))
    assert recs[0].state.name == "FAIL"
    assert recs[1].state.name == "WAITING" and recs[1].retry_of == 0
    assert counting.counted(records.records(load_study(spec))) == 0
    assert tracker.client.get_run(run.run_id).info.status == "FAILED"


@pytest.mark.parametrize("checkpoint", ["intact", "damaged"])
def test_a_killed_trial_resumes_from_its_checkpoint_and_ends_as_if_never_killed(
        write_study, tmp_path: Path, checkpoint: str):
    """SIGKILL the worker at about 70% of a trial, run again: the retry continues from the last
    checkpoint (the same losses as an uninterrupted run, on one thread); a damaged checkpoint
    is reported and the retry starts from step 0 instead."""
    import torch

    from harness.config.hparams import HParams
    from harness.search.checkpoints import CheckpointStore
    from harness.training.data import load_search_data
    from harness.training.train import train

    # 6,000 steps: the trial runs long enough (seconds, on a fast machine) that the test sees
    # it between 70% and its end (1,500 steps once ended between two looks, on an AMD Zen 5).
    spec = load_spec(write_study(tiny_study(budget={"n_trials": 1, "steps": 6000,
                                                    "eval_every": 200},
                                            workers={"threads": 1})))
    proc = start_run_study(tmp_path / "study.yaml", tmp_path)
    victim = wait_for_running_trial(spec, proc, min_step=4200)
    os.kill(records.TrialRecord.from_trial(victim).pid, signal.SIGKILL)  # this command itself
    proc.communicate(timeout=60)
    store = CheckpointStore(paths.study_dir(spec.name) / "checkpoints")
    assert store.path(victim.number).exists()
    if checkpoint == "damaged":
        store.path(victim.number).write_bytes(store.path(victim.number).read_bytes()[:5000])

    proc = start_run_study(tmp_path / "study.yaml", tmp_path)
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err
    recs = check_finished_study(spec, 1)
    killed = recs[victim.number]
    (retry,) = [r for r in recs if r.retry_of == victim.number]
    assert retry.state.name == "COMPLETE" and retry.params == killed.params
    assert sorted(retry.intermediate) == list(range(200, 6001, 200))  # the whole curve
    run = MlflowClient(paths.tracking_uri()).get_run(retry.mlflow_run_id)
    history = MlflowClient(paths.tracking_uri()).get_metric_history(run.info.run_id,
                                                                    "dev_loss")
    assert sorted(m.step for m in history) == list(range(200, 6001, 200))
    assert not store.path(victim.number).exists()  # a finished trial's checkpoint is deleted
    if checkpoint == "damaged":
        assert "cannot be read" in err and "starts again from step 0" in err
        assert retry.resumed_from_step is None
        assert "harness.resumed_from_step" not in run.data.tags
    else:
        assert retry.resumed_from_step >= 4000
        assert run.data.tags["harness.resumed_from_step"] == str(retry.resumed_from_step)
        assert retry.intermediate == {s: killed.intermediate[s] for s in killed.intermediate
                                      if s <= retry.resumed_from_step} | retry.intermediate

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as the worker trained
    try:
        hp = HParams(**retry.config)
        whole = train(hp, load_search_data(spec.data, hp.context_length), steps=6000,
                      eval_every=200)
    finally:
        torch.set_num_threads(threads)
    assert retry.value == whole.best_dev_loss
    assert retry.intermediate == dict(whole.dev_curve)
