"""The final model: chosen on dev over seeds, the test split read once and only by finalize."""

from __future__ import annotations

import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from mlflow import MlflowClient

import harness.training.data
from harness.api import finalize
from harness.api import search as run_search
from harness.config import load_spec
from harness.config.hparams import HParams
from harness.errors import AlreadyFinalized, SealedSplitError
from harness.final.candidates import Candidate, plan_steps
from harness.final.fill import fill_steps, grow
from harness.final.mix import best_order
from harness.final.publish import final_model
from harness.final.result import FinalResult
from harness.results import report
from harness.search import records
from harness.search.liveness import load_study
from harness.training import baseline
from harness.training.baseline import BaselineResult
from harness.training.data import load_search_data, load_test_examples
from harness.training.model import MLP, Ensemble, Mixed, load_model, mean_loss, sample_words
from harness.util import paths

from ..conftest import REPO, tiny_study

pytestmark = pytest.mark.slow


def small_study(**overrides):
    return tiny_study(finalize={"top_k": 2, "seeds": 2, "samples": 10}, **overrides)


def test_a_whole_study_builds_examples_of_train_and_dev_only(write_study, monkeypatch):
    built = []
    real = harness.training.data.build_examples

    def spy(words, vocab, context_length):
        built.append(list(words))
        return real(words, vocab, context_length)

    monkeypatch.setattr(harness.training.data, "build_examples", spy)
    harness.training.data.load_search_data.cache_clear()
    spec = load_spec(write_study(small_study()))
    run_search(spec)
    data = harness.training.data
    train, dev, test = data.split_words(data.read_words(), spec.data)
    assert built == [train, dev]  # one context length in this study: built once, cached
    assert test not in built


def test_the_test_split_is_sealed_while_a_search_runs(write_study):
    class Snoop:
        """An observer that tries to read the test split in the middle of a trial."""

        errors: list[Exception] = []

        def search_started(self, record):
            pass

        def trial_started(self, number, params):
            try:
                load_test_examples(spec.data, 3)
            except SealedSplitError as exc:
                self.errors.append(exc)

        def evaluated(self, number, step, steps, dev_loss):
            pass

        def trial_finished(self, trial, done, total, best):
            pass

    spec = load_spec(write_study(small_study(budget={"n_trials": 1, "steps": 50,
                                                     "eval_every": 50})))
    snoop = Snoop()
    run_search(spec, observer=snoop)
    assert len(snoop.errors) == 1
    assert load_test_examples(spec.data, 3).X.shape[1] == 3  # unsealed again afterwards


