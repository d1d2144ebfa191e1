"""Pareto mode: the front, the rules that pick from it, and the study files that ask for it."""

from __future__ import annotations

import itertools

import pytest
from optuna.trial import TrialState

from harness.config import load_spec
from harness.config.schema import PickRule
from harness.errors import SpecError
from harness.search import pareto
from harness.search.records import TrialRecord

from ..conftest import tiny_study


def rec(number: int, loss: float, size: int, *, state: TrialState = TrialState.COMPLETE,
        infeasible: str | None = None, seconds: float | None = None) -> TrialRecord:
    return TrialRecord(number=number, state=state, value=loss, n_params=size,
                       train_s=seconds, infeasible=infeasible)


def dominated(r: TrialRecord, others: list[TrialRecord]) -> bool:
    """By the definition: another is as good on both and better on one."""
    return any(o.value <= r.value and o.n_params <= r.n_params
               and (o.value < r.value or o.n_params < r.n_params) for o in others if o is not r)


def test_the_front_is_exactly_the_undominated_feasible_complete_trials():
    losses = [2.3, 2.1, 2.2, 2.0, 2.05, 1.99, 2.4, 1.95, 2.0, 2.1]
    sizes = [5_000, 20_000, 10_000, 80_000, 40_000, 300_000, 4_000, 2_000_000, 40_000, 5_000]
    recs = [rec(i, loss, size) for i, (loss, size) in enumerate(zip(losses, sizes, strict=True))]
    recs += [rec(10, 1.5, 1_000, infeasible="steps_per_sec 3 is below its min 500"),
             rec(11, 1.5, 1_000, state=TrialState.PRUNED)]
    eligible = recs[:10]
    expected = sorted((r for r in eligible if not dominated(r, eligible)),
                      key=lambda r: r.n_params)
    got = pareto.front(recs, "n_params")
    assert [r.number for r in got] == [r.number for r in expected] == [6, 9, 8, 5, 7]
    # Along the front, size rises and dev loss falls.
    assert all(a.n_params < b.n_params and a.value > b.value
               for a, b in itertools.pairwise(got))


def test_pick_by_limit_is_the_best_dev_loss_within_it_and_none_beyond():
    front = pareto.front([rec(0, 2.3, 5_000), rec(1, 2.1, 20_000), rec(2, 2.0, 79_000),
                          rec(3, 1.95, 81_000)], "n_params")
    assert pareto.pick(front, PickRule("n_params", 80_000)).number == 2
    assert pareto.pick(front, PickRule("n_params", 80_000.0 + 1_000)).number == 3
    assert pareto.pick(front, PickRule("n_params", 4_000)) is None


def test_the_knee_is_where_a_larger_model_stops_paying():
    # Loss falls steeply up to 50k parameters, then barely: the knee is the 50k model.
    front = [rec(0, 2.40, 5_000), rec(1, 2.10, 15_000), rec(2, 1.99, 50_000),
             rec(3, 1.98, 500_000), rec(4, 1.975, 5_000_000)]
    assert pareto.knee(pareto.front(front, "n_params"), "n_params").number == 2
    # Mirrored: loss falls slowly, then steeply at the largest sizes: the knee moves up.
    late = [rec(0, 2.40, 5_000), rec(1, 2.39, 50_000), rec(2, 2.38, 500_000),
            rec(3, 2.0, 1_000_000), rec(4, 1.99, 5_000_000)]
    assert pareto.knee(late, "n_params").number == 3
    assert pareto.knee(front[:2], "n_params").number == 1  # two trials: the lower loss
    assert pareto.knee([], "n_params") is None


def test_train_seconds_is_a_cost_too():
    recs = [rec(0, 2.0, 1, seconds=100.0), rec(1, 2.1, 1, seconds=10.0),
            rec(2, 2.2, 1, seconds=50.0), rec(3, 2.0, 1, seconds=None)]
    assert [r.number for r in pareto.front(recs, "train_seconds")] == [1, 0]


@pytest.mark.parametrize(("objective", "finalize", "sampler", "message"), [
    ({"pareto": ["dev_loss", "n_params"]}, {}, "random", "needs an explicit rule"),
    ({"pareto": ["dev_loss", "depth"]}, {"pick": "knee"}, "random",
     "objective.pareto: must be [dev_loss, X] with X one of n_params, train_seconds"),
    ({"pareto": ["dev_loss", "n_params"], "minimize": "dev_loss"}, {"pick": "knee"}, "random",
     "either minimize (one objective) or pareto (two)"),
    ({"pareto": ["dev_loss", "n_params"]}, {"pick": {"max_train_seconds": 60}}, "random",
     "must be `knee` or {max_n_params: LIMIT}"),
    ({"pareto": ["dev_loss", "n_params"]}, {"pick": "knee"}, "cmaes", "cmaes optimizes one"),
    ({}, {"pick": "knee"}, "random", "only a Pareto study"),
])
def test_pareto_study_files_are_checked(write_study, objective, finalize, sampler, message):
    study = tiny_study(objective=objective, finalize=finalize, sampler={"type": sampler})
    with pytest.raises(SpecError, match="1 error") as info:
        load_spec(write_study(study))
    assert message in info.value.errors[0]


def test_a_pareto_study_file_reads_either_order_and_prunes_nothing_by_default(write_study):
    spec = load_spec(write_study(tiny_study(
        objective={"pareto": ["n_params", "dev_loss"]}, pruner=None,
        finalize={"pick": {"max_n_params": 80000}})))
    assert spec.objective.pareto == "n_params"
    assert spec.objective.directions == ["minimize", "minimize"]
    assert spec.finalize.pick == PickRule("n_params", 80_000.0)
    assert spec.pruner.type == "none"


def test_the_leaderboard_lists_the_front_first_and_marks_it():
    import optuna

    from harness.results.leaderboard import build

    study = optuna.create_study(directions=["minimize", "minimize"])
    dist = {"x": optuna.distributions.FloatDistribution(0, 1)}
    for loss, size in ((2.0, 80_000), (2.1, 5_000), (2.05, 100_000), (2.3, 3_000)):
        study.add_trial(optuna.trial.create_trial(
            params={"x": 0.5}, distributions=dist, values=[loss, size],
            user_attrs={"n_params": size, "best_dev_loss": loss}))
    board = build(study, pareto_metric="n_params")
    # The dominated trial (2.05 at 100k) ranks after the whole front, its lower loss aside.
    assert list(board["trial"]) == [0, 1, 3, 2]
    assert list(board["pareto"]) == [True, True, True, False]
    assert list(board["rank"]) == [1, 2, 3, 4]
    assert build(study)["pareto"].isna().all()  # no Pareto metric: no front to mark
    from harness.results.leaderboard import Board, render

    header = render([Board("s", board, ["x"], ())], "md").splitlines()[0]
    assert header.startswith("| rank | trial | state | pareto |")
