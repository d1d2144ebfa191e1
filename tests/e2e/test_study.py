"""End-to-end: tiny studies checked through the Optuna storage, the MLflow store and the CSV."""

from __future__ import annotations

import json
import re
import socket

import optuna
import pandas as pd
import pytest
from mlflow import MlflowClient

from harness.api import search as run_search
from harness.config import load_spec
from harness.results.leaderboard import build
from harness.search import counting, records, stops
from harness.search.checkpoints import open_checkpoints
from harness.search.create import prepare_study
from harness.search.liveness import load_study, open_study_storage
from harness.search.objective import Objective
from harness.tracking import open_tracker
from harness.util import paths

from ..conftest import tiny_study

pytestmark = pytest.mark.slow


def trial_runs(experiment: str):
    client = MlflowClient(paths.tracking_uri())
    exp = client.get_experiment_by_name(experiment)
    runs = client.search_runs([exp.experiment_id], max_results=1000)
    return client, [r for r in runs if r.data.tags.get("harness.role") == "trial"]


def test_tiny_study_end_to_end(write_study):
    spec = load_spec(write_study(tiny_study()))
    study = run_search(spec)

    # Optuna storage: exactly n_trials, all complete, each with its full config and run id.
    recs = records.records(load_study(spec))
    assert len(recs) == 3
    assert all(r.state == optuna.trial.TrialState.COMPLETE for r in recs)
    assert all(sorted(r.intermediate) == [50, 100, 150, 200] for r in recs)
    assert all(r.config["hidden_width"] == 32 for r in recs)

    # MLflow: one child run per trial under the study's parent, same param keys, dev_loss curve.
    client, runs = trial_runs("tiny")
    assert len(runs) == 3
    parent = records.read_record(study).parent_run_id
    assert {r.data.tags["mlflow.parentRunId"] for r in runs} == {parent}
    assert {r.info.status for r in runs} == {"FINISHED"}
    assert len({frozenset(r.data.params) for r in runs}) == 1
    assert {"trial_number", "lr", "batch_size", "hidden_width", "seed"} <= set(runs[0].data.params)
    by_id = {r.mlflow_run_id: r for r in recs}
    for run in runs:
        history = client.get_metric_history(run.info.run_id, "dev_loss")
        assert [m.step for m in history] == [50, 100, 150, 200]
        trial = by_id[run.info.run_id]
        assert run.data.metrics["best_dev_loss"] == pytest.approx(trial.value)
        assert run.data.params["trial_number"] == str(trial.number)
    assert client.get_run(parent).info.status == "FINISHED"

    # Leaderboard CSV written by the study: ranked by best dev loss.
    df = pd.read_csv(paths.study_dir("tiny") / "leaderboard.csv")
    assert list(df["rank"]) == [1, 2, 3]
    assert list(df["best_dev_loss"]) == pytest.approx(sorted(r.value for r in recs), rel=1e-5)
    assert set(df["mlflow_run_id"]) == {r.info.run_id for r in runs}

    # Where each trial's time went (bench/time_breakdown.py adds them up): every phase, none
    # counted twice, training and evaluation as train() measured them.
    for r in recs:
        assert set(r.times) == {"sample", "setup", "tracking", "storage", "train", "eval",
                                "checkpoints"}
        assert all(v >= 0 for v in r.times.values()) and r.times["train"] > 0
        assert sum(r.times.values()) <= r.duration_s
        assert r.times["train"] + r.times["eval"] <= r.train_s
        # The pruner and storage calls run inside train()'s callbacks, and were taken out of
        # its training time (the checkpoints too; MLflow's metric logging as well).
        inside = r.steps / r.steps_per_sec - r.times["train"] - r.times["checkpoints"]
        assert r.times["storage"] - 1e-3 <= inside <= r.times["storage"] + r.times["tracking"]


def test_rerun_does_not_add_trials_and_resume_completes(write_study):
    path = write_study(tiny_study(budget={"n_trials": 2, "steps": 100, "eval_every": 50}))
    run_search(load_spec(path))
    run_search(load_spec(path))
    assert counting.counted(records.records(load_study(load_spec(path)))) == 2
    # Raising the total resumes the same study up to the new total.
    study = run_search(load_spec(path, ["budget.n_trials=3"]))
    assert counting.counted(records.records(study)) == 3
    _, runs = trial_runs("tiny")
    assert len(runs) == 3


