from __future__ import annotations

import re
from pathlib import Path

import pytest

from harness.config import load_spec
from harness.config.space import CategoricalParam, FloatParam, IntParam
from harness.errors import SpecError

from ..conftest import STUDIES, tiny_study


@pytest.mark.parametrize("path", sorted(STUDIES.glob("*.yaml")), ids=lambda p: p.name)
def test_every_shipped_study_is_valid(path: Path):
    spec = load_spec(path)
    assert spec.name == path.stem
    # the fixed values make a valid config (auto: once measured, either precision does)
    for precision in (("fp32", "bf16") if spec.auto_precision else (None,)):
        (spec.with_precision(precision) if precision else spec).base_hparams()


@pytest.mark.parametrize("path", sorted(STUDIES.glob("*.yaml")), ids=lambda p: p.name)
def test_every_shipped_study_is_a_template_a_person_reads(path: Path):
    """A header of at most 5 lines (what it is for, how long, where its results go), and no
    run history: comments say what a key does (runs are recorded in studies/RESULTS.md)."""
    lines = path.read_text().splitlines()
    header = next(i for i, line in enumerate(lines) if not line.startswith("#"))
    assert 1 <= header <= 5
    assert "harness " in "\n".join(lines[:header])  # the command that runs it
    assert not re.search(r"\b(runs? \d+|probes? [A-Z]|EPYC|Xeon|Zen \d)", path.read_text())


def test_tiny_study_parses(write_study):
    spec = load_spec(write_study(tiny_study()))
    assert spec.budget.n_trials == 3 and spec.sampler.type == "random"
    lr, batch = spec.search
    assert lr == FloatParam("lr", 1e-3, 1e-2, log=True)
    assert batch == CategoricalParam("batch_size", (16, 32))


def test_conditional_parameters(write_study):
    study = tiny_study(fixed={"optimizer": "adamw"}, search={
        "lr_schedule": {"type": "categorical", "choices": ["constant", "step"],
                        "conditional": {"step": {
                            "lr_step_at": {"type": "float", "low": 0.5, "high": 0.9}}}},
        "hidden_layers": {"type": "int", "low": 1, "high": 3},
    })
    spec = load_spec(write_study(study))
    sched, layers = spec.search
    assert sched.conditional["step"] == (FloatParam("lr_step_at", 0.5, 0.9),)
    assert layers == IntParam("hidden_layers", 1, 3)
    assert spec.search_names() == ["lr_schedule", "lr_step_at", "hidden_layers"]


def test_scientific_notation_is_a_float(write_study):
    path = write_study("search:\n  lr: {type: float, low: 1e-4, high: 3e-1, log: true}\n")
    (lr,) = load_spec(path).search
    assert (lr.low, lr.high) == (1e-4, 0.3)


def test_all_errors_reported_at_once_with_key_paths(write_study):
    study = tiny_study(
        budgt={"n_trials": 3},
        fixed={"hiden_width": 10, "dropout": 1.5},
        search={"lr": {"type": "float", "low": 0.5, "high": 0.1},
                "embedding_dim": {"type": "int", "low": 0, "high": 8, "log": True}},
        sampler={"type": "tpee"},
        data={"train": 0.8, "dev": 0.3, "test": 0.1},
    )
    with pytest.raises(SpecError) as info:
        load_spec(write_study(study))
    errors = info.value.errors
    text = "\n".join(errors)
    assert "budgt: unknown key (did you mean 'budget'?)" in text
    assert "fixed.hiden_width: unknown hyperparameter (did you mean 'hidden_width'?)" in text
    assert "fixed.dropout: must be a number in [0, 1)" in text
    assert "search.lr: low (0.5) is greater than high (0.1)" in text
    assert "search.embedding_dim: a log scale needs low > 0" in text
    assert "sampler.type: unknown sampler 'tpee' (did you mean 'tpe'?)" in text
    assert "must sum to 1" in text
    assert len(errors) >= 7


def test_finalize_fill_needs_an_ensemble_and_a_wall_time(write_study):
    with pytest.raises(SpecError, match="2 errors") as info:
        load_spec(write_study(tiny_study(finalize={"fill": True})))
    assert info.value.errors == [
        "finalize.fill: needs finalize.ensemble: true (the models it trains join the final "
        "ensemble)",
        "finalize.fill: needs budget.wall_time (it fills the time the search and the "
        "retrainings leave of it)"]
    spec = load_spec(write_study(tiny_study(budget={"wall_time": 600},
                                            finalize={"fill": True, "ensemble": True})))
    assert spec.finalize.fill


@pytest.mark.parametrize(
    ("study", "message"),
    [
        (tiny_study(budget={"steps": 100, "eval_every": 500}), "larger than budget.steps"),
        (tiny_study(budget={"n_trials": 0}), "budget.n_trials: must be >= 1"),
        (tiny_study(budget={"wall_time": 0}), "budget.wall_time: must be > 0 seconds"),
        (tiny_study(search={"batch_size": []}), "non-empty list"),
        (tiny_study(search={"batch_size": [32, 32]}), "listed twice"),
        (tiny_study(search={"lr_schedule": {"type": "categorical", "choices": ["step"],
                                            "conditional": {"cosine": {}}}}),
         "'cosine' is not one of the choices"),
        (tiny_study(fixed={"lr": 0.1}, search={"lr": [0.1, 0.2]}), "fixed or searched"),
        (tiny_study(pruner={"type": "median", "n_warmup": 3}), "n_warmup_steps"),
        (tiny_study(search={"dropout": {"type": "int", "low": 0, "high": 1}}),
         "dropout is a float hyperparameter"),
        (tiny_study(name="../escape"), "not a valid study name"),
    ],
)
def test_single_errors(write_study, study, message):
    with pytest.raises(SpecError, match="1 error") as info:
        load_spec(write_study(study))
    assert message in info.value.errors[0]


def test_yaml_syntax_error_has_line_and_column(write_study):
    path = write_study("name: x\nbudget:\n  n_trials: [1, 2\n")
    with pytest.raises(SpecError, match=r"line \d+, column \d+"):
        load_spec(path)


def test_overrides_apply_before_validation(write_study):
    path = write_study(tiny_study())
    spec = load_spec(path, ["budget.n_trials=7", "fixed.weight_decay=2e-3", "sampler.seed=5"])
    assert spec.budget.n_trials == 7 and spec.fixed["weight_decay"] == 0.002
    assert spec.sampler.options["seed"] == 5
    with pytest.raises(SpecError, match="budget.n_trials: expected int"):
        load_spec(path, ["budget.n_trials=many"])
    with pytest.raises(SpecError, match="expected KEY=VALUE"):
        load_spec(path, ["budget.n_trials"])


def test_missing_study_file(tmp_path: Path):
    with pytest.raises(SpecError, match="study file not found"):
        load_spec(tmp_path / "nope.yaml")
