from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from harness.config.hparams import HParams
from harness.errors import ModelFileError
from harness.training import baseline
from harness.training.data import Vocab
from harness.training.model import (
    MLP,
    Dropout,
    Ensemble,
    Mixed,
    dropout_mask,
    load_model,
    mean_loss,
    n_params,
    sample,
    sample_words,
    save_model,
)


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


def _members(n: int) -> list[MLP]:
    out = []
    for seed in range(n):
        torch.manual_seed(seed)
        member = MLP(vocab_size=27, context_length=3, embedding_dim=4, hidden_width=16)
        with torch.no_grad():  # away from the near-uniform start, so members disagree
            member.output.weight.normal_(std=0.5)
        out.append(member.eval())
    return out


def test_an_ensemble_predicts_the_mean_of_its_members_distributions():
    members = _members(3)
    ensemble = Ensemble(members)
    X = torch.randint(0, 27, (64, 3))
    Y = torch.randint(0, 27, (64,))
    with torch.no_grad():
        mean_probs = torch.stack([m(X).softmax(-1) for m in members]).mean(0)
        torch.testing.assert_close(ensemble(X).softmax(-1), mean_probs)
        torch.testing.assert_close(Ensemble(members[:1])(X), members[0](X).log_softmax(-1))
    # Its loss is the mean distribution's, at most the members' mean loss (Jensen).
    losses = [mean_loss(m, X, Y) for m in members]
    expected = -mean_probs[torch.arange(64), Y].log().mean().item()
    assert mean_loss(ensemble, X, Y) == pytest.approx(expected, rel=1e-5)
    assert mean_loss(ensemble, X, Y) < sum(losses) / 3


def test_models_and_ensembles_save_and_load_as_they_were(tmp_path):
    members = _members(2)
    hp = HParams(embedding_dim=4, hidden_width=16)
    itos = [".", *"abcdefghijklmnopqrstuvwxyz"]
    X = torch.randint(0, 27, (8, 3))
    save_model(tmp_path / "one.pt", members[0], hp, itos)
    save_model(tmp_path / "two.pt", Ensemble(members), hp, itos)
    one, hp_back, itos_back = load_model(tmp_path / "one.pt")
    two, _, _ = load_model(tmp_path / "two.pt")
    assert isinstance(one, MLP) and isinstance(two, Ensemble) and len(two.members) == 2
    assert hp_back == hp and list(itos_back) == itos
    with torch.no_grad():
        torch.testing.assert_close(one(X), members[0](X))
        torch.testing.assert_close(two(X), Ensemble(members)(X))
    # A file of the first format (one MLP's "state_dict") still loads.
    torch.save({"format": 1, "hparams": hp.to_dict(), "itos": itos,
                "state_dict": members[1].state_dict()}, tmp_path / "old.pt")
    old, _, _ = load_model(tmp_path / "old.pt")
    with torch.no_grad():
        torch.testing.assert_close(old(X), members[1](X))


def test_a_save_killed_mid_write_leaves_the_previous_model_file(tmp_path, monkeypatch):
    members = _members(2)
    hp = HParams(embedding_dim=4, hidden_width=16)
    itos = [".", *"abcdefghijklmnopqrstuvwxyz"]
    path = tmp_path / "model.pt"
    save_model(path, members[0], hp, itos)
    real_save = torch.save

    def killed(payload, f):  # writes part of the file, then the process "dies"
        real_save(payload, f)
        with open(f, "r+b") as out:
            out.truncate(100)
        raise KeyboardInterrupt

    monkeypatch.setattr(torch, "save", killed)
    with pytest.raises(KeyboardInterrupt):
        save_model(path, Ensemble(members), hp, itos)
    model, _, _ = load_model(path)
    X = torch.randint(0, 27, (8, 3))
    with torch.no_grad():
        torch.testing.assert_close(model(X), members[0](X))
    assert [p.name for p in tmp_path.iterdir()] == ["model.pt"]


WORDS = ["emma", "olivia", "ava", "isabella", "sophia", "mia", "amelia", "ella", "emily"]
LETTERS = [".", *sorted(set("".join(WORDS)))]


def _mixed_parts() -> tuple[MLP, list[str]]:
    torch.manual_seed(0)
    net = MLP(vocab_size=len(LETTERS), context_length=3, embedding_dim=4, hidden_width=16)
    with torch.no_grad():
        net.output.weight.normal_(std=0.5)
    return net.eval(), LETTERS


