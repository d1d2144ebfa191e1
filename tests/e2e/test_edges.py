"""The edges, tried as someone who wants to break it would: every file the harness reads, every
number it accepts, every folder it writes. Each case ends in a clear answer, never a
traceback, and none reaches the last resort (an unexpected fault's one line)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from harness.cli import main
from harness.config.hparams import HParams
from harness.training.model import MLP, save_model
from harness.util import paths

from ..conftest import tiny_study

LAST_RESORT = "an unexpected fault"


def run(capsys, *argv: str) -> tuple[int, str]:
    code = main(list(argv))
    out = capsys.readouterr()
    text = out.out + out.err
    assert "Traceback" not in text and LAST_RESORT not in text, text
    return code, text


BOMB = "\n".join([f"{k}: &{k} [{', '.join(['*' + p] * 9)}]" for p, k in
                  zip("abcdefgh", "bcdefghi", strict=True)])


@pytest.mark.parametrize(("text", "message"), [
    ("a: &a [x, x, x, x, x, x, x, x, x]\n" + BOMB + "\n", "alias bomb"),
    ("a: &a [*a]\n", "an alias refers to the value that holds it"),
    ("a: " + "[" * 3000 + "]" * 3000 + "\n", "nests its values too deeply"),
    ("name: \"quick\\n\"\nsearch: {lr: [0.1]}\n", "is not a valid study name"),
    ("search: {lr: [0.1]}\nfixed: {seed: 1180591620717411303424}\n",
     "fixed.seed: must be an integer in 0..2^63-1"),
    ("search: {lr: [0.1]}\nsampler: {type: tpe, seed: 1180591620717411303424}\n",
     "does not fit in 64 bits"),
    ("search: {lr: [0.1]}\nsampler: {type: random, seed: 4294967296}\n",
     "sampler.seed: must be in 0..2147483647"),
    ("search: {lr: [0.1]}\ndata: {seed: 1180591620717411303424}\n", "does not fit in 64 bits"),
], ids=["alias bomb", "alias to itself", "deep nesting", "name with a newline", "huge seed",
        "huge sampler seed", "sampler seed numpy refuses", "huge data seed"])
def test_a_hostile_study_file_is_refused_at_once(capsys, tmp_path, write_study, text, message):
    code, out = run(capsys, "run-study", str(write_study(text)))
    assert code == 2 and message in out, out
    assert not (tmp_path / "mlruns").exists()


def test_a_byte_order_mark_is_not_part_of_the_first_word_or_key(capsys, tmp_path, write_study):
    words = tmp_path / "words.txt"
    words.write_bytes("\ufeffzoe\nann\nbob\n".encode() + b"\n".join([b"carla"] * 60))
    path = tmp_path / "study.yaml"
    path.write_bytes("\ufeff".encode() + json.dumps(tiny_study(data={"path": str(words)}))
                     .encode())
    from harness.config import load_spec
    from harness.training.data import read_words

    assert load_spec(path).name == "tiny"
    assert read_words(words)[0] == "zoe"


@pytest.mark.parametrize("argv", [["--temperature", "0"], ["--temperature", "nan"],
                                  ["--temperature", "-1"], ["--seed", str(2**70)],
                                  ["-n", "0"]])
def test_sample_refuses_numbers_it_cannot_use(capsys, write_study, argv):
    with pytest.raises(SystemExit) as info:
        main(["sample", str(write_study(tiny_study())), *argv])
    assert info.value.code == 2
    assert "error: argument" in capsys.readouterr().err


def _finished_model(spec_path: Path, hp: HParams | None = None, **payload_changes) -> Path:
    """A model file where a finalized study keeps it, with `payload_changes` made to it."""
    hp = hp or HParams(hidden_width=8, embedding_dim=4)
    itos = [".", *"abcdefghijklmnopqrstuvwxyz"]
    path = paths.study_dir("tiny") / "model.pt"
    save_model(path, MLP.from_hparams(hp, len(itos)), hp, itos)
    if payload_changes:
        payload = torch.load(path, weights_only=True)
        payload.update(payload_changes)
        torch.save(payload, path)
    return path


@pytest.mark.parametrize("argv", [["-n", str(10**9)], ["--max-length", str(10**9)]])
def test_sampling_more_than_fits_is_refused_before_anything_is_allocated(capsys, write_study,
                                                                        argv):
    study = write_study(tiny_study())
    _finished_model(study)
    code, out = run(capsys, "sample", str(study), *argv)
    assert code == 1 and "more than the" in out and "this machine can give it" in out


@pytest.mark.parametrize(("changes", "message"), [
    ({"hparams": {**HParams().to_dict(), "hiden_width": 8}}, "unknown hyperparameter"),
    ({"hparams": {**HParams().to_dict(), "hidden_width": 10**9}}, "more than the"),
    ({"hparams": HParams(hidden_width=16).to_dict()}, "do not fit its own hyperparameters"),
    ({"itos": ["a", "b", "b"]}, "vocabulary is not a list of distinct characters"),
    ({"state_dicts": [{"w": "not a tensor"}]}, "weights are not tensors"),
], ids=["unknown hyperparameter", "huge width", "wrong shapes", "bad vocabulary",
        "no tensors"])
def test_a_model_file_whose_parts_disagree_is_refused(capsys, write_study, changes, message):
    study = write_study(tiny_study())
    _finished_model(study, **changes)
    code, out = run(capsys, "sample", str(study))
    assert code == 1 and message in out, out


@pytest.mark.slow
def test_sizes_that_cannot_fit_fail_their_trial_and_the_study_goes_on(capsys, write_study,
                                                                       monkeypatch):
    monkeypatch.setenv("HARNESS_MEMORY_BUDGET", "2GiB")
    study = tiny_study(budget={"n_trials": 3, "steps": 50, "eval_every": 50},
                       sampler={"type": "grid"}, search={
                           "hidden_width": [16, 100_000_000],
                           "context_length": [3, 100_000]},
                       fixed={"optimizer": "adamw", "lr_schedule": "constant",
                              "embedding_dim": 4})
    study["budget"]["n_trials"] = 4
    code, out = run(capsys, "run-study", str(write_study(study)), "--no-finalize")
    assert code == 0, out
    import pandas as pd

    board = pd.read_csv(paths.study_dir("tiny") / "leaderboard.csv")
    assert sorted(board["state"]) == ["COMPLETE", "FAIL", "FAIL", "FAIL"]
    reasons = " ".join(board["fail_reason"].dropna())
    assert "this config needs about" in reasons
    assert "the examples of context length 100,000 needs about" in reasons


# ---------------------------------------------------------------------------------------------
# The results folder


def test_a_results_root_that_is_a_file_is_said(capsys, tmp_path, write_study, monkeypatch):
    (tmp_path / "results").write_text("not a folder")
    monkeypatch.setenv("HARNESS_ROOT", str(tmp_path / "results"))
    study = str(write_study(tiny_study()))
    for command in ("run-study", "status", "leaderboard", "finalize"):
        code, out = run(capsys, command, study)
        assert code == 2 and "is not a folder" in out, (command, out)


def test_an_out_that_is_a_folder_is_said(capsys, tmp_path, write_study):
    study = str(write_study(tiny_study(budget={"n_trials": 1, "steps": 50, "eval_every": 50})))
    assert main(["run-study", study, "--no-finalize"]) == 0
    capsys.readouterr()
    (tmp_path / "folder").mkdir()
    for command in ("leaderboard", "report"):
        code, out = run(capsys, command, study, "--out", str(tmp_path / "folder"))
        assert code == 2 and "is a folder; give a file name" in out, out


@pytest.mark.parametrize("command", ["status", "leaderboard", "sample", "report", "finalize",
                                     "reproduce", "ui"])
def test_commands_on_a_study_that_never_ran_create_nothing(capsys, tmp_path, write_study,
                                                           command):
    extra = ["--trial", "0"] if command == "reproduce" else []
    code, out = run(capsys, command, str(write_study(tiny_study())), *extra)
    assert code == 1 and ("has not been run yet" in out or "no final model yet" in out
                          or "no MLflow store yet" in out), out
    assert not (tmp_path / "mlruns").exists()


@pytest.mark.slow
def test_read_only_commands_work_on_a_read_only_copy(tmp_path, write_study):
    """A finished study copied where this user cannot write: status, leaderboard and sample
    read it as it is (no lock file, nothing repaired); run-study says it cannot write."""
    if os.geteuid() != 0 or shutil.which("setpriv") is None:
        pytest.skip("needs root and setpriv, to run a command as another user")
    study = write_study(tiny_study(budget={"n_trials": 1, "steps": 50, "eval_every": 50},
                                   finalize={"top_k": 1, "seeds": 1, "samples": 0}))
    assert main(["run-study", str(study)]) == 0
    copy = Path("/tmp") / f"harness-read-only-{os.getpid()}"
    shutil.rmtree(copy, ignore_errors=True)
    shutil.copytree(tmp_path, copy)
    try:
        for p in [copy, *copy.rglob("*")]:
            p.chmod(0o755 if p.is_dir() else 0o644)
        before = sorted(copy.rglob("*"))
        env = {**os.environ, "HARNESS_ROOT": str(copy / "mlruns"), "HOME": str(copy)}

        def as_nobody(*argv: str) -> subprocess.CompletedProcess:
            return subprocess.run(["setpriv", "--reuid=nobody", "--regid=nogroup",
                                   "--clear-groups", sys.executable, "-m", "harness", *argv],
                                  cwd=copy, env=env, capture_output=True, text=True,
                                  timeout=120)

        study_copy = str(copy / study.name)
        for argv in (["status", study_copy], ["leaderboard", study_copy],
                     ["sample", study_copy, "-n", "3"]):
            proc = as_nobody(*argv)
            assert proc.returncode == 0, (argv, proc.stderr)
            assert "Traceback" not in proc.stderr
        proc = as_nobody("run-study", study_copy, "--set", "budget.n_trials=2")
        assert proc.returncode == 2 and "is read-only for this user" in proc.stderr, proc.stderr
        assert sorted(copy.rglob("*")) == before  # no lock file, nothing written
    finally:
        shutil.rmtree(copy, ignore_errors=True)


# ---------------------------------------------------------------------------------------------
# The journal


@pytest.mark.parametrize("line", ['{"hello": "world"}', "[1, 2, 3]",
                                  '{"op_code": 99, "worker_id": "x"}',
                                  '{"op_code": 8, "worker_id": "x", "trial_id": "zero"}'],
                         ids=["not an operation", "a list", "unknown op code", "wrong kind"])
def test_a_journal_line_that_is_json_but_no_operation_is_named(capsys, write_study, line):
    study = str(write_study(tiny_study(budget={"n_trials": 1, "steps": 50, "eval_every": 50})))
    assert main(["run-study", study, "--no-finalize"]) == 0
    capsys.readouterr()
    journal = paths.journal_path()
    lines = journal.read_text().splitlines(keepends=True)
    journal.write_text("".join([*lines[:3], line + "\n", *lines[3:]]))
    for command in ("status", "leaderboard", "run-study"):
        code, out = run(capsys, command, study)
        assert code == 1 and f"damaged at line 4 (of {len(lines) + 1})" in out, out


# ---------------------------------------------------------------------------------------------
# The last resort


def test_an_unforeseen_fault_is_one_line_and_a_kept_traceback(capsys, write_study,
                                                             monkeypatch):
    import harness.cli.commands

    def broken(*args: object) -> int:
        raise ZeroDivisionError("something nobody foresaw")

    monkeypatch.setitem(harness.cli.commands.COMMANDS, "status", broken)  # type: ignore
    code = main(["status", str(write_study(tiny_study()))])
    err = capsys.readouterr().err
    assert code == 1 and err.count("\n") == 1, err
    assert "ZeroDivisionError in `harness status`: something nobody foresaw" in err
    kept = Path(err.rsplit("the full traceback is in ", 1)[1].rstrip(")\n"))
    assert "Traceback" in kept.read_text() and "something nobody foresaw" in kept.read_text()
