"""Provenance on every run, and reproducing a recorded trial."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pandas as pd
import pytest
from mlflow import MlflowClient

from harness.cli import main
from harness.config import load_spec
from harness.search import records
from harness.search.liveness import load_study
from harness.util import paths, provenance

from ..conftest import tiny_study

REPO = Path(__file__).resolve().parent.parent.parent
KEYS = ("git_commit", "git_dirty", "git_diff_sha256", "harness_version", "torch_version",
        "optuna_version", "mlflow_version", "numpy_version", "python", "torch_build", "cpu",
        "cpu_count", "gpu", "gpu_count", "host", "command")


@pytest.mark.slow
def test_one_study_end_to_end_provenance_registry_and_report(write_study, capsys, tmp_path):
    """One study, searched then finalized: provenance on every run and the commit in the
    outputs; the final model registered (alias champion) and loaded as a pyfunc in a fresh
    process; sampling from it; the report before and after finalize. (One study for all, to
    keep the suite short.)"""
    import sys

    path = write_study(tiny_study(budget={"n_trials": 3, "steps": 100, "eval_every": 50},
                                  finalize={"top_k": 1, "seeds": 2, "samples": 0},
                                  workers={"threads": 1}, registry={"name": "names-model"}))
    assert main(["run-study", str(path), "--no-finalize"]) == 0
    assert main(["report", str(path), "--out", "before.md"]) == 0
    assert "Not finalized yet" in (tmp_path / "before.md").read_text()
    assert main(["finalize", str(path)]) == 0
    assert "registry:  models:/names-model/1, alias champion" in capsys.readouterr().out

    # Provenance: the study's, the trials' and the final run's tags; the commit in the outputs.
    head = subprocess.run(["git", "-C", str(REPO), "rev-parse", "HEAD"], capture_output=True,
                          text=True, check=True).stdout.strip()
    client = MlflowClient(paths.tracking_uri())
    exp = client.get_experiment_by_name("tiny")
    runs = {r.data.tags["harness.role"]: r for r in client.search_runs([exp.experiment_id])}
    for role in ("study", "trial", "final"):
        tags = runs[role].data.tags
        assert all(provenance.PREFIX + k in tags for k in KEYS), (role, sorted(tags))
        assert tags[provenance.PREFIX + "git_commit"] == head
        assert tags[provenance.PREFIX + "command"].startswith("harness ")
    assert runs["trial"].data.tags["harness.threads"] == "1"
    assert runs["trial"].data.tags["harness.device"] == "cpu"
    assert any(k.startswith("harness.worker_host.") for k in runs["study"].data.tags)
    commit = provenance.commit()
    assert commit.startswith(head)
    board = pd.read_csv(paths.study_dir("tiny") / "leaderboard.csv")
    assert set(board["commit"]) == {commit}
    final = json.loads((paths.study_dir("tiny") / "final.json").read_text())
    assert final["commit"] == commit

    # The registry: version 1, alias champion, its figures as tags; a pyfunc elsewhere.
    version = client.get_model_version_by_alias("names-model", "champion")
    assert str(version.version) == "1" and final["registered"] == "models:/names-model/1"
    assert float(version.tags["test_mean"]) == pytest.approx(final["test_mean"], abs=1e-6)
    assert float(version.tags["dev_mean"]) == pytest.approx(final["dev_mean"], abs=1e-6)
    code = ("import mlflow, sys; mlflow.set_tracking_uri(sys.argv[1]); "
            "m = mlflow.pyfunc.load_model('models:/names-model@champion'); "
            "df = m.predict(['em', 'sh']); "
            "print(len(df), list(df['prefix']), all(c.startswith(p) for p, c in "
            "zip(df['prefix'], df['completion'])), round(sum(df['next_char'][0].values()), 4))")
    out = subprocess.run([sys.executable, "-c", code, paths.tracking_uri()], capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split("\n")[-2] == "2 ['em', 'sh'] True 1.0"
    assert main(["sample", str(path), "--model", "models:/names-model@champion", "-n", "3"]) == 0
    assert main(["sample", str(path), "-n", "3"]) == 0
    names = capsys.readouterr().out.split()
    assert len(names) == 6 and names[:3] == names[3:]  # the same model, the same seed

    # The report: one Markdown file, its image links relative to it, logged on the study's run.
    assert main(["report", str(path), "--out", "docs/report.md"]) == 0
    text = (tmp_path / "docs" / "report.md").read_text()
    for part in ("# Study `tiny`", "| git_commit |", "| torch_version |", "## Leaderboard",
                 "Kneser-Ney 6-gram", "## Figures", "![", "## Final model: trial",
                 "| MLP (this study) |", "evaluated 1 time(s)", "## 20 names sampled"):
        assert part in text, part
    for link in [line[line.index("(") + 1 : -1] for line in text.splitlines()
                 if line.startswith("![")]:
        assert (tmp_path / "docs" / link).exists(), link
    assert len(text.split("## 20 names sampled from it (seed 0)")[1].split()) == 20
    artifacts = client.list_artifacts(runs["study"].info.run_id)
    assert "report.md" in {a.path for a in artifacts}


def test_outside_a_git_checkout_the_code_is_unknown_and_nothing_fails(tmp_path):
    info = provenance.git_info(tmp_path)
    assert info == {"git_commit": "unknown", "git_dirty": "unknown",
                    "git_diff_sha256": "unknown"}
    assert all(v for v in provenance.collect().values())


@pytest.mark.slow
def test_reproduce_retrains_a_trial_to_the_same_losses(write_study, capsys):
    path = write_study(tiny_study(budget={"n_trials": 2, "steps": 300, "eval_every": 50},
                                  fixed={**tiny_study()["fixed"], "dropout": 0.1},
                                  workers={"threads": 1}, finalize={"enabled": False}))
    assert main(["run-study", str(path)]) == 0
    capsys.readouterr()
    assert main(["reproduce", str(path), "--trial", "1"]) == 0
    out = capsys.readouterr().out
    recorded = records.records(load_study(load_spec(path)))[1].value
    assert f"best dev loss recorded {recorded:.6f}, reproduced {recorded:.6f}" in out
    assert "matches to 1e-6" in out and "1 torch thread(s); recorded with 1" in out
    assert main(["reproduce", str(path), "--trial", "7"]) == 1
    assert "has no trial 7" in capsys.readouterr().err


def test_elsewhere_a_reproduction_is_judged_against_the_recorded_seed_noise():
    from harness.results.reproduce import Reproduction

    def rep(reproduced: float, noise: float | None) -> Reproduction:
        return Reproduction(3, 100, 2.0, reproduced, abs(reproduced - 2.0), 2, 1,
                            seed_noise=noise)

    assert rep(2.0, None).matches and not rep(2.0 + 2e-6, None).matches
    assert rep(2.0015, 0.001).within_noise and not rep(2.0025, 0.001).within_noise
    assert not rep(2.0015, None).within_noise  # never finalized: no noise to judge by
