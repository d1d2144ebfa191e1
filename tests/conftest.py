"""Shared fixtures: every test runs in its own results root, never in the repository's mlruns/."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parent.parent
STUDIES = REPO / "studies"


@pytest.fixture(autouse=True)
def results_root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Run in a temporary directory with HARNESS_ROOT pointing inside it."""
    monkeypatch.chdir(tmp_path)
    root = tmp_path / "mlruns"
    monkeypatch.setenv("HARNESS_ROOT", str(root))
    return root


@pytest.fixture
def write_study(tmp_path: Path) -> Callable[..., Path]:
    """Write a study file from a dict (or raw text) and return its path."""

    def write(content: dict | str, name: str = "study.yaml") -> Path:
        path = tmp_path / name
        text = content if isinstance(content, str) else yaml.safe_dump(content, sort_keys=False)
        path.write_text(text, encoding="utf-8")
        return path

    return write


def tiny_study(**overrides: object) -> dict:
    """A study of a few trials of a few hundred steps on the bundled names."""
    study: dict = {
        "name": "tiny",
        "budget": {"n_trials": 3, "steps": 200, "eval_every": 50},
        "sampler": {"type": "random", "seed": 0},
        "pruner": {"type": "none"},
        "fixed": {"context_length": 3, "embedding_dim": 8, "hidden_width": 32,
                  "optimizer": "adamw", "lr_schedule": "constant"},
        "search": {"lr": {"type": "float", "low": 1.0e-3, "high": 1.0e-2, "log": True},
                   "batch_size": [16, 32]},
    }
    study.update(overrides)
    return study
