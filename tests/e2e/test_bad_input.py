"""The catalogue of bad input: each case ends in a clear message, never a traceback, and
nothing is created when the input is rejected up front."""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import optuna
import pandas as pd
import pytest
import torch
import yaml

import harness.search.objective
from harness.cli import main
from harness.util import paths

from ..conftest import tiny_study

SECRET = "hunter2"


def run(capsys, *argv: str) -> tuple[int, str]:
    """`harness ARGV` in this process: exit code and everything it printed."""
    code = main(list(argv))
    out = capsys.readouterr()
    return code, out.out + out.err


def assert_clean_rejection(code: int, text: str, expected_code: int, message: str,
                           tmp_path: Path) -> None:
    assert code == expected_code, text
    assert message in text, text
    assert "Traceback" not in text
    assert not (tmp_path / "mlruns").exists(), "something was created for a rejected input"


def words_file(tmp_path: Path, content: bytes | str, name: str = "words.txt") -> Path:
    p = tmp_path / name
    p.write_bytes(content if isinstance(content, bytes) else content.encode())
    return p


# ---------------------------------------------------------------------------------------------
# Study files: exit 2, every error at once, nothing created

STUDY_CASES = {
    "yaml syntax": ("name: x\nbudget:\n  n_trials: [1, 2\n", r"line 4, column 1"),
    "unknown key": (tiny_study(sampler={"type": "tpe", "sed": 1}),
                    "sampler.sed: unknown key (did you mean 'seed'?)"),
    "unknown top-level key": (tiny_study(serch={}), "serch: unknown key (did you mean 'search'?)"),
    "wrong type": (tiny_study(budget={"n_trials": "many"}), "budget.n_trials: expected int"),
    "low > high": (tiny_study(search={"lr": {"type": "float", "low": 0.1, "high": 0.01}}),
                   "low (0.1) is greater than high (0.01)"),
    "log with low <= 0": (tiny_study(search={"lr": {"type": "float", "low": 0.0, "high": 0.1,
                                                    "log": True}}), "log scale needs low > 0"),
    "empty choices": (tiny_study(search={"batch_size": {"type": "categorical", "choices": []}}),
                      "must be a non-empty list"),
    "duplicated choices": (tiny_study(search={"batch_size": [32, 64, 32]}), "listed twice"),
    "conditional under a missing choice": (
        tiny_study(search={"lr_schedule": {"type": "categorical", "choices": ["constant", "step"],
                                           "conditional": {"cosine": {}}}},
                   fixed={"optimizer": "adamw"}),
        "'cosine' is not one of the choices"),
    "n_trials <= 0": (tiny_study(budget={"n_trials": 0}), "budget.n_trials: must be >= 1"),
    "steps <= 0": (tiny_study(budget={"steps": -5, "eval_every": 1}),
                   "budget.steps: must be >= 1"),
    "eval_every > steps": (tiny_study(budget={"steps": 100, "eval_every": 200}),
                           "larger than budget.steps"),
    "unknown sampler": (tiny_study(sampler={"type": "bayes"}), "unknown sampler 'bayes'"),
    "unknown pruner": (tiny_study(pruner={"type": "meadian"}),
                       "unknown pruner 'meadian' (did you mean 'median'?)"),
    "split fractions": (tiny_study(data={"train": 0.8, "dev": 0.15, "test": 0.1}),
                        "must sum to 1, got 1.05"),
    "context length zero": (tiny_study(fixed={"context_length": 0}),
                            "fixed.context_length: must be an integer >= 1"),
    "unknown hyperparameter": (tiny_study(fixed={"hiden_width": 8}),
                               "did you mean 'hidden_width'?"),
    "study name escaping the results folder": (tiny_study(name="../../etc"),
                                               "not a valid study name"),
    "unsafe YAML tag": ("name: x\nsearch: !!python/object/apply:os.system ['touch pwned']\n",
                        "unsupported YAML tag"),
}


@pytest.mark.parametrize(("content", "message"), STUDY_CASES.values(), ids=STUDY_CASES.keys())
def test_bad_study_file(capsys, tmp_path, write_study, content, message):
    code, text = run(capsys, "run-study", str(write_study(content)))
    assert_clean_rejection(code, text, 2, message, tmp_path)
    assert not (tmp_path / "pwned").exists()


def test_all_errors_of_a_file_are_reported_at_once(capsys, tmp_path, write_study):
    study = tiny_study(budget={"n_trials": 0, "steps": 10, "eval_every": 20},
                       sampler={"type": "nope"}, fixed={"lr": -1})
    code, text = run(capsys, "run-study", str(write_study(study)))
    assert_clean_rejection(code, text, 2, "4 errors in the study file", tmp_path)
    for part in ("budget.n_trials", "budget.eval_every", "sampler.type", "fixed.lr"):
        assert part in text


