from __future__ import annotations

import math

import torch

from harness.hparams import HParams
from harness.model import MLP, Dropout, dropout_mask, mean_loss, n_params, sample


def test_lecture_model_has_11897_parameters():
    model = MLP.from_hparams(HParams(context_length=3, embedding_dim=10, hidden_width=200), 27)
    assert n_params(model) == 11_897


def test_deeper_model_shapes_and_dropout():
    model = MLP(vocab_size=27, context_length=5, embedding_dim=4, hidden_width=16,
                hidden_layers=3, dropout=0.2)
    linears = [m for m in model.hidden if isinstance(m, torch.nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linears] == [(20, 16), (16, 16), (16, 16)]
    assert sum(isinstance(m, Dropout) for m in model.hidden) == 3
    assert model(torch.zeros(7, 5, dtype=torch.long)).shape == (7, 27)


def test_dropout_drops_p_and_rescales_the_rest_in_training_only():
    torch.manual_seed(0)
    x = torch.ones(400, 500)
    mask = dropout_mask(x, 0.3)
    assert abs((mask == 0).float().mean().item() - 0.3) < 0.01
    assert torch.allclose(mask[mask != 0], torch.tensor(1 / 0.7))
    assert mask.dtype == x.dtype
    # Any shape (an element count that is not a multiple of the four per draw), no pattern
    # between the four 16-bit lanes of a draw: each drops its share.
    odd = dropout_mask(torch.ones(1001, 403), 0.25)
    assert odd.shape == (1001, 403)
    lanes = (odd.reshape(-1)[: 1001 * 403 // 4 * 4].view(-1, 4) == 0).float().mean(0)
    assert torch.all((lanes - 0.25).abs() < 0.005), lanes
    layer = Dropout(0.3)
    assert abs(layer(x).mean().item() - 1.0) < 0.01  # the expectation is kept
    layer.eval()
    assert torch.equal(layer(x), x)


def test_initial_loss_is_near_uniform():
    # The small output layer makes the first predictions near uniform: loss ~ log(27).
    torch.manual_seed(0)
    model = MLP(27, 3, 10, 200)
    X = torch.randint(0, 27, (2000, 3))
    Y = torch.randint(0, 27, (2000,))
    assert abs(mean_loss(model, X, Y) - math.log(27)) < 0.05


def test_sample_stops_at_boundary_and_is_seeded():
    torch.manual_seed(0)
    model = MLP(27, 3, 10, 50)
    a = sample(model, 20, generator=torch.Generator().manual_seed(1), max_length=12)
    b = sample(model, 20, generator=torch.Generator().manual_seed(1), max_length=12)
    assert a == b and len(a) == 20
    assert all(0 not in s and len(s) <= 12 for s in a)
