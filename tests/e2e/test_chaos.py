"""Chaos: `run-study --workers 2` killed whole (SIGKILL to its process group) at random moments,
during the search and during finalize, and at the moments a random kill rarely hits (between
the test evaluation and the result), then run again until it finishes. The study ends as if
nothing happened: its n_trials, nothing RUNNING in Optuna or MLflow, one final result, the
test split evaluated exactly once.

Seeded, so a failure replays (as far as a machine's timing allows): HARNESS_CHAOS_SEEDS=1,2,3
runs more seeds than CI's one.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from mlflow import MlflowClient

from harness.config import load_spec
from harness.final import evaluate
from harness.search import counting, records
from harness.search.liveness import load_study
from harness.util import paths

from ..conftest import tiny_study

pytestmark = pytest.mark.slow

SEEDS = [int(s) for s in os.environ.get("HARNESS_CHAOS_SEEDS", "1").split(",")]
FAILPOINTS = ["finalize:chosen", "finalize:recorded", "finalize:tracked",
              "finalize:registered"]
N_TRIALS = 4


def _start(path: Path, cwd: Path, failpoint: str | None) -> subprocess.Popen:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    if failpoint:
        env["HARNESS_FAILPOINT"] = failpoint
    return subprocess.Popen([sys.executable, "-m", "harness", "run-study", str(path),
                             "--workers", "2"], cwd=cwd, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)


@pytest.mark.parametrize("seed", SEEDS)
def test_killed_anywhere_and_run_again_the_study_finishes_as_if_nothing_happened(
        seed: int, tmp_path: Path, write_study) -> None:
    rng = random.Random(seed)
    path = write_study(tiny_study(budget={"n_trials": N_TRIALS, "steps": 200,
                                          "eval_every": 50},
                                  finalize={"top_k": 2, "seeds": 2, "samples": 5,
                                            "ensemble": True}))
    history = []
    for attempt in range(40):
        failpoint = rng.choice(FAILPOINTS) if rng.random() < 0.3 else None
        delay = None if failpoint or attempt >= 30 else rng.uniform(3.0, 30.0)
        proc = _start(path, tmp_path, failpoint)
        try:
            out, _ = proc.communicate(timeout=delay)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)  # the whole group: run-study and its workers
            proc.communicate()
            history.append(f"killed after {delay:.1f} s")
            continue
        history.append(f"exit {proc.returncode}" + (f" at {failpoint}" if failpoint else ""))
        if proc.returncode == 0:
            break
        assert proc.returncode == -signal.SIGKILL, (history, out)
    assert history[-1] == "exit 0", history

    spec = load_spec(path)
    study = load_study(spec)
    recs = records.records(study)
    assert counting.counted(recs) == N_TRIALS, history
    assert not {"RUNNING", "WAITING"} & {t.state.name for t in study.trials}, history
    client = MlflowClient(paths.tracking_uri())
    exp = client.get_experiment_by_name(spec.name)
    runs = client.search_runs([exp.experiment_id], max_results=1000)
    assert "RUNNING" not in {r.info.status for r in runs}, history
    finals = [r for r in runs if r.data.tags.get("harness.stage") == "final"
              and r.info.status == "FINISHED"]
    assert len(finals) == 1, history
    assert evaluate.count(study) == 1, history  # the test split read once in all
    final = records.read_final(study)
    assert final is not None and final["test_evaluations"] == 1
    written = json.loads((paths.study_dir(spec.name) / "final.json").read_text())
    assert written["test_mean"] == final["test_mean"]
