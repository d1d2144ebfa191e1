"""Count-based reference models on the study's own split: what the MLP has to beat.

- the lecture's bigram ("makemore part 1": counts + 1, normalized);
- interpolated Kneser-Ney character n-grams, orders 2 to 7, the discount tuned on dev.

Each predicts every character and the end of each word from the characters before it, padded
with the boundary token, exactly the examples the MLP is scored on, so the dev losses compare
directly. Counts come from the train split; dev is scored here. The test split is not read
here: the final evaluation hands its words to `test_references` once, beside the final model.
"""

from __future__ import annotations

import functools
import json
import logging
import math
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from harness.config.schema import DataConfig
from harness.training.data import BOUNDARY, Vocab, read_words, split_words
from harness.util import paths

log = logging.getLogger(__name__)

DISCOUNTS = tuple(round(0.05 * i, 2) for i in range(1, 20))  # 0.05 .. 0.95


@dataclass(frozen=True)
class BaselineResult:
    model: str
    order: int
    dev_loss: float
    discount: float | None = None


def examples(words: Iterable[str], order: int) -> list[tuple[str, str]]:
    """(history of order-1 characters, next character) for every position, boundary-padded."""
    pad = BOUNDARY * (order - 1)
    out = []
    for w in words:
        s = pad + w + BOUNDARY
        out += [(s[i - order + 1 : i], s[i]) for i in range(order - 1, len(s))]
    return out


class KneserNey:
    """Interpolated Kneser-Ney with one absolute discount for all orders."""

    def __init__(self, train_words: Sequence[str], order: int, vocab: Vocab) -> None:
        self.order = order
        self.vocab = vocab.itos
        # counts[k][(h, w)]: highest order uses real counts, lower orders continuation counts.
        self.counts: list[Counter] = [Counter() for _ in range(order)]
        grams = examples(train_words, order)
        top = Counter((h, w) for h, w in grams)
        self.counts[order - 1] = top
        for k in range(order - 2, -1, -1):  # history length k
            cont: Counter = Counter()
            for h, w in self.counts[k + 1]:
                cont[h[1:], w] += 1  # distinct left extensions of (h[1:], w)
            self.counts[k] = cont
        self.totals: list[dict[str, int]] = []
        self.types: list[dict[str, int]] = []
        for c in self.counts:
            total: dict[str, int] = defaultdict(int)
            types: dict[str, int] = defaultdict(int)
            for (h, _w), n in c.items():
                total[h] += n
                types[h] += 1
            self.totals.append(total)
            self.types.append(types)

    def distribution(self, history: str, discount: float) -> np.ndarray:
        """P(c | history) for every character c of the vocabulary, in its order (V,): the
        same recursion as `prob`, over the whole vocabulary at once."""
        stoi, rows = self._rows
        p = np.full(len(self.vocab), 1.0 / len(self.vocab))
        for k in range(self.order):
            h = history[len(history) - k :] if k else ""
            total = self.totals[k].get(h, 0)
            if total == 0:
                continue
            c = np.zeros(len(self.vocab))
            for w, n in rows[k].get(h, ()):
                c[stoi[w]] = n
            p = np.maximum(c - discount, 0.0) / total + discount * (self.types[k][h] / total) * p
        return p

    @functools.cached_property
    def _rows(self) -> tuple[dict[str, int], list[dict[str, list[tuple[str, int]]]]]:
        """The vocabulary's indices, and for each order each history's (next character,
        count) pairs."""
        rows: list[dict[str, list[tuple[str, int]]]] = [defaultdict(list) for _ in self.counts]
        for k, counts in enumerate(self.counts):
            for (h, w), n in counts.items():
                rows[k][h].append((w, n))
        return {c: i for i, c in enumerate(self.vocab)}, rows

    def prob(self, history: str, w: str, discount: float) -> float:
        return float(self._probs(history, w, np.array([discount]))[0])

    def _probs(self, history: str, w: str, d: np.ndarray) -> np.ndarray:
        """P(w | history) for each discount in `d`."""
        p = np.full(len(d), 1.0 / len(self.vocab))  # the uniform floor under the unigram
        for k in range(self.order):  # from the empty history up to the full one
            h = history[len(history) - k :] if k else ""
            total = self.totals[k].get(h, 0)
            if total == 0:
                continue  # unseen history: keep the lower-order estimate
            c = self.counts[k].get((h, w), 0)
            p = np.maximum(c - d, 0.0) / total + d * (self.types[k][h] / total) * p
        return p

    def loss(self, words: Sequence[str], discount: float) -> float:
        return float(self.losses(words, (discount,))[0])

    def losses(self, words: Sequence[str], discounts: Sequence[float]) -> np.ndarray:
        """The mean loss on `words` for each discount, in one pass over the examples."""
        d = np.asarray(discounts, dtype=np.float64)
        grams = Counter(examples(words, self.order))  # each distinct (history, w) once
        total_log = sum(n * np.log(self._probs(h, w, d)) for (h, w), n in grams.items())
        return -total_log / sum(grams.values())


