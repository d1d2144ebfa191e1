"""The study file's reference covers every key the validator accepts, and only those: a key
added to the schema without a meaning fails here (the docs page is built from it)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from harness.config import reference
from harness.config.schema import Budget, FinalizeSpec, WorkersSpec


def test_every_key_has_a_meaning_and_every_meaning_a_key() -> None:
    keys = {r.key for r in reference.rows()}
    for section, cls in (("budget", Budget), ("finalize", FinalizeSpec), ("workers",
                                                                           WorkersSpec)):
        assert {f"{section}.{f.name}" for f in dataclasses.fields(cls)} <= keys
    assert {"sampler.n_startup_trials", "pruner.reduction_factor", "hparams.lr",
            "objective.constraints.n_params.max", "search.*.conditional"} <= keys
    page = reference.markdown()
    assert "| `budget.wall_time` | float or null | null |" in page
    assert "| `hidden_width` | int | 200 |" in page


def test_a_key_without_a_meaning_fails(monkeypatch: pytest.MonkeyPatch) -> None:
    meanings = dict(reference.MEANINGS)
    del meanings["budget.wall_time"]
    meanings["budget.wall_tme"] = "a meaning without a key"
    monkeypatch.setattr(reference, "MEANINGS", meanings)
    with pytest.raises(KeyError, match=r"without a meaning: \['budget.wall_time'\].*without a "
                                       r"key: \['budget.wall_tme'\]"):
        reference.rows()


def test_the_docs_page_holds_the_reference_as_generated() -> None:
    page = Path(__file__).resolve().parents[2] / "docs" / "study-file.md"
    text = page.read_text(encoding="utf-8")
    assert reference.page(text) == text, ("docs/study-file.md differs from the schema: run "
                                          "python -m harness.config.reference "
                                          "docs/study-file.md")