def test_missing_study_file(capsys, tmp_path):
    code, text = run(capsys, "run-study", str(tmp_path / "nope.yaml"))
    assert_clean_rejection(code, text, 2, "study file not found", tmp_path)


# ---------------------------------------------------------------------------------------------
# Data files: rejected up front (exit 2, nothing created) or handled

DATA_CASES = {
    "missing": (None, "data file not found"),
    "unreadable (a directory)": ("DIR", "is a directory"),
    "empty": (b"", "has no words"),
    "only blank lines": (b"\n   \n\r\n", "has no words"),
    "not UTF-8": (b"anna\nb\xe9a\n", "is not UTF-8"),
    "binary": (b"\x89PNG\r\n\x1a\n\x00\x00", "looks binary"),
    "boundary character in a word": (b"anna\njean.luc\n", "boundary character '.'"),
    "split leaves dev empty": (b"anna\nbob\ncarl\n", "dev split is empty"),
    "batch larger than the training examples": (b"\n".join([b"ab"] * 10),
                                                "batch_size 32 is larger than the 24 training"),
}


@pytest.mark.parametrize(("content", "message"), DATA_CASES.values(), ids=DATA_CASES.keys())
def test_bad_data_file(capsys, tmp_path, write_study, content, message):
    path = tmp_path / "words.txt"
    if content == "DIR":
        path.mkdir()
    elif content is not None:
        path.write_bytes(content)
    study = tiny_study(data={"path": str(path)}, search={"lr": [0.01]},
                       fixed={"batch_size": 32, "context_length": 3, "hidden_width": 8})
    code, text = run(capsys, "run-study", str(write_study(study)))
    assert_clean_rejection(code, text, 2, message, tmp_path)


def test_messy_but_valid_data_is_handled(capsys, tmp_path, write_study):
    # CRLF, surrounding spaces, characters beyond a-z, and a context longer than any word.
    names = ["  zoë ", "álvaro", "Ann-Marie", "o'neil", "li"] * 20
    path = words_file(tmp_path, "\r\n".join(names) + "\r\n")
    study = tiny_study(data={"path": str(path)}, search={},
                       fixed={"context_length": 20, "batch_size": 8, "hidden_width": 8})
    code, text = run(capsys, "train", str(write_study(study)), "--json",
                     "--set", "budget.steps=20", "--set", "budget.eval_every=10")
    assert code == 0, text
    from harness.config import DataConfig
    from harness.training.data import load_search_data

    data = load_search_data(DataConfig(path=str(path)), 20)
    assert {"ë", "á", "-", "'", "A", "M"} <= set(data.vocab.itos)
    assert data.vocab.itos[0] == "."


# ---------------------------------------------------------------------------------------------
# Training faults: the trial fails with its reason, the study goes on


@pytest.mark.slow
def test_diverging_trial_is_failed_everywhere_and_the_study_goes_on(capsys, tmp_path,
                                                                    write_study):
    study = tiny_study(budget={"n_trials": 2, "steps": 100, "eval_every": 50},
                       sampler={"type": "grid"}, search={"lr": [50.0, 0.01]},
                       fixed={"optimizer": "sgd", "lr_schedule": "constant",
                              "hidden_width": 16})
    path = write_study(study)
    code, text = run(capsys, "run-study", str(path), "--no-finalize")
    assert code == 0, text
    assert "FAIL" in text and "diverged" in text and "Traceback" not in text
    board = pd.read_csv(paths.study_dir("tiny") / "leaderboard.csv")
    assert list(board["state"]) == ["COMPLETE", "FAIL"]
    assert "diverged" in board.loc[1, "fail_reason"]
    from mlflow import MlflowClient

    client = MlflowClient(paths.tracking_uri())
    run_ = client.get_run(board.loc[1, "mlflow_run_id"])
    assert run_.info.status == "FAILED" and "diverged" in run_.data.tags["harness.fail_reason"]


@pytest.mark.slow
def test_out_of_gpu_memory_fails_the_trial_not_the_worker(capsys, tmp_path, write_study,
                                                          monkeypatch):
    real_train = harness.search.objective.train
    calls = []

    def train_that_runs_out_of_memory_once(*args, **kwargs):
        calls.append(1)
        if len(calls) == 1:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return real_train(*args, **kwargs)

    monkeypatch.setattr(harness.search.objective, "train", train_that_runs_out_of_memory_once)
    study = tiny_study(budget={"n_trials": 2, "steps": 50, "eval_every": 50})
    code, text = run(capsys, "run-study", str(write_study(study)), "--no-finalize")
    assert code == 0, text
    board = pd.read_csv(paths.study_dir("tiny") / "leaderboard.csv")
    assert sorted(board["state"]) == ["COMPLETE", "FAIL"]
    assert "out of GPU memory" in board.loc[board["state"] == "FAIL", "fail_reason"].iloc[0]