def test_pruned_and_diverged_trials_are_recorded_and_the_study_goes_on(write_study):
    study_file = tiny_study(
        budget={"n_trials": 4, "steps": 300, "eval_every": 50},
        pruner={"type": "median", "n_startup_trials": 1, "n_warmup_steps": 0},
        search={"lr": [1.0e-2, 1.0e6, 1.0e-4, 3.0e-3]},
    )
    spec = load_spec(write_study(study_file))
    # Fix the order: a good trial, then one that diverges, then one far worse than the first
    # (the median pruner stops it at its first report).
    pre = optuna.create_study(storage=open_study_storage(spec), study_name=spec.name)
    for lr in (1.0e-2, 1.0e6, 1.0e-4, 3.0e-3):
        pre.enqueue_trial({"lr": lr, "batch_size": 32})
    study = run_search(spec)
    states = {t.params["lr"]: t.state.name for t in study.trials}
    assert len(study.trials) == 4
    assert states[1.0e-2] == "COMPLETE"
    assert states[1.0e6] == "FAIL"
    assert states[1.0e-4] == "PRUNED"
    recs = records.records(study)
    assert recs[2].steps == 50

    failed = next(r for r in recs if r.state.name == "FAIL")
    assert "diverged" in failed.fail_reason

    client, runs = trial_runs("tiny")
    status = {r.data.params["trial_number"]: r.info.status for r in runs}
    expected = {"COMPLETE": "FINISHED", "PRUNED": "KILLED", "FAIL": "FAILED"}
    assert status == {str(t.number): expected[t.state.name] for t in study.trials}
    # Complete trials keep their model (finalize may average it in); the others keep none.
    kept = {r.data.params["trial_number"]: [a.path for a in client.list_artifacts(r.info.run_id)]
            for r in runs}
    assert {n for n, files in kept.items() if "model.pt" in files} == {
        str(t.number) for t in study.trials if t.state.name == "COMPLETE"}

    df = build(study)
    assert list(df["state"]) == sorted(df["state"], key=["COMPLETE", "PRUNED", "FAIL"].index)
    assert df["rank"].notna().sum() == sum(s == "COMPLETE" for s in states.values())
    assert "diverged" in df.loc[df["state"] == "FAIL", "fail_reason"].iloc[0]


def test_a_trial_started_beyond_n_trials_is_not_run_nor_counted(write_study):
    """Two workers that both see one trial left both start one: the later one stops at once."""
    spec = load_spec(write_study(tiny_study(budget={"n_trials": 1, "steps": 100,
                                                    "eval_every": 50})))
    study, record = prepare_study(spec)
    other = study.ask()  # another worker's trial: the study's last, still running
    objective = Objective(spec, open_tracker(spec), record, None, "cpu",
                           open_checkpoints(spec))
    study.optimize(objective, n_trials=1)

    surplus = records.records(study)[1]
    assert surplus.surplus is True
    assert surplus.state == optuna.trial.TrialState.PRUNED and not surplus.intermediate
    assert surplus.mlflow_run_id is None  # no MLflow run was opened for it
    assert counting.counted(records.records(study)) == 0
    study.tell(other, 2.5)
    assert counting.counted(records.records(study)) == 1
    assert list(build(study)["trial"]) == [other.number]


def test_progress_counts_trials_that_end_together_one_by_one(write_study):
    """Two trials that finish between two polls of the coordinator show [1/4] and [2/4], not
    [2/4] twice."""
    from optuna.distributions import FloatDistribution
    from optuna.trial import create_trial

    from harness.search.local import _Watcher

    spec = load_spec(write_study(tiny_study(budget={"n_trials": 4, "steps": 100,
                                                    "eval_every": 50})))
    study = optuna.create_study()
    seen: list[tuple[int, int, int]] = []

    class Observer:
        def search_started(self, record): pass
        def trial_started(self, number, params): pass
        def evaluated(self, number, step, steps, dev_loss): pass
        def trial_finished(self, trial, done, total, best):
            seen.append((trial.number, done, total))

    watcher = _Watcher(study, 4, spec.budget.steps, Observer())
    for value in (2.5, 2.4):
        study.add_trial(create_trial(params={"lr": 0.01}, value=value,
                                     distributions={"lr": FloatDistribution(1e-3, 1e-2)}))
    watcher.poll()
    study.add_trial(create_trial(params={"lr": 0.01}, value=2.3,
                                 distributions={"lr": FloatDistribution(1e-3, 1e-2)}))
    watcher.poll()
    assert seen == [(0, 1, 4), (1, 2, 4), (2, 3, 4)]


