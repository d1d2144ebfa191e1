"""The fast step computes the same function as the autograd reference."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from harness.config import DataConfig
from harness.config.hparams import HParams
from harness.training.data import load_search_data
from harness.training.train import train

CONFIGS = {
    "lecture sgd": HParams(),
    "sgd, weight decay, 2 layers, dropout": HParams(
        embedding_dim=6, hidden_width=64, hidden_layers=2, dropout=0.2, weight_decay=1e-3),
    "adamw, cosine, context 5": HParams(
        context_length=5, embedding_dim=8, hidden_width=48, optimizer="adamw", lr=3e-3,
        lr_schedule="cosine", warmup_frac=0.1, weight_decay=0.01, batch_size=64),
    "adamw, 3 layers, dropout": HParams(
        hidden_width=32, hidden_layers=3, dropout=0.1, optimizer="adamw", lr=1e-3),
}


@pytest.mark.parametrize("hp", CONFIGS.values(), ids=CONFIGS.keys())
def test_manual_step_matches_autograd(hp: HParams):
    data = load_search_data(DataConfig(), hp.context_length)
    fast = train(hp, data, steps=300, eval_every=50, step_kind="manual")
    ref = train(hp, data, steps=300, eval_every=50, step_kind="autograd")
    for (s1, a), (s2, b) in zip(fast.dev_curve, ref.dev_curve, strict=True):
        assert s1 == s2 and a == pytest.approx(b, rel=1e-4)
    for (_, a), (_, b) in zip(fast.train_curve, ref.train_curve, strict=True):
        assert a == pytest.approx(b, rel=1e-4)
    # And the training did something: this is not two copies of an idle model.
    assert fast.dev_curve[-1][1] < fast.dev_curve[0][1]


@pytest.mark.parametrize("name", ["sgd, weight decay, 2 layers, dropout",
                                  "adamw, 3 layers, dropout"])
def test_bf16_products_train_like_fp32(name: str):
    """precision bf16 rounds the products' inputs to 8 bits of mantissa: the run differs
    from fp32's (bf16 is really used), but learns the same (the losses agree to 1%), and the
    hand-written bf16 step agrees with autograd under autocast."""
    hp = dataclasses.replace(CONFIGS[name], precision="bf16")
    data = load_search_data(DataConfig(), hp.context_length)
    bf16 = train(hp, data, steps=300, eval_every=50, step_kind="manual")
    fp32 = train(CONFIGS[name], data, steps=300, eval_every=50, step_kind="manual")
    ref = train(hp, data, steps=300, eval_every=50, step_kind="autograd")
    assert bf16.dev_curve != fp32.dev_curve
    for (_, a), (_, b), (_, c) in zip(bf16.dev_curve, fp32.dev_curve, ref.dev_curve,
                                      strict=True):
        assert a == pytest.approx(b, rel=1e-2) and a == pytest.approx(c, rel=1e-2)
    assert bf16.dev_curve[-1][1] < bf16.dev_curve[0][1]
    # The model keeps fp32 weights: only the products are rounded.
    assert all(p.dtype == torch.float32 for p in bf16.model.parameters())


@pytest.mark.parametrize("name", ["sgd, weight decay, 2 layers, dropout",
                                  "adamw, cosine, context 5"])
def test_graphed_step_logic_matches_manual_on_cpu(name: str):
    """The graphed step's CPU form: static input buffers and a learning rate read from a
    device tensor (what a CUDA graph replays) give the manual step's losses."""
    hp = CONFIGS[name]
    data = load_search_data(DataConfig(), hp.context_length)
    graphed = train(hp, data, steps=300, eval_every=50, step_kind="graphed")
    manual = train(hp, data, steps=300, eval_every=50, step_kind="manual")
    for (s1, a), (s2, b) in zip(graphed.dev_curve, manual.dev_curve, strict=True):
        assert s1 == s2 and a == pytest.approx(b, rel=1e-5)
    assert graphed.dev_curve[-1][1] < graphed.dev_curve[0][1]