# ---------------------------------------------------------------------------------------------
# Services: one clear line, the password masked, nothing created


@pytest.mark.parametrize(
    ("flag", "url", "message"),
    [
        ("--storage", f"postgresql://bob:{SECRET}@127.0.0.1:1/nowhere",
         "cannot open the Optuna storage postgresql://bob:***@127.0.0.1:1/nowhere"),
        ("--storage", f"postgress://bob:{SECRET}@127.0.0.1/db", "cannot open the Optuna storage"),
        ("--tracking-uri", f"http://bob:{SECRET}@127.0.0.1:1",
         "cannot reach the MLflow tracking server at http://bob:***@127.0.0.1:1"),
        ("--tracking-uri", f"postgresql://bob:{SECRET}@127.0.0.1:1/nowhere",
         "cannot use the MLflow tracking store postgresql://bob:***@127.0.0.1:1/nowhere"),
    ],
    ids=["unreachable storage", "misspelled storage", "unreachable tracking server",
         "unreachable tracking database"],
)
def test_unreachable_services(capsys, tmp_path, write_study, flag, url, message):
    code, text = run(capsys, "run-study", str(write_study(tiny_study())), flag, url)
    assert_clean_rejection(code, text, 1, message, tmp_path)
    assert SECRET not in text


@pytest.mark.slow
def test_password_never_appears_in_output_logs_mlflow_or_leaderboard(capsys, tmp_path,
                                                                     write_study):
    base = os.environ.get("HARNESS_TEST_POSTGRES")
    if not base:
        pytest.skip("no PostgreSQL: set HARNESS_TEST_POSTGRES to run this test (CI sets it)")
    # Trust authentication accepts and ignores the password: a real run with a secret in it.
    url = base.replace("://postgres@", f"://postgres:{SECRET}@")
    assert SECRET in url, "HARNESS_TEST_POSTGRES must be of the form scheme://postgres@host/db"
    name = f"secret-{os.getpid()}"
    study = tiny_study(name=name, storage=url,
                       budget={"n_trials": 1, "steps": 50, "eval_every": 50},
                       finalize={"top_k": 1, "seeds": 1, "steps": 50})
    code, text = run(capsys, "-v", "run-study", str(write_study(study)))
    assert code == 0, text
    assert SECRET not in text
    code, board = run(capsys, "leaderboard", str(write_study(study)))
    assert code == 0 and SECRET not in board
    from mlflow import MlflowClient

    client = MlflowClient(paths.tracking_uri())
    exp = client.get_experiment_by_name(name)
    for r in client.search_runs([exp.experiment_id]):
        assert SECRET not in str(r.data.params) + str(r.data.tags)
        for art in client.list_artifacts(r.info.run_id):
            if art.path.endswith((".yaml", ".json", ".txt", ".csv")):
                local = client.download_artifacts(r.info.run_id, art.path, str(tmp_path))
                assert SECRET not in Path(local).read_text()
    for f in paths.study_dir(name).iterdir():
        if f.suffix in (".json", ".csv"):
            assert SECRET not in f.read_text()
    optuna.delete_study(study_name=name, storage=url)


# ---------------------------------------------------------------------------------------------
# Safety


class _Exploit:
    def __reduce__(self):
        return (os.system, ("touch pwned",))


def test_a_model_file_with_code_in_it_is_refused(capsys, tmp_path, write_study):
    study_path = write_study(tiny_study())
    model = paths.study_dir("tiny") / "model.pt"
    model.parent.mkdir(parents=True)
    with open(model, "wb") as f:
        pickle.dump({"format": 1, "payload": _Exploit()}, f)
    code, text = run(capsys, "sample", str(study_path))
    assert code == 1 and "refused to load" in text and "Traceback" not in text
    assert not (tmp_path / "pwned").exists()


def test_study_files_are_read_with_the_safe_loader(tmp_path, write_study):
    from harness.config import load_spec
    from harness.errors import SpecError

    path = write_study("name: !!python/name:os.system\n")
    with pytest.raises(SpecError):
        load_spec(path)
    assert yaml.safe_load("a: 1") == {"a": 1}  # and plain YAML still reads