def test_a_retry_not_yet_claimed_by_its_worker_is_not_reaped(write_study):
    """A re-queued trial inherits its failed predecessor's "worker" (a dead process). Once a
    worker takes it (RUNNING) but before it records itself, the reaper must leave it alone;
    the predecessor itself, RUNNING under a dead worker, is reaped."""
    import subprocess
    import sys

    from harness.search.liveness import reap

    spec = load_spec(write_study(tiny_study()))
    study, _ = prepare_study(spec)

    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    lost = study.ask()
    lost.set_user_attr("worker", f"{socket.gethostname()}:{dead.pid}:cpu")
    assert reap(spec, study) == [lost.number]  # failed and re-queued
    retry = study.ask()  # a worker takes the re-queued trial
    assert study.trials[retry.number].system_attrs["retry_history"] == [lost.number]
    assert records.records(study)[retry.number].worker.endswith(f":{dead.pid}:cpu")
    assert reap(spec, study) == []
    assert study.trials[retry.number].state.name == "RUNNING"


def test_enqueued_configs_run_first_once_each_across_resumes(write_study):
    path = write_study(tiny_study(
        budget={"n_trials": 3, "steps": 50, "eval_every": 50},
        enqueue=[{"lr": 0.005, "batch_size": 32}, {"batch_size": 16}]))
    run_search(load_spec(path))
    recs = records.records(load_study(load_spec(path)))
    assert recs[0].params == {"lr": 0.005, "batch_size": 32}
    assert recs[1].params["batch_size"] == 16 and recs[1].params["lr"] != 0.005  # lr sampled
    run_search(load_spec(path, ["budget.n_trials=5"]))  # a resume enqueues nothing again
    recs = records.records(load_study(load_spec(path)))
    assert len(recs) == 5 and sum(r.params.get("lr") == 0.005 for r in recs) == 1
    assert {r.state.name for r in recs} == {"COMPLETE"}


@pytest.mark.parametrize(("enqueue", "message"), [
    ([{"hidden_width": 64}], "enqueue[0].hidden_width: unknown key"),
    ([{"lr": 0.5}], "enqueue[0].lr: 0.5 is outside its searched space"),
    ([{"batch_size": 48}], "enqueue[0].batch_size: 48 is outside its searched space"),
    ([{"lr": -1.0}], "enqueue[0].lr: must be a number > 0"),
    ({"lr": 0.005}, "enqueue: expected a list of configs"),
])
def test_enqueue_is_checked_against_the_space(write_study, enqueue, message):
    from harness.errors import SpecError

    with pytest.raises(SpecError, match=re.escape(message)):
        load_spec(write_study(tiny_study(enqueue=enqueue)))


def test_patience_stops_new_trials_and_says_why(write_study, capsys):
    """The best config runs first (enqueued), two worse ones follow: with patience 2 the study
    stops after 3 of its 6 trials, says why, and a rerun judges patience afresh."""
    from harness.cli import main

    path = write_study(tiny_study(
        budget={"n_trials": 6, "steps": 100, "eval_every": 50,
                "patience": {"trials": 2, "min_delta": 0.0}},
        enqueue=[{"lr": 0.01, "batch_size": 32}, {"lr": 0.0011, "batch_size": 16},
                 {"lr": 0.0012, "batch_size": 16}],
        finalize={"enabled": False}))
    assert main(["run-study", str(path)]) == 0
    out = capsys.readouterr().out
    study = load_study(load_spec(path))
    assert counting.counted(records.records(study)) == 3
    assert "stopped before budget.n_trials: no improvement by 0 over the last 2" in out
    assert "no improvement" in records.read_stopped(study)
    assert main(["run-study", str(path), "--set", "budget.patience=null"]) == 0
    assert counting.counted(records.records(load_study(load_spec(path)))) == 6
    assert records.read_stopped(load_study(load_spec(path))) is None