def bigram_loss(train_words: Sequence[str], dev_words: Sequence[str], vocab: Vocab) -> float:
    """The lecture's count model: bigram counts + 1, normalized per row."""
    counts = Counter(examples(train_words, 2))
    row: Counter = Counter()
    for (h, _w), n in counts.items():
        row[h] += n
    V = len(vocab)
    grams = examples(dev_words, 2)
    return -sum(math.log((counts[h, w] + 1) / (row[h] + V)) for h, w in grams) / len(grams)


def baselines(cfg: DataConfig, orders: Sequence[int] = range(2, 8)) -> list[BaselineResult]:
    """Dev losses of the bigram and of Kneser-Ney n-grams, each with its best discount on dev."""
    words = read_words(cfg.path)
    train, dev, _test = split_words(words, cfg)
    vocab = Vocab.from_words(words)
    results = [BaselineResult("bigram (counts + 1)", 2, bigram_loss(train, dev, vocab))]
    for order in orders:
        kn = KneserNey(train, order, vocab)
        loss, d = min(zip(kn.losses(dev, DISCOUNTS).tolist(), DISCOUNTS, strict=True))
        results.append(BaselineResult(f"Kneser-Ney {order}-gram", order, loss, d))
    return results


@dataclass(frozen=True)
class Reference:
    """A count-based model scored on test beside the final model (chosen on dev)."""

    model: str
    dev_loss: float
    test_loss: float
    discount: float | None = None


def test_references(cfg: DataConfig, test_words: Sequence[str],
                    dev_results: Sequence[BaselineResult]) -> list[Reference]:
    """The lecture's bigram and the Kneser-Ney order best on dev (with its dev discount),
    scored on `test_words`: the final evaluation's one read of the test split."""
    words = read_words(cfg.path)
    train, _dev, _test = split_words(words, cfg)
    vocab = Vocab.from_words(words)
    bigram = next(r for r in dev_results if r.discount is None)
    kn = min((r for r in dev_results if r.discount is not None), key=lambda r: r.dev_loss)
    assert kn.discount is not None
    return [Reference(bigram.model, bigram.dev_loss, bigram_loss(train, test_words, vocab)),
            Reference(kn.model, kn.dev_loss,
                      KneserNey(train, kn.order, vocab).loss(test_words, kn.discount),
                      kn.discount)]


def save(results: Sequence[BaselineResult], path: Path) -> None:
    """Write the results as JSON, whole (`paths.replace_whole`: two processes saving at once
    each write their own partial file)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    text = json.dumps([asdict(r) for r in results], indent=2) + "\n"
    paths.replace_whole(path, lambda partial: partial.write_text(text, encoding="utf-8"))


def cached(cfg: DataConfig, path: Path) -> list[BaselineResult]:
    """The results saved at `path`, else computed (seconds) and saved there."""
    if path.exists():
        try:
            return [BaselineResult(**r) for r in json.loads(path.read_text(encoding="utf-8"))]
        except (ValueError, TypeError):
            log.warning("ignoring the unreadable baselines file %s; computing them again", path)
    results = baselines(cfg)
    save(results, path)
    return results
