"""The spec's sampler, as Optuna runs it: each type builds, and `gp` fits a Gaussian process."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import optuna
import pytest

from harness.config import StudySpec, load_spec
from harness.config.choices import SAMPLERS as SAMPLER_OPTIONS
from harness.search.samplers import build_sampler
from harness.search.space import suggest
from tests.conftest import tiny_study

SPACE = {"lr": {"type": "float", "low": 1.0e-3, "high": 1.0e-2, "log": True},
         "context_length": {"type": "int", "low": 2, "high": 10},
         "batch_size": [16, 32]}


def _loss(params: dict) -> float:
    """A smooth stand-in for a trial's dev loss: lowest at lr 3e-3, context 7, batch 32."""
    return ((params["lr"] - 3e-3) * 300) ** 2 + ((params["context_length"] - 7) / 4) ** 2 \
        + (0.0 if params["batch_size"] == 32 else 0.1)


def _spec(write_study: Callable[..., Path], sampler: dict) -> StudySpec:
    """A study of SPACE (its other sizes fixed, as the space leaves them) with `sampler`."""
    return load_spec(write_study(tiny_study(sampler=sampler, search=SPACE,
                                            fixed={"embedding_dim": 8, "hidden_width": 32})))


def _study(sampler: optuna.samplers.BaseSampler, spec: StudySpec, n: int) -> optuna.Study:
    study = optuna.create_study(sampler=sampler)
    for _ in range(n):
        trial = study.ask()
        study.tell(trial, _loss(suggest(trial, spec.search)))
    return study


@pytest.mark.parametrize("kind", sorted(set(SAMPLER_OPTIONS) - {"grid"}))
def test_each_sampler_runs_the_space_with_its_seed(kind: str, write_study: Callable[..., Path]
                                                   ) -> None:
    spec = _spec(write_study, {"type": kind, "seed": 3})
    first = _study(build_sampler(spec, seed_offset=1000), spec, 4)
    again = _study(build_sampler(spec, seed_offset=1000), spec, 4)
    other = _study(build_sampler(spec, seed_offset=2000), spec, 4)
    # The same seed proposes the same trials; another worker's offset proposes others.
    assert [t.params for t in first.trials] == [t.params for t in again.trials]
    assert [t.params for t in first.trials] != [t.params for t in other.trials]


def test_gp_proposes_from_its_model_after_its_startup_trials(write_study: Callable[..., Path]
                                                            ) -> None:
    spec = _spec(write_study, {"type": "gp", "seed": 0, "n_startup_trials": 4})
    sampler = build_sampler(spec)
    assert isinstance(sampler, optuna.samplers.GPSampler)
    study = _study(sampler, spec, 4)
    space = sampler.infer_relative_search_space(study, study.trials[-1])
    assert set(space) == {"lr", "context_length", "batch_size"}
    # With 4 complete trials the process is fitted and proposes all three parameters jointly
    # (a sampler that fell back to independent draws would return nothing here) ...
    proposal = sampler.sample_relative(study, study.ask(), space)
    assert set(proposal) == set(space)
    # ... and 16 of its proposals beat 16 random ones on this smooth loss.
    gp = _study(build_sampler(spec), spec, 20)
    rnd = _study(optuna.samplers.RandomSampler(seed=0), spec, 20)
    assert gp.best_value < rnd.best_value


def test_gp_options_are_checked(write_study: Callable[..., Path]) -> None:
    path = write_study(tiny_study(sampler={"type": "gp", "seed": 0, "sigma0": 0.2}))
    with pytest.raises(ValueError, match="sigma0"):
        load_spec(path)
    spec = load_spec(write_study(tiny_study(
        sampler={"type": "gp", "seed": 1, "deterministic_objective": True})))
    assert spec.sampler.options == {"seed": 1, "deterministic_objective": True}
