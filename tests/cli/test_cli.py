"""The `harness` command as a user runs it."""

from __future__ import annotations

import dataclasses
import json
import re
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from harness.cli import main
from harness.config import load_spec
from harness.search import records

from ..conftest import STUDIES, tiny_study


def harness(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "harness.cli", *args], cwd=cwd,
                          capture_output=True, text=True, timeout=300)


COMMANDS = ["run-study", "train", "worker", "finalize", "status", "sample", "leaderboard", "ui",
            "lr-find", "baseline", "reproduce", "report"]


def test_help_lists_every_command(capsys):
    with pytest.raises(SystemExit) as info:
        main(["--help"])
    out = capsys.readouterr().out
    assert info.value.code == 0
    assert all(command in out for command in COMMANDS)


@pytest.mark.parametrize("command", COMMANDS)
def test_help_explains_each_command(command, capsys):
    with pytest.raises(SystemExit) as info:
        main([command, "--help"])
    out = capsys.readouterr().out
    assert info.value.code == 0
    assert f"usage: harness {command}" in out and "STUDY.yaml" in out and "--set" in out


@pytest.mark.slow
def test_train_json_on_lecture_config(tmp_path: Path):
    proc = harness("train", str(STUDIES / "lecture.yaml"), "--json",
                   "--set", "budget.steps=300", "--set", "budget.eval_every=100", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    assert {"dev_loss", "train_loss", "steps", "steps_per_sec", "n_params"} <= set(result)
    assert result["steps"] == 300 and result["n_params"] == 11_897
    assert result["dev_loss"] < 3.0
    assert not (tmp_path / "mlruns").exists()  # `train` tracks nothing


def test_train_rejects_bad_param(tmp_path: Path, capsys):
    code = main(["train", str(STUDIES / "lecture.yaml"), "--param", "lr=-1"])
    assert code == 2
    assert "lr: must be a number > 0" in capsys.readouterr().err


@pytest.mark.slow
def test_run_study_then_leaderboard(tmp_path: Path, write_study):
    path = write_study(tiny_study(budget={"n_trials": 2, "steps": 100, "eval_every": 50},
                                  finalize={"top_k": 1, "seeds": 2}))
    proc = harness("run-study", str(path), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "[2/2]" in proc.stderr and "best trial" in proc.stdout
    # Quiet: the harness's own lines only; MLflow's and Optuna's go to the log file.
    printed = proc.stdout + proc.stderr
    theirs = re.compile(r"^(\d{4}/\d\d/\d\d |\[[IWE] \d|(INFO|WARNING|ERROR) (?!harness)|"
                        r"Successfully registered|Created version)", re.MULTILINE)
    assert not theirs.search(printed), printed
    assert "mlflow.pyfunc" in (tmp_path / "mlruns" / "harness.log").read_text()
    proc = harness("leaderboard", str(path), "--out", "board.csv", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    df = pd.read_csv(tmp_path / "board.csv")
    assert len(df) == 2 and list(df["rank"]) == [1, 2]
    assert {"trial", "state", "best_dev_loss", "lr", "batch_size", "duration_s",
            "mlflow_run_id"} <= set(df.columns)


def test_bad_study_file_exits_2_without_traceback_or_storage(tmp_path: Path, write_study, capsys):
    path = write_study(tiny_study(budget={"n_trials": -1}, fixd={}))
    code = main(["run-study", str(path)])
    err = capsys.readouterr().err
    assert code == 2
    assert "2 errors" in err and "budget.n_trials" in err and "fixd" in err
    assert "Traceback" not in err
    assert not (tmp_path / "mlruns").exists()


def test_leaderboard_of_a_study_never_run(write_study, capsys):
    code = main(["leaderboard", str(write_study(tiny_study()))])
    assert code == 1
    assert "has not been run yet" in capsys.readouterr().err


STUDY_COMMANDS = ["run-study", "worker", "finalize", "status", "leaderboard", "sample", "ui",
                  "report"]


@pytest.mark.parametrize("command", STUDY_COMMANDS)
def test_every_command_that_opens_a_study_takes_storage_and_tracking_uri(command):
    from harness.cli.parser import build_parser

    args = build_parser().parse_args([command, "s.yaml", "--storage", "sqlite:///o.db",
                                      "--tracking-uri", "sqlite:///m.db"])
    assert (args.storage, args.tracking_uri) == ("sqlite:///o.db", "sqlite:///m.db")


@pytest.mark.slow
def test_a_study_on_other_stores_is_reached_by_flags_alone(tmp_path: Path, write_study,
                                                           capsys):
    """After a study on a database storage and tracking store, every command reaches it with
    --storage and --tracking-uri: no study file to rewrite, no --set keys to know."""
    path = write_study(tiny_study(budget={"n_trials": 2, "steps": 50, "eval_every": 50},
                                  finalize={"top_k": 1, "seeds": 1, "samples": 3}))
    flags = ["--storage", f"sqlite:///{tmp_path / 'optuna.db'}",
             "--tracking-uri", f"sqlite:///{tmp_path / 'elsewhere.db'}"]
    assert main(["run-study", str(path), "--no-finalize", *flags]) == 0
    assert main(["leaderboard", str(path)]) == 1  # not in the default stores
    assert "has not been run yet" in capsys.readouterr().err
    assert main(["leaderboard", str(path), *flags]) == 0
    assert len(pd.read_csv(__import__("io").StringIO(capsys.readouterr().out))) == 2
    assert main(["finalize", str(path), *flags]) == 0
    assert "final model of study tiny" in capsys.readouterr().out
    assert main(["sample", str(path), "-n", "3", *flags]) == 0
    assert len(capsys.readouterr().out.split()) == 3
    assert main(["worker", str(path), *flags]) == 0  # nothing left to run
    assert not (tmp_path / "mlruns" / "optuna.journal").exists()


def test_python_dash_m_harness_is_the_command(tmp_path: Path):
    proc = subprocess.run([sys.executable, "-m", "harness", "--version"], cwd=tmp_path,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0 and proc.stdout.startswith("harness ")


@pytest.mark.slow
def test_status_shows_states_the_running_trials_the_best_and_the_final_model(write_study,
                                                                             capsys):
    pass
    from harness.search.liveness import load_study

    path = write_study(tiny_study(budget={"n_trials": 2, "steps": 50, "eval_every": 50}))
    assert main(["status", str(path)]) == 1  # never run
    capsys.readouterr()
    assert main(["run-study", str(path), "--no-finalize"]) == 0
    study = load_study(load_spec(path))
    running = study.ask()  # as a worker elsewhere would be, at step 50
    records.write(running, records.TrialRecord(worker="elsewhere:123:cpu", checkpoint_step=50))
    running.report(2.5, 50)
    from harness.search.checkpoints import open_checkpoints

    folder = open_checkpoints(load_spec(path)).folder
    folder.mkdir(parents=True)
    (folder / "trial-2.pt").write_bytes(bytes(2_500_000))
    capsys.readouterr()
    assert main(["status", str(path)]) == 0
    out = capsys.readouterr().out
    best = min(records.search_records(study)[:2], key=lambda r: r.value)
    assert "2 of 2 trials counted" in out and "2 complete, 0 pruned, 0 fail, 1 running" in out
    assert f"best:    trial {best.number}, dev {best.value:.4f}" in out
    assert ("running: trial 2 on elsewhere:123:cpu, step 50, dev 2.5000, checkpoint at step 50"
            in out)
    assert "checkpoints: 2.5 MB on this machine's disk" in out
    assert "final:   not finalized" in out


def test_progress_lines_show_how_much_of_the_wall_time_has_passed():
    """With budget.wall_time, each finished trial's line and the live header say how much of
    the budget has passed (the header as of now, also before the first trial ends); without
    one, they say nothing of time."""
    import io
    import time

    from optuna.trial import TrialState

    from harness.cli.progress import Progress
    from harness.search.records import StudyRecord, TrialRecord

    out = io.StringIO()
    progress = Progress(out)
    trial = TrialRecord(number=3, state=TrialState.PRUNED, best_dev_loss=1.99, best_step=5000)
    record = StudyRecord("id", "run", 200, None, timeout_start=time.time() - 12 * 60 - 5,
                         created=0.0, wall_time=3600.0)
    progress.search_started(record)
    assert progress.header() == "[12 of 60 min] "
    progress.trial_finished(trial, 4, 200, 1.933)
    assert progress.header() == "[4/200 trials, best 1.9330, 12 of 60 min] "
    progress.search_started(dataclasses.replace(record, timeout_start=time.time(),
                                                wall_time=None))
    progress.trial_finished(trial, 5, 200, 1.933)
    assert progress.header() == "[5/200 trials, best 1.9330] "
    assert out.getvalue().splitlines() == [
        "[4/200] trial   3 PRUNED   best dev 1.9900 at step 5000  best so far 1.9330  "
        "(12 of 60 min)",
        "[5/200] trial   3 PRUNED   best dev 1.9900 at step 5000  best so far 1.9330"]