def test_the_ngrams_whole_distribution_is_its_probabilities_and_sums_to_one():
    kn = baseline.KneserNey(WORDS, 3, Vocab(tuple(LETTERS)))
    for history in ["..", ".e", "mm", "la", "ox"]:  # "ox": a history never seen
        dist = kn.distribution(history, 0.6)
        assert dist.sum() == pytest.approx(1.0)
        assert dist.tolist() == pytest.approx([kn.prob(history, c, 0.6) for c in LETTERS])


def test_a_mixed_model_predicts_the_weighted_mixture_of_network_and_ngram():
    net, itos = _mixed_parts()
    mixed = Mixed(net, itos, WORDS, 3, 0.6, 0.3)
    X = torch.randint(0, len(itos), (32, 3))
    rows = ["".join(itos[j] for j in row[1:]) for row in X.tolist()]  # the last 2 characters
    ngram = torch.tensor(np.array([mixed.ngram.distribution(h, 0.6) for h in rows]),
                         dtype=torch.float32)
    with torch.no_grad():
        expected = 0.3 * net(X).softmax(-1) + 0.7 * ngram
        torch.testing.assert_close(mixed(X).softmax(-1), expected)
        torch.testing.assert_close(Mixed(net, itos, WORDS, 3, 0.6, 1.0)(X),
                                   net(X).log_softmax(-1))
        torch.testing.assert_close(Mixed(net, itos, WORDS, 3, 0.6, 0.0)(X), ngram.log())
    assert len(sample_words(mixed, itos, 5, seed=0)) == 5
    with pytest.raises(ValueError, match="order 5 needs a context of 4"):
        Mixed(net, itos, WORDS, 5, 0.6, 0.3)
    with pytest.raises(ValueError, match="not the network's"):
        Mixed(net, itos, [*WORDS, "zoe"], 3, 0.6, 0.3)


def test_a_mixed_model_saves_its_ngram_and_loads_as_it_was(tmp_path):
    net, itos = _mixed_parts()
    hp = HParams(embedding_dim=4, hidden_width=16)
    for neural in (net, Ensemble([net, _members_of(itos)])):
        mixed = Mixed(neural, itos, WORDS, 3, 0.6, 0.4)
        save_model(tmp_path / "mixed.pt", mixed, hp, itos)
        back, _, _ = load_model(tmp_path / "mixed.pt")
        assert isinstance(back, Mixed) and type(back.neural) is type(neural)
        assert (back.words, back.order, back.discount, back.weight) == (tuple(WORDS), 3, 0.6, 0.4)
        X = torch.randint(0, len(itos), (16, 3))
        with torch.no_grad():
            torch.testing.assert_close(back(X), mixed(X))


@pytest.mark.parametrize(("ngram", "why"), [
    ({"words": WORDS, "order": 6, "discount": 0.6, "weight": 0.4}, "does not fit its network"),
    ({"words": [*WORDS, "zoe"], "order": 3, "discount": 0.6, "weight": 0.4}, "does not fit"),
    ({"words": WORDS, "order": 3, "discount": 0.6, "weight": 1.5}, "does not fit"),
    ({"words": WORDS, "order": 3, "discount": 0.6, "weight": "0.4"}, "is not words, an order"),
    ({"words": "emma", "order": 3, "discount": 0.6, "weight": 0.4}, "is not words, an order"),
    ([1, 2], "is not words, an order"),
])
def test_a_model_file_whose_ngram_cannot_work_is_refused(tmp_path, ngram, why):
    net, itos = _mixed_parts()
    hp = HParams(embedding_dim=4, hidden_width=16)
    save_model(tmp_path / "m.pt", Mixed(net, itos, WORDS, 3, 0.6, 0.4), hp, itos)
    payload = torch.load(tmp_path / "m.pt", weights_only=True)
    torch.save({**payload, "ngram": ngram}, tmp_path / "m.pt")
    with pytest.raises(ModelFileError, match=why):
        load_model(tmp_path / "m.pt")


def _members_of(itos: list[str]) -> MLP:
    torch.manual_seed(1)
    return MLP(vocab_size=len(itos), context_length=3, embedding_dim=4, hidden_width=16).eval()
