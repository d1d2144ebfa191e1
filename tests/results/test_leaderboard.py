"""The leaderboard: ranking, reference rows, edge flags, several studies, Markdown."""

from __future__ import annotations

import optuna
import pandas as pd
import pytest
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution
from optuna.trial import TrialState, create_trial

from harness.cli import main
from harness.results import leaderboard
from harness.training.baseline import BaselineResult


def fake_study(rows: list[tuple[str, float | None, dict]]) -> optuna.Study:
    study = optuna.create_study()
    dists = {"context_length": IntDistribution(1, 16), "lr": FloatDistribution(1e-4, 1.0, log=True)}
    for state, value, params in rows:
        study.add_trial(create_trial(
            state=TrialState[state], value=value if state == "COMPLETE" else None,
            params=params, distributions={k: dists[k] for k in params},
            user_attrs={"config": params, "fail_reason": "boom" if state == "FAIL" else None},
            intermediate_values={100: value if value is not None else 9.0}))
    return study


def test_ranking_and_reference_rows():
    study = fake_study([("PRUNED", 2.5, {"lr": 0.1}), ("COMPLETE", 2.2, {"lr": 0.01}),
                        ("FAIL", None, {"lr": 0.5}), ("COMPLETE", 2.1, {"lr": 0.02})])
    df = leaderboard.build(study, [BaselineResult("Kneser-Ney 6-gram", 6, 2.15, 0.8)])
    assert list(df["state"]) == ["COMPLETE", "REFERENCE", "COMPLETE", "PRUNED", "FAIL"]
    assert list(df["trial"].astype("object").where(df["trial"].notna(), None)) == [
        3, None, 1, 0, 2]
    assert list(df["rank"].astype("object").where(df["rank"].notna(), None)) == [
        1, None, 2, None, None]
    assert df.loc[1, "model"] == "Kneser-Ney 6-gram"
    assert df.loc[4, "fail_reason"] == "boom"


def test_edge_flags_only_where_the_best_trials_crowd_a_bound():
    study = fake_study([("COMPLETE", 2.0 + i / 100, {"context_length": c, "lr": lr})
                        for i, (c, lr) in enumerate([(16, 0.01), (16, 0.003), (16, 0.02),
                                                     (8, 0.005), (3, 0.01)])])
    flags = list(leaderboard.edge_flags(study).values())
    assert len(flags) == 1
    assert "high edge (16) of context_length's range 1..16" in flags[0]


def test_edge_flags_use_each_trials_own_range():
    # lr under two branches with different ranges: each trial is placed in its own range.
    study = optuna.create_study()
    for i, lr in enumerate([1e-3, 1.05e-3, 1.1e-3]):  # the low end of 1e-3..1e-2, mid 1e-4..1
        study.add_trial(create_trial(
            value=2.0 + i / 100, params={"lr": lr, "batch_size": 256},
            distributions={"lr": FloatDistribution(1e-3, 1e-2, log=True),
                           "batch_size": CategoricalDistribution([32, 64, 256])}))
    study.add_trial(create_trial(value=2.5, params={"lr": 1e-2},
                                 distributions={"lr": FloatDistribution(1e-4, 1.0, log=True)}))
    flags = list(leaderboard.edge_flags(study).values())
    assert len(flags) == 2
    assert any("low edge (0.001) of lr's range 0.001..0.01" in f for f in flags)
    assert any("high edge (256) of batch_size's range 32..256" in f for f in flags)


def test_markdown_and_combined_tables():
    a = leaderboard.build(fake_study([("COMPLETE", 2.2, {"lr": 0.01})]))
    b = leaderboard.build(fake_study([("COMPLETE", 2.1, {"lr": 0.02}),
                                      ("PRUNED", 2.4, {"lr": 0.3})]))
    both = leaderboard.combine({"a": a, "b": b})
    assert list(both["study"]) == ["b", "a", "b"] and list(both["rank"][:2]) == [1, 2]
    md = leaderboard.to_markdown(both, ["rank", "study", "trial", "state", "best_dev_loss", "lr"])
    lines = md.splitlines()
    assert lines[0] == "| rank | study | trial | state | best_dev_loss | lr |"
    assert lines[2] == "| 1 | b | 0 | COMPLETE | 2.1 | 0.02 |"
    assert len(lines) == 5


@pytest.mark.slow
def test_cli_leaderboard_of_two_studies_in_markdown_and_csv(tmp_path, write_study, capsys):
    from ..conftest import tiny_study

    paths = []
    for name in ("one", "two"):
        study = tiny_study(name=name, budget={"n_trials": 2, "steps": 50, "eval_every": 50},
                           finalize={"enabled": False})
        paths.append(str(write_study(study, f"{name}.yaml")))
        assert main(["run-study", paths[-1]]) == 0
    capsys.readouterr()
    assert main(["leaderboard", *paths, "--format", "md"]) == 0
    md = capsys.readouterr().out
    assert md.startswith("| rank | study | trial |") and md.count("| COMPLETE |") == 4
    assert main(["leaderboard", *paths, "--out", "both.csv"]) == 0
    df = pd.read_csv(tmp_path / "both.csv")
    assert sorted(df["study"]) == ["one", "one", "two", "two"]
    assert list(df["rank"]) == [1, 2, 3, 4]
    assert list(df["best_dev_loss"]) == sorted(df["best_dev_loss"])