def test_stalled_needs_more_than_patience_trials_and_an_improvement_by_min_delta():
    import datetime

    def complete(*values):
        t0 = datetime.datetime(2026, 1, 1)
        return [records.TrialRecord(number=i, state=optuna.trial.TrialState.COMPLETE, value=v,
                                   completed=t0 + datetime.timedelta(minutes=i))
                for i, v in enumerate(values)]

    def stalled(recs, trials, min_delta):
        return stops.Patience(trials, min_delta).why(recs, 0.0)

    assert stalled(complete(2.0, 2.1), 2, 0.0) is None  # too few to judge
    assert stalled(complete(2.0, 2.1, 2.05), 2, 0.0) is not None
    assert stalled(complete(2.0, 2.1, 1.995), 2, 0.0) is None  # improved
    assert stalled(complete(2.0, 2.1, 1.995), 2, 0.01) is not None  # not by enough


def test_wall_time_stops_new_trials_that_would_not_fit_with_the_final_model(write_study,
                                                                             capsys):
    """budget.wall_time of 1 s: the first trial runs (nothing to estimate from before it), then
    one more trial and the final model's retrainings cannot fit, so the study stops there,
    says why, records the rounds of retrainings it kept time for, and finalizes."""
    from harness.cli import main

    path = write_study(tiny_study(budget={"n_trials": 4, "steps": 100, "eval_every": 50,
                                          "wall_time": 1},
                                  finalize={"top_k": 2, "seeds": 3, "samples": 5}))
    assert main(["run-study", str(path), "--workers", "1"]) == 0
    out, err = capsys.readouterr()
    study = load_study(load_spec(path))
    assert counting.counted(records.records(study)) == 1
    assert re.search(r"^\[1/4\] trial +0 COMPLETE .*best so far [0-9.]+  \(\d+ of 1 s\)$", err,
                     re.MULTILINE), err  # the progress line shows the clock
    assert "stopped before budget.n_trials: one more trial (up to" in out
    assert "past budget.wall_time" in records.read_stopped(study)
    record = records.read_record(study)
    assert (record.wall_time, record.final_rounds) == (1, 6)  # 2 candidates x 3 seeds, 1 process
    assert records.read_final(study) is not None  # and the final model still came


def test_out_of_wall_time_adds_the_slowest_trial_and_the_best_candidates_retrainings():
    import datetime

    from optuna.trial import TrialState

    t0 = datetime.datetime(2026, 1, 1)

    def rec(number, state, value, seconds, steps=1000, **kw):
        return records.TrialRecord(number=number, state=state, value=value, steps=steps,
                                  started=t0, completed=t0 + datetime.timedelta(seconds=seconds),
                                  **kw)

    def reason(recs, end, rounds=2, top_k=1, scale=1.0):
        return stops.WallTime(end, 1000, rounds, top_k, lambda s: s * scale).why(recs, 0.0)

    overhead = stops.FINAL_OVERHEAD_S
    assert reason([], 1.0) is None  # nothing finished: nothing to go by
    best = rec(0, TrialState.COMPLETE, 2.0, 100)
    # One more trial (100 s) and 2 rounds of the best trial's retrainings (2 x 100 s).
    assert reason([best], 300 + overhead) is None
    assert "past budget.wall_time" in reason([best], 299 + overhead)
    # A trial pruned at a fifth of the steps after 40 s would take 200 s in full: the next
    # trial may be that slow; finalize still retrains the best (fast) trial only.
    pruned = rec(1, TrialState.PRUNED, None, 40, steps=200)
    assert reason([best, pruned], 400 + overhead) is None
    assert reason([best, pruned], 399 + overhead) is not None
    # top_k 2 takes the slower second-best into finalize's rounds; a worse third is left out.
    slow = rec(2, TrialState.COMPLETE, 2.1, 150)
    worst = rec(3, TrialState.COMPLETE, 2.5, 170)
    assert reason([best, slow, worst], 170 + 300 + overhead, top_k=2) is None
    assert reason([best, slow, worst], 169 + 300 + overhead, top_k=2) is not None
    # finalize's own steps or minutes (retraining_s), no finalize at all, warm-start trials.
    assert reason([best], 100 + 2 * 150 + overhead, scale=1.5) is None
    assert reason([best], 100 + 2 * 150 + overhead - 1, scale=1.5) is not None
    assert reason([best], 100, rounds=0) is None
    assert reason([rec(0, TrialState.COMPLETE, 2.0, 100, warm_from="earlier#0")], 1.0) is None


