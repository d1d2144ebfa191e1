from __future__ import annotations

import pytest

from harness.config import hparams


def test_defaults_are_the_lecture_config():
    hp = hparams.HParams()
    assert (hp.context_length, hp.embedding_dim, hp.hidden_width, hp.batch_size) == (3, 10, 200, 32)
    assert (hp.optimizer, hp.lr, hp.lr_schedule, hp.lr_step_factor, hp.lr_step_at) == (
        "sgd", 0.1, "step", 0.1, 0.5)
    assert hp.precision == "fp32"  # bf16 is opt-in: it pays only for wide layers


@pytest.mark.parametrize(
    ("name", "value", "message"),
    [
        ("context_length", 0, ">= 1"),
        ("context_length", 2.5, "expected int"),
        ("lr", -0.1, "> 0"),
        ("lr", True, "boolean"),
        ("dropout", 1.0, "[0, 1)"),
        ("optimizer", "adam", "sgd, adamw"),
        ("precision", "fp16", "fp32, bf16"),
        ("lr", float("nan"), "finite"),
        ("nope", 1, "unknown"),
    ],
)
def test_check_value_explains_bad_values(name, value, message):
    assert message in hparams.check_value(name, value)


def test_check_value_accepts_int_for_float():
    assert hparams.check_value("lr", 1) is None
    assert hparams.make({"lr": 1}).lr == 1.0


def test_make_reports_every_problem():
    with pytest.raises(ValueError) as info:
        hparams.make({"lr": 0, "hidden_width": -1})
    assert "lr" in str(info.value) and "hidden_width" in str(info.value)
