"""Finalize is a transaction that can always be finished: killed at any of its moments, the
same command run again finishes it, keeps the retrainings it had, and evaluates the test split
once in all. A study remembers its data."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from mlflow import MlflowClient

import harness.final.retrain
import harness.training.data
from harness.api import search
from harness.cli import main
from harness.config import load_spec
from harness.final import evaluate
from harness.search import claims, records
from harness.search.create import prepare_study
from harness.search.liveness import load_study
from harness.util import paths
from harness.util.processes import identity

from ..conftest import tiny_study

pytestmark = pytest.mark.slow


def finalize_in_a_process(path: Path, cwd: Path, failpoint: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "HARNESS_FAILPOINT": failpoint}
    return subprocess.run([sys.executable, "-m", "harness", "finalize", str(path)], cwd=cwd,
                          env=env, capture_output=True, text=True, timeout=300)


def final_runs(name: str) -> list:
    client = MlflowClient(paths.tracking_uri())
    exp = client.get_experiment_by_name(name)
    return [r for r in client.search_runs([exp.experiment_id])
            if r.data.tags.get("harness.stage") == "final"]


@pytest.fixture(scope="module")
def _searched_once(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny study, searched once for this module: 2 candidates on 2 seeds, an ensemble."""
    folder = tmp_path_factory.mktemp("searched")
    with pytest.MonkeyPatch.context() as m:
        m.chdir(folder)
        m.setenv("HARNESS_ROOT", str(folder / "mlruns"))
        path = folder / "study.yaml"
        path.write_text(yaml.safe_dump(tiny_study(
            budget={"n_trials": 2, "steps": 100, "eval_every": 50},
            finalize={"top_k": 2, "seeds": 2, "samples": 5, "ensemble": True})))
        search(load_spec(path))
    return folder


@pytest.fixture
def searched(_searched_once: Path, tmp_path: Path) -> Path:
    """That study, searched and not finalized, copied where this test runs (its MLflow
    store's artifacts are where the search wrote them, which stays)."""
    shutil.copytree(_searched_once / "mlruns", tmp_path / "mlruns")
    shutil.copy(_searched_once / "study.yaml", tmp_path / "study.yaml")
    return tmp_path / "study.yaml"


@pytest.mark.parametrize("moment", ["finalize:chosen", "finalize:recorded", "finalize:tracked",
                                    "finalize:registered"])
def test_a_finalize_killed_at_any_moment_is_finished_by_the_next(searched, tmp_path, capsys,
                                                                  moment):
    killed = finalize_in_a_process(searched, tmp_path, moment)
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    spec = load_spec(searched)
    assert records.read_final(load_study(spec)) is None  # nothing published yet
    assert main(["finalize", str(searched)]) == 0, capsys.readouterr()
    out = capsys.readouterr()
    study = load_study(spec)
    assert evaluate.count(study) == 1  # the test split read once in all
    result = records.read_final(study)
    assert result is not None and result["test_evaluations"] == 1
    if moment != "finalize:chosen":  # the killed one had recorded its result: published now
        assert "publishing the result its interrupted finalize recorded" in out.err, out.err
    runs = final_runs(spec.name)
    assert [r.info.status for r in runs if r.info.status != "FAILED"] == ["FINISHED"]
    assert "RUNNING" not in {r.info.status for r in runs}
    versions = MlflowClient(paths.tracking_uri()).search_model_versions(f"name='{spec.name}'")
    assert len(versions) == 1
    assert not harness.final.retrain.folder(spec).exists()  # its work files are gone
    assert main(["finalize", str(searched)]) == 1  # and it is finished: refused, not redone
    assert "already finalized" in capsys.readouterr().err


def test_a_resumed_finalize_keeps_the_retrainings_it_had(searched, tmp_path, monkeypatch):
    """Killed once its choice was made (every retraining done): run again, it trains nothing
    again, chooses the same, and its result comes from those retrainings."""
    assert finalize_in_a_process(searched, tmp_path, "finalize:chosen").returncode == -9
    spec = load_spec(searched)
    kept = sorted(p.name for p in harness.final.retrain.folder(spec).glob("*.pt"))
    assert len([k for k in kept if not k.endswith(".ckpt.pt")]) == 5  # 4 and the model
    calls = []
    real = harness.final.retrain.train
    monkeypatch.setattr(harness.final.retrain, "train",
                        lambda *a, **k: calls.append(1) or real(*a, **k))
    assert main(["finalize", str(searched)]) == 0
    assert calls == []


def test_an_interrupted_retraining_continues_from_its_checkpoint(searched, monkeypatch):
    """Ctrl-C in the first retraining, once it kept its state at step 50: the next finalize
    continues it from there."""
    spec = load_spec(searched)
    real = harness.final.retrain.train
    resumed: list[int] = []
    interrupted: list[int] = []

    def train(*args, **kwargs):
        if kwargs.get("resume") is not None:
            resumed.append(kwargs["resume"].step)
        keep = kwargs["on_checkpoint"]

        def keep_then_interrupt(state):
            keep(state)
            if not interrupted:
                interrupted.append(state.step)
                raise KeyboardInterrupt

        return real(*args, **{**kwargs, "on_checkpoint": keep_then_interrupt})

    monkeypatch.setattr(harness.final.retrain, "train", train)
    assert main(["finalize", str(searched)]) == 130
    assert main(["finalize", str(searched)]) == 0
    assert interrupted == [50] and resumed == [50]
    assert evaluate.count(load_study(spec)) == 1