def test_finalize_retraining_seconds_follow_its_steps_or_minutes():
    from harness.config.schema import FinalizeSpec

    assert FinalizeSpec().retraining_s(100.0, 1000) == 100.0
    assert FinalizeSpec(steps=3000).retraining_s(100.0, 1000) == 300.0
    assert FinalizeSpec(minutes=2).retraining_s(100.0, 1000) == 120.0
    assert FinalizeSpec(steps=500, minutes=2).retraining_s(100.0, 1000) == 50.0


def test_a_named_config_is_enqueued_cut_to_the_space(write_study):
    """`enqueue: [lecture]` and `--enqueue lecture` run the lecture's values that the space can
    hold (lr 0.1, batch 32 here); what it cannot hold (no 200-wide search here) is sampled."""
    from harness.cli.main import load as _load
    from harness.cli.parser import build_parser
    from harness.errors import SpecError

    study = tiny_study(search={"lr": {"type": "float", "low": 0.01, "high": 0.5, "log": True},
                               "batch_size": [16, 32], "dropout": [0.1, 0.2]})
    spec = load_spec(write_study({**study, "enqueue": ["lecture"]}))
    assert spec.enqueue == ({"lr": 0.1, "batch_size": 32},)
    args = build_parser().parse_args(["run-study", str(write_study(study)), "--enqueue",
                                      "lecture"])
    assert _load(args, args.study).enqueue == ({"lr": 0.1, "batch_size": 32},)
    with pytest.raises(SpecError, match=re.escape("enqueue[0]: unknown config name 'lectur'")):
        load_spec(write_study({**study, "enqueue": ["lectur"]}))


def test_warm_start_adds_the_earlier_studys_fitting_trials_uncounted(write_study, capsys,
                                                                     caplog):
    """A new study starts with the earlier one's complete trials that fit its space, fixed
    values and steps, linked to their MLflow runs; the others are named with a reason; the
    new study still runs its own n_trials."""
    from harness.cli import main

    earlier = write_study(tiny_study(name="earlier", budget={"n_trials": 4, "steps": 100,
                                                             "eval_every": 50},
                                     finalize={"enabled": False}), name="earlier.yaml")
    assert main(["run-study", str(earlier)]) == 0
    before = records.records(load_study(load_spec(earlier)))
    capsys.readouterr()

    narrower = tiny_study(name="later", budget={"n_trials": 2, "steps": 100, "eval_every": 50},
                          warm_start={"study": "earlier.yaml", "top": 3},
                          finalize={"enabled": False})
    narrower["search"] = {"lr": {"type": "float", "low": 1.0e-3, "high": 1.0e-2, "log": True},
                          "batch_size": [32]}  # the earlier trials of batch 16 do not fit
    later = write_study(narrower, name="later.yaml")
    with caplog.at_level("WARNING"):
        assert main(["run-study", str(later)]) == 0
    out = capsys.readouterr().out
    top3 = sorted((r for r in before if r.state.name == "COMPLETE"), key=lambda r: r.value)[:3]
    fits = [r for r in top3 if r.params["batch_size"] == 32]
    assert 0 < len(fits) < 3, "the test needs trials of both batch sizes among the top 3"
    for r in top3:
        if r not in fits:
            assert (f"warm start: trial {r.number} of earlier skipped: "
                    "batch_size=16 is not one of [32]") in caplog.text
    assert f"warm start: {len(fits)} complete trials of study earlier added " \
           f"({3 - len(fits)} skipped" in out

    recs = records.records(load_study(load_spec(later)))
    warm = [r for r in recs if r.warm_from]
    assert [(r.value, r.mlflow_run_id, r.params) for r in warm] == \
           [(r.value, r.mlflow_run_id, r.params) for r in fits]
    assert [r.warm_from for r in warm] == [f"earlier#{r.number}" for r in fits]
    assert [r.completed for r in warm] == [r.completed for r in fits]  # when they ran
    assert counting.counted(recs) == 2 and len(recs) == len(fits) + 2  # its own 2 trials ran
    assert main(["status", str(later)]) == 0
    assert f"warm:    {len(fits)} complete trials of study earlier" in capsys.readouterr().out


