"""Count-based reference models: proper distributions, scored on the MLP's own examples."""

from __future__ import annotations

import math
import random

import pytest

from harness.config import DataConfig
from harness.training.baseline import KneserNey, baselines, bigram_loss, examples
from harness.training.data import Vocab, read_words, split_words


@pytest.fixture(scope="module")
def split():
    words = read_words()
    train, dev, _ = split_words(words, DataConfig())
    return train, dev, Vocab.from_words(words)


def test_examples_are_the_mlps_examples():
    # Every character and the end of the word, each with its boundary-padded history.
    assert examples(["ab"], 3) == [("..", "a"), (".a", "b"), ("ab", ".")]


@pytest.mark.parametrize("order", [2, 4, 6])
def test_kneser_ney_is_a_distribution(split, order):
    train, _dev, vocab = split
    kn = KneserNey(train, order, vocab)
    rng = random.Random(0)
    k = order - 1
    histories = ["." * k, "ann"[-k:].rjust(k, "."), "z" * k,  # start, seen, and unseen
                 *("".join(rng.choice(vocab.itos) for _ in range(k)) for _ in range(5))]
    for h in histories:
        total = sum(kn.prob(h, w, 0.7) for w in vocab.itos)
        assert total == pytest.approx(1.0, abs=1e-9), h


def test_higher_orders_beat_the_bigram_on_dev(split):
    train, dev, vocab = split
    bigram = bigram_loss(train, dev, vocab)
    assert bigram == pytest.approx(2.45, abs=0.03)  # the lecture's count model: about 2.45
    kn3 = KneserNey(train, 3, vocab).loss(dev, 0.75)
    assert kn3 < bigram - 0.1
    assert math.isfinite(kn3)


def test_baselines_tune_the_discount_on_dev():
    results = baselines(DataConfig(), orders=[3])
    assert [r.model for r in results] == ["bigram (counts + 1)", "Kneser-Ney 3-gram"]
    assert 0 < results[1].discount < 1