def test_the_claim_of_a_dead_finalize_is_taken_over_a_live_ones_is_not(searched, capsys):
    spec = load_spec(searched)
    study = load_study(spec)
    dead = subprocess.Popen(["true"])
    dead.wait()
    claims.take(study, "finalize.0", {"host": os.uname().nodename, "pid": dead.pid,
                                      "process": None, "since": 0.0})
    live = subprocess.Popen(["sleep", "60"])
    try:
        claims.take(study, "finalize.1", {"host": os.uname().nodename, "pid": live.pid,
                                          "process": identity(live.pid), "since": 0.0})
        assert main(["finalize", str(searched)]) == 1
        err = capsys.readouterr().err
        assert f"is being finalized by process {live.pid}" in err and "Traceback" not in err
    finally:
        live.kill()
        live.wait()
    assert main(["finalize", str(searched)]) == 0  # the claim of the dead one: taken over
    assert evaluate.count(load_study(spec)) == 1


def test_a_test_evaluation_an_earlier_harness_counted_without_a_result(searched, capsys):
    study = load_study(load_spec(searched))
    claims.next_number(study, evaluate.TEST_COUNTER)  # as the harness before 0.2 counted
    assert main(["finalize", str(searched)]) == 1
    err = capsys.readouterr().err
    assert "use --force to evaluate it again" in err and "Traceback" not in err
    assert main(["finalize", str(searched), "--force"]) == 0
    assert evaluate.count(study) == 2


# ---------------------------------------------------------------------------------------------
# A study remembers its data


def test_a_study_refuses_changed_data_unless_told_and_the_result_says_so(tmp_path, write_study,
                                                                        capsys):
    words = tmp_path / "words.txt"
    names = (Path(harness.training.data.bundled_words_path()).read_text().split())[:2000]
    words.write_text("\n".join(names) + "\n")
    path = write_study(tiny_study(data={"path": str(words)},
                                  budget={"n_trials": 1, "steps": 50, "eval_every": 50},
                                  finalize={"top_k": 1, "seeds": 1, "samples": 0}))
    assert main(["run-study", str(path), "--no-finalize"]) == 0
    words.write_text("\n".join(names[:1900] + ["zzzz"] * 100) + "\n")  # edited since
    capsys.readouterr()
    for argv in (["finalize", str(path)], ["worker", str(path)],
                 ["run-study", str(path), "--set", "budget.n_trials=2"],
                 ["reproduce", str(path), "--trial", "0"], ["sample", str(path)]):
        assert main(argv) == 2, argv
        err = capsys.readouterr().err
        assert "changed since it was created: its words differ" in err, (argv, err)
        assert "--allow-data-change" in err and "Traceback" not in err
    spec = load_spec(path)
    assert evaluate.count(load_study(spec)) == 0  # nothing evaluated on the edited data
    assert main(["finalize", str(path), "--allow-data-change"]) == 0
    out = capsys.readouterr().out
    assert "data:      changed after the study was created, accepted with" in out
    final = records.read_final(load_study(spec))
    assert final["data_changes"][0]["changes"][0].startswith("its words differ")
    assert main(["sample", str(path), "-n", "2"]) == 0  # the change is the study's now


def test_an_earlier_study_without_a_fingerprint_is_not_refused(write_study):
    spec = load_spec(write_study(tiny_study()))
    study, record = prepare_study(spec)
    assert record.data is not None and len(record.data["sha256"]) == 64
    import dataclasses

    records.write_record(study, dataclasses.replace(record, data=None))
    study, record = prepare_study(spec)  # resumed: nothing to compare with, and nothing said
    assert record.data is None


def test_a_forced_finalize_killed_after_its_test_is_published_not_evaluated_again(
        searched, tmp_path, capsys):
    assert main(["finalize", str(searched)]) == 0
    env_kill = finalize_in_a_process(searched, tmp_path, "finalize:recorded")
    assert env_kill.returncode == 1  # refused: finalized, and not forced
    forced = subprocess.run([sys.executable, "-m", "harness", "finalize", str(searched),
                             "--force"], cwd=tmp_path, capture_output=True, text=True,
                            timeout=300, env={**os.environ,
                                              "HARNESS_FAILPOINT": "finalize:recorded"})
    assert forced.returncode == -signal.SIGKILL, forced.stderr
    study = load_study(load_spec(searched))
    assert evaluate.count(study) == 2
    capsys.readouterr()
    assert main(["finalize", str(searched)]) == 0  # publishes evaluation 2
    assert "publishing the result its interrupted finalize recorded (test evaluation 2)" \
        in capsys.readouterr().err
    assert evaluate.count(study) == 2 and records.read_final(study)["test_evaluations"] == 2