def test_warm_start_skips_trials_of_other_fixed_values_or_steps(write_study, caplog):
    earlier = write_study(tiny_study(name="earlier", budget={"n_trials": 2, "steps": 100,
                                                             "eval_every": 50}),
                          name="earlier.yaml")
    run_search(load_spec(earlier))
    for change, reason in ((dict(budget={"n_trials": 1, "steps": 150, "eval_every": 50}),
                            "it trained 100 steps, this study's trials train 150"),
                           (dict(fixed={**tiny_study()["fixed"], "hidden_width": 16}),
                            "it trained with hidden_width=32, this study uses 16")):
        spec = load_spec(write_study(tiny_study(name=f"later{len(caplog.records)}",
                                                warm_start={"study": "earlier"}, **change)))
        with caplog.at_level("WARNING"):
            study, record = prepare_study(spec)
        assert (record.warm_trials, record.warm_skipped) == (0, 2)
        assert reason in caplog.text


def test_constraints_keep_oversized_configs_untrained_and_out_of_the_ranking(write_study,
                                                                             capsys):
    """objective.constraints: a config over n_params.max is recorded infeasible at once, never
    trained and never opened as a run; one under steps_per_sec.min trains but is infeasible;
    the leaderboard ranks feasible trials only, finalize picks among them, and the sampler
    reads the violations (Trial.set_constraint)."""
    from harness.cli import main

    study = tiny_study(
        budget={"n_trials": 4, "steps": 100, "eval_every": 50},
        search={"hidden_width": [8, 64, 500]},  # 500 wide: 26,243 parameters
        enqueue=[{"hidden_width": 500}, {"hidden_width": 8}, {"hidden_width": 64}],
        objective={"constraints": {"n_params": {"max": 10_000}}},
        finalize={"top_k": 3, "seeds": 1, "samples": 0}, registry={"enabled": False})
    study["fixed"] = {k: v for k, v in study["fixed"].items() if k != "hidden_width"}
    path = write_study(study)
    assert main(["run-study", str(path)]) == 0
    err = capsys.readouterr().err
    assert "infeasible: n_params 26,243 is above its max 10,000, not trained" in err
    recs = records.records(load_study(load_spec(path)))
    big = recs[0]
    assert big.state.name == "PRUNED" and not big.intermediate and big.mlflow_run_id is None
    assert big.violations == [26_243 - 10_000] and not big.feasible
    assert all(r.feasible for r in recs[1:])
    board = pd.read_csv(paths.study_dir("tiny") / "leaderboard.csv")
    assert list(board.loc[board["trial"] == 0, "feasible"]) == [False]
    final = json.loads((paths.study_dir("tiny") / "final.json").read_text())
    assert 0 not in {c["trial"] for c in final["candidates"]}
    # What TPE reads to keep away from infeasible configs (Trial.set_constraint).
    assert load_study(load_spec(path)).trials[0].constraints == {"n_params.max": 16_243.0}

    # A measured constraint: every trial trains, and those too slow are infeasible.
    slow = write_study({**study, "name": "slow", "enqueue": [{"hidden_width": 8}],
                        "objective": {"constraints": {"n_params": {"max": 10_000},
                                                      "steps_per_sec": {"min": 1.0e9},
                                                      "ms_per_name": {"max": 1.0e-6}}},
                        "budget": {"n_trials": 1, "steps": 100, "eval_every": 50}},
                       name="slow.yaml")
    assert main(["run-study", str(slow), "--no-finalize"]) == 0
    (rec,) = records.records(load_study(load_spec(slow)))
    assert rec.state.name == "COMPLETE" and not rec.feasible
    assert rec.infeasible.startswith("steps_per_sec") and "below its min" in rec.infeasible
    # Each constraint reaches the sampler once measured: size before training, speed after.
    constraints = load_study(load_spec(slow)).trials[0].constraints
    assert constraints["n_params.max"] < 0 < constraints["steps_per_sec.min"]
    # Milliseconds per sampled name, measured after training (one name at a time).
    assert "; ms_per_name " in rec.infeasible and rec.infeasible.endswith("above its max 1e-06")
    assert constraints["ms_per_name.max"] == pytest.approx(rec.ms_per_name - 1.0e-6)
    assert rec.ms_per_name > 0
    assert main(["finalize", str(slow)]) == 1
    assert "no complete trial within its constraints" in capsys.readouterr().err


