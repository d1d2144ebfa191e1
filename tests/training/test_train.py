from __future__ import annotations

import math

import pytest
import torch

from harness.config import DataConfig
from harness.config.hparams import HParams
from harness.errors import TrainingDiverged
from harness.training.data import load_search_data
from harness.training.model import MLP, mean_loss
from harness.training.train import TrainState, WeightAverage, lr_at, train

SMALL = dict(context_length=3, embedding_dim=8, hidden_width=32, batch_size=32)


@pytest.fixture(scope="module")
def data():
    return load_search_data(DataConfig(), 3)


def test_loss_goes_down(data):
    result = train(HParams(**SMALL), data, steps=400, eval_every=100)
    devs = [loss for _, loss in result.dev_curve]
    assert [s for s, _ in result.dev_curve] == [100, 200, 300, 400]
    assert devs[-1] < devs[0] < math.log(27)
    assert result.best_dev_loss < 2.7
    assert len(result.train_curve) == 4 and result.steps == 400
    assert result.steps_per_sec > 0 and result.n_params > 0


def test_same_seed_same_result_and_other_seed_differs(data):
    a = train(HParams(**SMALL, seed=1), data, steps=150, eval_every=50)
    b = train(HParams(**SMALL, seed=1), data, steps=150, eval_every=50)
    c = train(HParams(**SMALL, seed=2), data, steps=150, eval_every=50)
    assert a.dev_curve == b.dev_curve and a.train_curve == b.train_curve
    assert a.dev_curve != c.dev_curve


def test_returned_model_holds_the_best_weights_not_the_last(data):
    # A rate far too high after step 200 makes the later evaluations worse than step 200's.
    result = train(HParams(**SMALL), data, steps=400, eval_every=50,
                   lr_fn=lambda step: 0.1 if step < 200 else 4.0)
    assert result.best_step == 200 and result.dev_loss > result.best_dev_loss + 0.5
    assert mean_loss(result.model, data.dev.X, data.dev.Y) == pytest.approx(result.best_dev_loss)


def test_callback_sees_each_evaluation_and_can_stop_training(data):
    seen = []

    def on_eval(ev):
        seen.append(ev.step)
        return ev.step >= 100

    result = train(HParams(**SMALL), data, steps=500, eval_every=50, on_eval=on_eval)
    assert seen == [50, 100]
    assert result.stopped_early and result.steps == 100


def test_last_step_is_always_evaluated(data):
    result = train(HParams(**SMALL), data, steps=120, eval_every=50)
    assert [s for s, _ in result.dev_curve] == [50, 100, 120]


def test_adamw_dropout_and_depth_train(data):
    hp = HParams(**SMALL, optimizer="adamw", lr=3e-3, hidden_layers=2, dropout=0.1,
                 lr_schedule="cosine", warmup_frac=0.1, weight_decay=0.01)
    result = train(hp, data, steps=300, eval_every=100)
    assert result.best_dev_loss < 2.8


@pytest.mark.parametrize(("lr", "why"), [(1.0e6, "above the divergence limit"),
                                         (float("inf"), "not finite")])
def test_divergence_raises_a_typed_error(data, lr, why):
    hp = HParams(**SMALL, lr=lr)  # built directly: make() would refuse an infinite lr
    with pytest.raises(TrainingDiverged, match=why) as info:
        train(hp, data, steps=200, eval_every=50)
    assert info.value.step == 50


def test_batch_larger_than_training_set(data):
    hp = HParams(**{**SMALL, "batch_size": len(data.train) + 1})
    with pytest.raises(ValueError, match="larger than"):
        train(hp, data, steps=10, eval_every=5)


def test_schedules():
    step = HParams(lr=0.1, lr_schedule="step", lr_step_factor=0.1, lr_step_at=0.5)
    assert [lr_at(step, s, 100) for s in (0, 49, 50, 99)] == pytest.approx([0.1, 0.1, 0.01, 0.01])
    const = HParams(lr=0.3, lr_schedule="constant")
    assert lr_at(const, 0, 10) == lr_at(const, 9, 10) == 0.3
    cos = HParams(lr=1.0, lr_schedule="cosine", warmup_frac=0.1, lr_min_frac=0.1)
    assert lr_at(cos, 0, 100) == pytest.approx(0.1)  # warmup starts low
    assert lr_at(cos, 9, 100) == pytest.approx(1.0)  # and reaches lr
    assert lr_at(cos, 10, 100) == pytest.approx(1.0)
    assert lr_at(cos, 100, 100) == pytest.approx(0.1)  # floor at the end
    values = [lr_at(cos, s, 100) for s in range(10, 100)]
    assert values == sorted(values, reverse=True)