def test_only_finalize_reaches_the_test_split():
    # The search modules never import the final step, and only final.py names the test split.
    code = ("import harness.search.worker, harness.search.local, harness.cli.main, sys; "
            "print('harness.final' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
    for gate in ("load_test_examples", "load_test_words"):
        users = [str(p.relative_to(REPO)) for p in (REPO / "harness").rglob("*.py")
                 if gate in p.read_text() and p.name != "data.py"]
        assert users == ["harness/final/evaluate.py"], gate


def test_finalize_picks_by_mean_dev_loss_not_one_lucky_seed(write_study, monkeypatch):
    spec = load_spec(write_study(small_study(budget={"n_trials": 2, "steps": 100,
                                                     "eval_every": 50})))
    run_search(spec)
    study = load_study(spec)
    trial_a, trial_b = sorted(study.trials, key=lambda t: t.value)
    lr_a, lr_b = trial_a.params["lr"], trial_b.params["lr"]

    # Candidate A has the single best seed (1.0) but the worse mean (2.5 vs 2.0).
    fake = {(lr_a, 1): 1.0, (lr_a, 2): 4.0, (lr_b, 1): 2.1, (lr_b, 2): 1.9}
    import harness.final.retrain

    real_train = harness.final.retrain.train

    def fake_train(hp, data, **kwargs):
        result = real_train(hp, data, **{**kwargs, "steps": 10, "eval_every": 10})
        result.best_dev_loss = fake[(hp.lr, hp.seed)]
        return result

    monkeypatch.setattr(harness.final.retrain, "train", fake_train)
    result = finalize(spec)
    assert result.chosen_trial == trial_b.number
    assert result.dev_mean == pytest.approx(2.0)
    assert result.model_seed == 2  # the chosen config's best seed is the saved model
    by_trial = {c.trial: c for c in result.candidates}
    assert by_trial[trial_a.number].dev_mean == pytest.approx(2.5)
    assert by_trial[trial_a.number].dev_std > 0


@pytest.mark.parametrize(("finalize_block", "speed", "steps"), [
    ({}, 500.0, 200),                              # budget.steps
    ({"steps": 1000}, 500.0, 1000),                # finalize.steps
    ({"minutes": 1}, 501.0, 28_550),               # 60 s x 501 steps/s x 0.95 = 28,557: in 50s
    ({"minutes": 1, "steps": 10_000}, 500.0, 10_000),  # capped by finalize.steps
    ({"minutes": 1}, None, 200),                   # no measured speed: the steps decide
    ({"minutes": 0.001}, 500.0, 50),               # at least one evaluation interval
])
def test_retraining_steps_follow_steps_or_minutes(write_study, finalize_block, speed, steps):
    spec = load_spec(write_study(tiny_study(finalize=finalize_block)))
    assert plan_steps(Candidate(0, HParams(), speed), spec) == steps


def test_finalize_minutes_sets_steps_from_the_trials_speed(write_study, monkeypatch):
    spec = load_spec(write_study(tiny_study(budget={"n_trials": 2, "steps": 100,
                                                    "eval_every": 50},
                                            finalize={"top_k": 1, "seeds": 1,
                                                      "minutes": 0.002})))
    run_search(spec)
    best = min(records.records(load_study(spec)), key=lambda r: r.value)
    expected = max(50, int(0.002 * 60 * best.steps_per_sec * 0.95) // 50 * 50)
    result = finalize(spec)
    assert result.steps == result.candidates[0].steps == expected


def test_finalize_records_once_then_refuses_and_force_counts(write_study):
    spec = load_spec(write_study(small_study(budget={"n_trials": 2, "steps": 100,
                                                     "eval_every": 50})))
    run_search(spec)
    assert records.read_final(load_study(spec)) is None  # no test figure of any model yet
    result = finalize(spec)
    assert len(result.test_losses) == 2 and result.test_evaluations == 1
    assert 2.0 < result.test_mean < 3.4
    # The references, scored on test at the same moment (the count still says 1): the bigram,
    # and the Kneser-Ney order best on dev (6 on this split), test beside test.
    from harness.training.baseline import KneserNey, bigram_loss
    from harness.training.data import Vocab, read_words, split_words

    bigram, kn = result.references
    words = read_words(spec.data.path)
    train, dev, test = split_words(words, spec.data)
    vocab = Vocab.from_words(words)
    assert bigram.model.startswith("bigram")
    assert bigram.test_loss == bigram_loss(train, test, vocab) != bigram_loss(train, dev, vocab)
    assert kn.model == "Kneser-Ney 6-gram" and kn.discount == 0.85
    assert kn.dev_loss == pytest.approx(1.9835, abs=1e-4)
    assert kn.test_loss == KneserNey(train, 6, vocab).loss(test, 0.85) != kn.dev_loss
    assert "test" not in (paths.study_dir("tiny") / "baselines.json").read_text()

    # Stored in the study's records, in final.json (read back whole), and as a final MLflow run
    # with the model.
    study = load_study(spec)
    assert FinalResult.from_dict(records.read_final(study)) == result
    assert all(len(c.train_s) == len(c.eval_s) == 2 for c in result.candidates)
    older = records.read_final(study)  # a record from before the seconds were kept
    for cand in older["candidates"]:
        del cand["train_s"], cand["eval_s"]
    assert FinalResult.from_dict(older).candidates[0].train_s == ()
    assert FinalResult.load(paths.study_dir("tiny") / "final.json") == result
    client = MlflowClient(paths.tracking_uri())
    run = client.get_run(result.mlflow_run_id)
    assert run.data.tags["harness.stage"] == "final"
    assert run.data.tags["mlflow.parentRunId"] == records.read_record(study).parent_run_id
    assert run.data.metrics["test_mean"] == pytest.approx(result.test_mean)
    assert run.data.metrics["reference_test_loss.kneser-ney_6-gram"] == kn.test_loss
    assert 0 <= run.data.metrics["novel_share"] <= 1
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"model.pt", "final.json", "samples.txt"} <= artifacts

    with pytest.raises(AlreadyFinalized, match="already finalized") as info:
        finalize(spec)
    assert f"{result.test_mean:.4f}" in str(info.value)

    again = finalize(spec, force=True)
    assert again.test_evaluations == 2
    assert FinalResult.load(paths.study_dir("tiny") / "final.json").test_evaluations == 2


def test_saved_model_loads_without_unpickling_and_samples(write_study):
    spec = load_spec(write_study(small_study(budget={"n_trials": 1, "steps": 100,
                                                     "eval_every": 50})))
    run_search(spec)
    finalize(spec)
    model, hp, itos = final_model(spec)
    assert itos[0] == "." and hp.hidden_width == 32
    a = sample_words(model, itos, 20, seed=0)
    assert a == sample_words(model, itos, 20, seed=0) and len(a) == 20
    assert all("." not in w and len(w) <= 32 for w in a)


@pytest.mark.parametrize(("left_s", "expected"), [
    (100.0, 10_000),  # room for all of a retraining's steps: no more than those
    (30.0, 6_000),  # 6,000 steps at 5 ms: whole evaluation intervals
    (20.0, 0),  # 4,000 steps: under half a retraining
    (-5.0, 0),  # the wall time has passed
])
def test_fill_trains_what_fits_and_at_least_half_a_retraining(left_s, expected):
    assert fill_steps(left_s, step_s=0.005, steps=10_000, eval_every=1_000) == expected


def test_a_model_joins_the_ensemble_only_if_it_lowers_its_dev_loss():
    from harness.training.train import train

    hp = HParams(context_length=3, embedding_dim=8, hidden_width=32, batch_size=32,
                 optimizer="adamw", lr=1e-2, lr_schedule="constant")
    data = load_search_data(load_spec(REPO / "studies" / "quick.yaml").data, 3)
    trained = train(hp, data, steps=300, eval_every=100).model
    untrained = [MLP.from_hparams(replace(hp, seed=s), len(data.vocab)).eval() for s in (1, 2)]
    ensemble, loss, kept = grow(Ensemble([untrained[0]]), [trained, untrained[1]], data.dev)
    assert kept == (True, False)  # the trained model helps; another untrained one does not
    assert list(ensemble.members) == [untrained[0], trained]
    assert loss == pytest.approx(mean_loss(ensemble, data.dev.X, data.dev.Y))
    assert loss < mean_loss(untrained[0], data.dev.X, data.dev.Y)


def _fill_study(wall_time: float) -> dict:
    return tiny_study(budget={"n_trials": 1, "steps": 100, "eval_every": 50,
                              "wall_time": wall_time},
                      finalize={"top_k": 1, "seeds": 1, "samples": 0, "ensemble": True,
                                "fill": True})


def test_fill_trains_more_seeds_in_the_time_left_and_keeps_those_that_help(write_study,
                                                                           capsys):
    """Minutes left of budget.wall_time after the retrainings: one more seed per process
    (here 2), for a retraining's steps; each is in the saved ensemble exactly when it lowered
    the ensemble's dev loss."""
    from harness.cli.render import format_final

    spec = load_spec(write_study(_fill_study(wall_time=900)))
    run_search(spec)
    result = finalize(spec, workers=2)
    ens, fill = result.sections["ensemble"], result.sections["fill"]
    assert result.seeds == (1,) and ens.trial_model_seed == 0
    assert fill.fill_seeds == (2, 3) and fill.fill_steps == 100
    assert len(fill.fill_dev_losses) == len(fill.fill_kept) == 2
    model, hp, _ = final_model(spec)
    assert len(model.members) == result.members == 2 + sum(fill.fill_kept)
    dev = load_search_data(spec.data, hp.context_length).dev
    assert mean_loss(model, dev.X, dev.Y) == pytest.approx(ens.ensemble_dev_loss)
    # Each model joined only by lowering the loss of the members before it.
    members, loss = list(model.members[:2]), mean_loss(Ensemble(model.members[:2]), dev.X, dev.Y)
    for joined in fill.fill_kept:
        if joined:
            members.append(model.members[len(members)])
            grown = mean_loss(Ensemble(members), dev.X, dev.Y)
            assert grown < loss
            loss = grown
    assert loss == pytest.approx(ens.ensemble_dev_loss)
    assert result.test_evaluations == 1
    assert FinalResult.load(paths.study_dir("tiny") / "final.json") == result
    metrics = MlflowClient(paths.tracking_uri()).get_metric_history(result.mlflow_run_id,
                                                                    "fill_dev_loss")
    assert [m.value for m in metrics] == pytest.approx(list(fill.fill_dev_losses))
    assert "filled     seeds 2, 3 (100 steps, the time left)" in format_final(result)


def test_fill_trains_nothing_once_the_wall_time_has_passed(write_study):
    spec = load_spec(write_study(_fill_study(wall_time=1)))
    run_search(spec)  # its one trial runs: nothing to go by before it
    result = finalize(spec)
    assert "fill" not in result.sections and result.members == 2


def test_an_ensemble_final_model_averages_the_chosen_configs_seeds(write_study, capsys):
    from harness.cli import main
    from harness.cli.render import format_final

    spec = load_spec(write_study(tiny_study(
        budget={"n_trials": 1, "steps": 100, "eval_every": 50},
        finalize={"top_k": 1, "seeds": 2, "samples": 10, "ensemble": True})))
    run_search(spec)
    result = finalize(spec)
    model, hp, itos = final_model(spec)
    # The 2 retrained seeds' models and, trained in the search on seed 0, the trial's own.
    assert isinstance(model, Ensemble) and len(model.members) == 3 == result.members
    trial = records.records(load_study(spec))[result.chosen_trial]
    ens = result.sections["ensemble"]
    assert ens.trial_model_seed == trial.hparams["seed"] == 0 not in result.seeds
    assert ens.trial_model_dev_loss == pytest.approx(trial.value, abs=1e-4)
    kept = MlflowClient(paths.tracking_uri()).download_artifacts(trial.mlflow_run_id,
                                                                 "model.pt", str(paths.root()))
    kept_model, kept_hp, _ = load_model(Path(kept))
    assert kept_hp.to_dict() == trial.hparams
    for name, weight in kept_model.state_dict().items():
        assert torch.equal(model.members[2].state_dict()[name], weight)
    # Its own figures: on dev under its members' mean (it averages their distributions), on
    # test the saved model's loss; the test split still evaluated once.
    assert ens.ensemble_dev_loss < min(result.dev_mean, ens.trial_model_dev_loss)
    test = load_test_examples(spec.data, hp.context_length)
    assert mean_loss(model, test.X, test.Y) == pytest.approx(ens.ensemble_test_loss)
    assert mean_loss(kept_model, test.X, test.Y) == pytest.approx(ens.trial_model_test_loss)
    assert ens.ensemble_test_loss not in result.test_losses
    assert result.test_evaluations == 1 and len(result.samples) == 10
    assert FinalResult.load(paths.study_dir("tiny") / "final.json") == result
    run = MlflowClient(paths.tracking_uri()).get_run(result.mlflow_run_id)
    assert run.data.metrics["ensemble_test_loss"] == pytest.approx(ens.ensemble_test_loss)
    assert run.data.metrics["trial_model_test_loss"] == pytest.approx(ens.trial_model_test_loss)
    shown = format_final(result)
    assert f"test {ens.ensemble_test_loss:.4f} (the saved model: the 2 seeds' models and " \
           f"trial {result.chosen_trial}'s own" in shown
    assert f"3 x {result.n_params:,} parameters" in shown
    written = report.render(spec, paths.study_dir("tiny") / "report.md")
    assert f"| MLP, the 2 seeds' models and trial {result.chosen_trial}'s own averaged (the " \
           f"saved model) | {ens.ensemble_dev_loss:.4f} | {ens.ensemble_test_loss:.4f} |" \
           in written
    assert len(sample_words(model, itos, 5, seed=0)) == 5
    capsys.readouterr()
    assert main(["status", str(spec.source)]) == 0
    assert f"ensemble of 3 models {ens.ensemble_test_loss:.4f}" in capsys.readouterr().out


def test_a_mixed_final_model_mixes_the_ngram_at_the_weight_best_on_dev(write_study, tmp_path,
                                                                       capsys):
    """finalize.mix_ngram: the saved model mixes the ensemble with the Kneser-Ney order best on
    dev that its context holds, at the weight best on dev; the test split is read once, for
    the mixture and the ensemble alike."""
    from harness.cli import main
    from harness.cli.render import format_final

    (tmp_path / "words.txt").write_text("\n".join(harness.training.data.read_words()[:4000]))
    spec = load_spec(write_study(tiny_study(
        data={"path": str(tmp_path / "words.txt")},
        budget={"n_trials": 1, "steps": 150, "eval_every": 50},
        finalize={"top_k": 1, "seeds": 2, "samples": 5, "ensemble": True, "mix_ngram": True})))
    run_search(spec)
    result = finalize(spec)
    mix, ens = result.sections["mix_ngram"], result.sections["ensemble"]
    model, hp, _itos = final_model(spec)
    assert isinstance(model, Mixed) and isinstance(model.neural, Ensemble)
    assert (model.order, model.discount, model.weight) == (mix.order, mix.discount, mix.weight)
    dev_results = baseline.cached(spec.data, paths.study_dir("tiny") / "baselines.json")
    fitting = [r for r in dev_results if r.discount and r.order <= hp.context_length + 1]
    assert mix.order == min(fitting, key=lambda r: r.dev_loss).order == 4
    dev = load_search_data(spec.data, hp.context_length).dev
    assert mean_loss(model, dev.X, dev.Y) == pytest.approx(mix.dev_loss, rel=1e-5)
    assert mean_loss(model.neural, dev.X, dev.Y) == pytest.approx(ens.ensemble_dev_loss)
    # The weight is the grid's best on dev: neither part alone nor a neighbour does better.
    assert 0.0 < mix.weight < 1.0
    for weight in (0.0, 1.0, mix.weight - 0.01, mix.weight + 0.01):
        model.weight = weight
        assert mean_loss(model, dev.X, dev.Y) > mix.dev_loss
    model.weight = mix.weight
    test = load_test_examples(spec.data, hp.context_length)
    assert mean_loss(model, test.X, test.Y) == pytest.approx(mix.test_loss, rel=1e-5)
    assert mix.test_loss < ens.ensemble_test_loss and result.test_evaluations == 1
    assert FinalResult.load(paths.study_dir("tiny") / "final.json") == result
    run = MlflowClient(paths.tracking_uri()).get_run(result.mlflow_run_id)
    assert run.data.metrics["mix_ngram_test_loss"] == pytest.approx(mix.test_loss)
    shown = format_final(result)
    assert (f"mixed      dev {mix.dev_loss:.4f}, test {mix.test_loss:.4f} (the saved model: "
            f"the above mixed with the Kneser-Ney 4-gram, weight {1 - mix.weight:.2f}") in shown
    assert "averaged" in shown and "(the saved model: the 2 seeds'" not in shown
    assert len(result.samples) == 5
    capsys.readouterr()
    assert main(["status", str(spec.source)]) == 0
    assert f"mixed with a 4-gram {mix.test_loss:.4f}" in capsys.readouterr().out


def test_the_ngram_mixed_in_is_the_best_on_dev_whose_history_the_context_holds():
    results = [BaselineResult("bigram (counts + 1)", 2, 2.40),
               *(BaselineResult(f"Kneser-Ney {n}-gram", n, loss, 0.7)
                 for n, loss in ((2, 2.45), (3, 2.20), (4, 2.10), (5, 2.05), (6, 2.06)))]
    assert best_order(results, context_length=8).order == 5
    assert best_order(results, context_length=3).order == 4  # a 5-gram needs 4 characters


@pytest.mark.parametrize("why", ["other steps", "seed retrained", "damaged", "missing"])
def test_a_trial_model_that_cannot_stand_beside_the_seeds_is_left_out(write_study, why,
                                                                       caplog):
    """The ensemble takes the trial's own model only as the retrainings' peer: the same
    steps, a seed not retrained, a readable file; else it averages the seeds alone."""
    study = tiny_study(budget={"n_trials": 1, "steps": 100, "eval_every": 50},
                       finalize={"top_k": 1, "seeds": 2, "samples": 0, "ensemble": True})
    if why == "other steps":
        study["finalize"]["steps"] = 50
    if why == "seed retrained":
        study["fixed"]["seed"] = 2
    spec = load_spec(write_study(study))
    run_search(spec)
    trial = records.records(load_study(spec))[0]
    kept = Path(MlflowClient(paths.tracking_uri()).get_run(trial.mlflow_run_id)
                .info.artifact_uri.removeprefix("file://"), "model.pt")
    assert kept.is_file()
    if why == "damaged":  # cut off
        kept.write_bytes(kept.read_bytes()[:1000])
    if why == "missing":
        kept.unlink()
    result = finalize(spec)
    model, _, _ = final_model(spec)
    assert len(model.members) == 2 == result.members
    ens = result.sections["ensemble"]
    assert ens.trial_model_seed is None and ens.trial_model_test_loss is None
    assert "trial 0's own model is not in the final ensemble" in caplog.text


def test_the_test_loss_is_computed_on_the_test_split(write_study, tmp_path):
    """A data file whose test split is one repeated odd word: the final model's test loss is
    far above its dev loss, which it could not be if the 'test' figures came from dev."""
    names = harness.training.data.read_words()[:3000]
    split = harness.training.data.split_words([str(i) for i in range(len(names))],
                                     harness.training.data.DataConfig())
    test_positions = {int(i) for i in split[2]}
    words = ["zqxjzqxj" if i in test_positions else w for i, w in enumerate(names)]
    (tmp_path / "words.txt").write_text("\n".join(words) + "\n")
    spec = load_spec(write_study(small_study(data={"path": str(tmp_path / "words.txt")},
                                             budget={"n_trials": 1, "steps": 200,
                                                     "eval_every": 50})))
    train_, dev, test = harness.training.data.split_words(words, spec.data)
    assert set(test) == {"zqxjzqxj"} and "zqxjzqxj" not in set(train_) | set(dev)
    run_search(spec)
    result = finalize(spec)
    assert result.dev_mean < 3.0 and result.test_mean > result.dev_mean + 1.0


def test_finalize_on_two_processes_end_to_end(write_study):
    """The path search.yaml takes: the retrainings spread over spawned processes."""
    spec = load_spec(write_study(small_study(budget={"n_trials": 2, "steps": 100,
                                                     "eval_every": 50})))
    run_search(spec)
    events = []

    class Observer:
        def retrainings_planned(self, jobs, processes):
            events.append(("planned", len(jobs), processes))

        def retraining_evaluated(self, job, step, dev_loss):
            events.append(("evaluated",))

        def retraining_done(self, job, dev_loss, done, total):
            events.append(("done", done, total))

    result = finalize(spec, workers=2, observer=Observer())
    assert events[0] == ("planned", 4, 2)
    assert [e for e in events if e[0] == "done"] == [("done", k, 4) for k in range(1, 5)]
    assert len(result.candidates) == 2 and all(len(c.dev_losses) == 2 for c in result.candidates)
    assert result.test_evaluations == 1 and 2.0 < result.test_mean < 3.4
    # Each retraining's seconds in training steps and dev evaluations come back from its
    # process (bench/time_breakdown.py splits finalize's time with them).
    for cand in result.candidates:
        assert len(cand.train_s) == len(cand.eval_s) == 2
        assert all(0 < t < 60 for t in (*cand.train_s, *cand.eval_s))
    # The spawned retrainings are the same computation as in this process: same seeds, same
    # weights, same dev loss.
    here = finalize(spec, force=True)
    assert [c.dev_losses for c in here.candidates] == [c.dev_losses for c in result.candidates]