def test_a_pareto_study_finds_the_front_and_finalizes_the_picked_trial(write_study, capsys,
                                                                        caplog):
    """objective.pareto: two objectives in Optuna (dev loss, n_params), a named pruner reported
    off once, the curves still in MLflow; the leaderboard marks the front and lists it first,
    the figure is on disk and on the study's run, and finalize retrains only the trial the rule
    picks and reads the test split once."""
    from harness.cli import main

    study = tiny_study(
        budget={"n_trials": 4, "steps": 100, "eval_every": 50},
        pruner={"type": "hyperband"},
        search={"hidden_width": [8, 32, 64, 128]},
        enqueue=[{"hidden_width": 8}, {"hidden_width": 32}, {"hidden_width": 64},
                 {"hidden_width": 128}],
        objective={"pareto": ["dev_loss", "n_params"]},
        finalize={"seeds": 1, "samples": 0, "pick": {"max_n_params": 2_500}},
        registry={"enabled": False})
    study["fixed"] = {**{k: v for k, v in study["fixed"].items() if k != "hidden_width"},
                      "lr": 0.01}
    path = write_study(study)
    with caplog.at_level("WARNING"):
        assert main(["run-study", str(path)]) == 0
    captured = capsys.readouterr()
    assert caplog.text.count("pruner hyperband is off: a Pareto study has two objectives") == 1

    optuna_study = load_study(load_spec(path))
    assert len(optuna_study.directions) == 2
    recs = records.records(optuna_study)
    assert all(r.state.name == "COMPLETE" for r in recs)
    for t, r in zip(optuna_study.trials, recs, strict=True):
        assert t.values == [r.best_dev_loss, r.n_params] and not t.intermediate_values
        assert sorted(r.intermediate) == [50, 100]  # the curve kept by the harness instead
        assert min(r.intermediate.values()) == r.best_dev_loss
    client = MlflowClient(paths.tracking_uri())
    assert len(client.get_metric_history(recs[0].mlflow_run_id, "dev_loss")) == 2

    front = [r for r in recs if not any(
        o.value <= r.value and o.n_params <= r.n_params and (o.value, o.n_params) !=
        (r.value, r.n_params) for o in recs)]
    assert len(front) >= 2  # a larger model is better here: something to trade
    board = pd.read_csv(paths.study_dir("tiny") / "leaderboard.csv")
    assert set(board.loc[board["pareto"], "trial"]) == {r.number for r in front}
    assert list(board["pareto"][:len(front)]) == [True] * len(front)  # the front first
    assert "Pareto front (dev loss against parameters)" in captured.out

    figure = paths.study_dir("tiny") / "plots" / "pareto.png"
    assert figure.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    parent = records.read_record(optuna_study).parent_run_id
    assert "plots/pareto.png" in {a.path for a in client.list_artifacts(parent, "plots")}

    picked = min((r for r in front if r.n_params <= 2_500), key=lambda r: r.value)
    final = json.loads((paths.study_dir("tiny") / "final.json").read_text())
    assert final["chosen_trial"] == picked.number and final["pick"] == "{max_n_params: 2500}"
    assert [c["trial"] for c in final["candidates"]] == [picked.number]
    assert final["test_evaluations"] == 1
    assert "finalize.pick {max_n_params: 2500}: the lowest dev loss on the front" in captured.err