@pytest.mark.parametrize("kind, extra", [
    ("manual", dict(optimizer="adamw", lr=3.0e-3, dropout=0.2, hidden_layers=2,
                    lr_schedule="cosine", warmup_frac=0.1)),
    ("manual", dict(optimizer="sgd", lr=0.1, weight_decay=1.0e-4, lr_schedule="step")),
    ("autograd", dict(optimizer="adamw", lr=3.0e-3, dropout=0.1)),
    ("graphed", dict(optimizer="adamw", lr=3.0e-3, dropout=0.1)),  # eager form on a CPU
    ("manual", dict(optimizer="adamw", lr=3.0e-3, ema_decay=0.99)),  # the average resumes too
])
def test_resumed_run_equals_the_uninterrupted_one(data, tmp_path, kind, extra):
    # 1100 steps, checkpoints every 300: a resume from step 600 lands mid-block of minibatches
    # (blocks of 512), and the state goes through torch.save / torch.load(weights_only=True).
    hp = HParams(**{**SMALL, **extra})
    whole = train(hp, data, steps=1100, eval_every=100, step_kind=kind)
    states: list[int] = []

    def save(state: TrainState) -> None:
        states.append(state.step)
        torch.save(state.to_dict(), tmp_path / f"{state.step}.pt")

    stop_at_700 = lambda ev: ev.step >= 700  # noqa: E731  (the run "dies" after step 700)
    train(hp, data, steps=1100, eval_every=100, step_kind=kind, on_eval=stop_at_700,
          checkpoint_every=300, on_checkpoint=save)
    assert states == [300, 600]
    state = TrainState.from_dict(torch.load(tmp_path / "600.pt", weights_only=True))
    resumed = train(hp, data, steps=1100, eval_every=100, step_kind=kind, resume=state)
    assert resumed.dev_curve == whole.dev_curve and resumed.train_curve == whole.train_curve
    assert (resumed.best_dev_loss, resumed.best_step) == (whole.best_dev_loss, whole.best_step)
    for a, b in zip(resumed.model.parameters(), whole.model.parameters(), strict=True):
        assert torch.equal(a, b)


def test_a_state_of_another_run_is_refused(data):
    states: list[TrainState] = []
    hp = HParams(**SMALL)
    train(hp, data, steps=200, eval_every=50, checkpoint_every=100, on_checkpoint=states.append)
    with pytest.raises(ValueError, match="another run"):
        train(hp, data, steps=400, eval_every=50, resume=states[0])
    with pytest.raises(ValueError, match="another run"):
        train(HParams(**{**SMALL, "seed": 1}), data, steps=200, eval_every=50, resume=states[0])
    with pytest.raises(ValueError, match="multiple of eval_every"):
        train(hp, data, steps=200, eval_every=50, checkpoint_every=75)


def test_weight_average_follows_the_trained_weights_with_a_ramped_decay():
    model = MLP(vocab_size=5, context_length=2, embedding_dim=3, hidden_width=4)
    average = WeightAverage(model, decay=0.9)
    start = [p.detach().clone() for p in average.model.parameters()]
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)
    average.update(1)  # early: decay (1 + 1) / (10 + 1), not 0.9
    for a, s in zip(average.model.parameters(), start, strict=True):
        torch.testing.assert_close(a, s + 1 - 2 / 11)
    average.update(1000)  # late: the decay itself
    for a, s in zip(average.model.parameters(), start, strict=True):
        torch.testing.assert_close(a, s + 1 - 0.9 * 2 / 11)


def test_averaged_weights_are_what_is_evaluated_and_returned(data):
    # A constant rate far above what SGD settles at: the trained weights jitter and their
    # average is better. Training itself is untouched (same minibatch losses).
    noisy = dict(SMALL, lr=1.0, lr_schedule="constant")
    raw = train(HParams(**noisy), data, steps=600, eval_every=200)
    averaged = train(HParams(**noisy, ema_decay=0.98), data, steps=600, eval_every=200)
    assert averaged.train_curve == raw.train_curve
    assert averaged.dev_loss < raw.dev_loss - 0.05  # measured: about 0.1 less
    assert mean_loss(averaged.model, data.dev.X, data.dev.Y) == \
        pytest.approx(averaged.best_dev_loss)
