"""The `harness` command as a user runs it."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from harness.cli import main

from .conftest import STUDIES, tiny_study


def harness(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "harness.cli", *args], cwd=cwd,
                          capture_output=True, text=True, timeout=300)


COMMANDS = ["run-study", "train", "worker", "finalize", "sample", "leaderboard", "ui", "lr-find",
            "baseline"]


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
    path = write_study(tiny_study(budget={"n_trials": 2, "steps": 100, "eval_every": 50}))
    proc = harness("run-study", str(path), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "[2/2]" in proc.stderr and "best trial" in proc.stdout
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