@pytest.mark.cuda
def test_cuda_graph_step_matches_manual():
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device: the graph capture itself runs only on a GPU")
    for name in ("sgd, weight decay, 2 layers, dropout", "adamw, cosine, context 5"):
        hp = CONFIGS[name]
        data = load_search_data(DataConfig(), hp.context_length)
        graphed = train(hp, data, steps=300, eval_every=50, device="cuda", step_kind="graphed")
        manual = train(hp, data, steps=300, eval_every=50, device="cuda", step_kind="manual")
        assert graphed.dev_curve[-1][1] < graphed.dev_curve[0][1]
        # Without dropout the same arithmetic; with it, masks from the graph's RNG offsets.
        rel = 1e-4 if hp.dropout == 0 else 2e-2
        for (_, a), (_, b) in zip(graphed.dev_curve, manual.dev_curve, strict=True):
            assert a == pytest.approx(b, rel=rel)


def test_no_host_sync_per_step(monkeypatch):
    """The loop reads the loss only at evaluations: on a GPU, no step waits for the host.

    Checked on CPU by counting the calls that copy a tensor's value to Python."""
    import torch

    data = load_search_data(DataConfig(), 3)
    reads = []
    real_item = torch.Tensor.item

    def counting_item(self):
        reads.append(1)
        return real_item(self)

    monkeypatch.setattr(torch.Tensor, "item", counting_item)
    for kind in ("manual", "autograd", "graphed"):
        reads.clear()
        train(HParams(hidden_width=32), data, steps=600, eval_every=200, step_kind=kind)
        assert len(reads) == 2 * 3  # per evaluation: the train loss and the dev loss


def test_bf16_on_a_cpu_without_native_bf16_warns(monkeypatch, caplog):
    from harness.training import steps
    from harness.training.model import MLP

    monkeypatch.setattr(steps, "cpu_has_fast_bf16", lambda: False)
    steps._warn_once.cache_clear()
    for precision in ("fp32", "bf16"):
        hp = dataclasses.replace(HParams(), precision=precision)
        steps.make_step("manual", MLP.from_hparams(hp, 27), hp)
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert len(warnings) == 1 and "consider precision: fp32" in warnings[0]


GRAD_CONFIG = HParams(embedding_dim=6, hidden_width=48, hidden_layers=2, batch_size=64)
GRAD_LR = 1000.0  # SGD at this rate: each parameter moves by -1000 x its gradient


def one_step_gradients(kind: str, hp: HParams) -> dict[str, torch.Tensor]:
    """Each parameter's gradient on one fixed batch, read off one plain SGD step."""
    from harness.training.model import MLP
    from harness.training.steps import make_step

    data = load_search_data(DataConfig(), hp.context_length)
    torch.manual_seed(0)
    model = MLP.from_hparams(hp, len(data.vocab))
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    batch = torch.arange(hp.batch_size) * 997 % len(data.train)
    make_step(kind, model, hp)(data.train.X[batch], data.train.Y[batch], GRAD_LR)
    return {n: (before[n] - p.detach()) / GRAD_LR for n, p in model.named_parameters()}


@pytest.mark.parametrize(("precision", "tolerance"), [("fp32", 1e-4), ("bf16", 0.03)])
def test_hand_written_gradients_match_autograd_parameter_by_parameter(precision, tolerance):
    """The hand-written backward against autograd (under autocast for bf16) on one batch: per
    parameter, the relative error of the gradient. A dropped bias gradient, an embedding left
    alone or an output gradient scaled by 0.8 is far outside the tolerance."""
    hp = dataclasses.replace(GRAD_CONFIG, precision=precision)
    manual = one_step_gradients("manual", hp)
    ref = one_step_gradients("autograd", hp)
    assert manual.keys() == ref.keys()
    assert len(ref) == 2 + 2 * 2 + 1  # embedding, 2 hidden layers and the output, with biases
    for name, g in ref.items():
        assert g.norm() > 0, name
        error = ((manual[name] - g).norm() / g.norm()).item()
        assert error < tolerance, f"{name}: relative error {error:.2e}"
