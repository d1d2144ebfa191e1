"""Figures: written, logged to MLflow, and the learning-rate finder's suggestion."""

from __future__ import annotations

import pytest
from mlflow import MlflowClient

from harness.cli import main
from harness.config import DataConfig
from harness.config.hparams import HParams
from harness.results.lr_find import lr_find
from harness.training.data import load_search_data
from harness.util import paths

from ..conftest import tiny_study

pytestmark = pytest.mark.slow


def test_study_and_trial_and_final_figures(write_study, capsys):
    study = tiny_study(budget={"n_trials": 3, "steps": 100, "eval_every": 50},
                       finalize={"top_k": 1, "seeds": 1})
    assert main(["run-study", str(write_study(study))]) == 0
    plots = paths.study_dir("tiny") / "plots"
    names = {p.name for p in plots.rglob("*.png")}
    assert {"optimization_history.png", "parallel_coordinate.png", "param_importances.png",
            "trial-0000.png", "trial-0002.png", "embeddings.png"} <= names
    client = MlflowClient(paths.tracking_uri())
    exp = client.get_experiment_by_name("tiny")
    runs = client.search_runs([exp.experiment_id])
    for r in runs:
        arts = {a.path for a in client.list_artifacts(r.info.run_id)}
        role = r.data.tags["harness.role"]
        if role == "trial":
            assert any(a.endswith(".png") for a in arts), arts
        elif role == "study":
            assert "plots" in arts and "leaderboard.csv" in arts
        else:
            assert "embeddings.png" in arts
    for png in plots.rglob("*.png"):
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 5000


def test_lr_find_suggests_a_range_below_the_blow_up():
    data = load_search_data(DataConfig(), 3)
    result = lr_find(HParams(hidden_width=64), data, steps=600)
    low, high = result.suggested
    assert high == pytest.approx(low * 10)
    assert 1e-2 < high < 1.0  # the lecture found its lr, 0.1, in this region
    assert min(result.losses) < result.losses[0] - 0.3  # the loss fell on the way up
    assert result.exponents == sorted(result.exponents)


def test_lr_find_command_writes_its_plot(capsys):
    from ..conftest import STUDIES

    code = main(["lr-find", str(STUDIES / "lecture.yaml"), "--steps", "300",
                 "--param", "hidden_width=32"])
    out = capsys.readouterr().out
    assert code == 0 and "suggested search range" in out
    assert (paths.study_dir("lecture") / "plots" / "lr_find.png").exists()
