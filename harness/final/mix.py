"""finalize.mix_ngram: the final model mixes the network (or the ensemble) with the
Kneser-Ney n-gram that is best on dev, `weight * network + (1 - weight) * n-gram`.

Counts and networks err differently: the n-gram remembers rare long contexts exactly, the
network generalizes across similar ones. On data where the network alone barely reaches the
n-gram (many characters, few words), their mixture beats both. The weight is chosen on dev
(a grid of 0.01; 1.0 when the n-gram does not help), before the test split is read; the one
evaluation then scores the mixture beside the network alone. The saved model is a
`harness.training.model.Mixed`: it samples, completes and serves like any other.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import torch
from torch.nn import functional as F

from harness.config import StudySpec
from harness.final.choose import Choice, Context
from harness.final.result import FinalResult, Line, Metric, Row, Section
from harness.training import baseline
from harness.training.baseline import BaselineResult
from harness.training.data import Examples, load_search_data, read_words, split_words
from harness.training.model import Mixed, neural_part
from harness.util import paths

log = logging.getLogger(__name__)

WEIGHTS = np.linspace(0.0, 1.0, 101)  # the network's weights tried on dev


@dataclass(frozen=True)
class MixSection(Section):
    """The n-gram mixed in (order, discount), the network's weight, and the mixture's dev and
    test loss; the record nests them under `mix_ngram`."""

    KEY: ClassVar[str] = "mix_ngram"
    ORDER: ClassVar[int] = 30
    FIELDS: ClassVar[Mapping[str, Any]] = {"mix_ngram": None}
    WRAPS: ClassVar[bool] = True

    order: int
    discount: float
    weight: float  # the network's; the n-gram's is 1 - weight
    dev_loss: float
    test_loss: float

    def to_record(self) -> dict[str, Any]:
        return {"mix_ngram": {"order": self.order, "discount": self.discount,
                              "weight": self.weight, "dev_loss": self.dev_loss,
                              "test_loss": self.test_loss}}

    @classmethod
    def from_record(cls, d: Mapping[str, Any]) -> MixSection | None:
        mix = d.get("mix_ngram")
        return cls(**mix) if isinstance(mix, dict) else None

    def _what(self) -> str:
        return f"Kneser-Ney {self.order}-gram, weight {1 - self.weight:.2f}"

    def lines(self, r: FinalResult) -> list[Line]:
        return [("mixed", f"dev {self.dev_loss:.4f}, test {self.test_loss:.4f} (the saved "
                          f"model: the above mixed with the {self._what()}, chosen on dev)")]

    def table_rows(self, r: FinalResult) -> list[Row]:
        return [(f"MLP mixed with the {self._what()} (the saved model)", self.dev_loss,
                 self.test_loss)]

    def status_words(self, r: FinalResult) -> str:
        return f", mixed with a {self.order}-gram {self.test_loss:.4f}"

    def metrics(self) -> list[Metric]:
        return [("mix_ngram_dev_loss", self.dev_loss, None),
                ("mix_ngram_test_loss", self.test_loss, None),
                ("mix_ngram_weight", self.weight, None)]

    def registry_tags(self) -> dict[str, str]:
        return {"mix_ngram_test_loss": f"{self.test_loss:.6f}"}


class MixRule:
    """The FinalRule of finalize.mix_ngram (the last: it mixes whatever the others made)."""

    name = MixSection.KEY

    def applies(self, spec: StudySpec) -> bool:
        return spec.finalize.mix_ngram

    def apply(self, ctx: Context, choice: Choice) -> Choice:
        spec, hp = ctx.spec, choice.candidate.hparams
        ngram = best_order(baseline.cached(spec.data, paths.study_dir(spec.name)
                                           / "baselines.json"), hp.context_length)
        assert ngram.discount is not None
        data = load_search_data(spec.data, hp.context_length)
        train, _dev, _test = split_words(read_words(spec.data.path), spec.data)
        mixed = Mixed(neural_part(choice.model), data.vocab.itos, train, ngram.order,
                      ngram.discount, 1.0)
        mixed.weight, dev_loss = choose_weight(mixed, data.dev)
        log.info("finalize.mix_ngram: the %d-gram (discount %.2f) at weight %.2f: dev %.4f",
                 ngram.order, ngram.discount, 1 - mixed.weight, dev_loss)
        return choice.with_(model=mixed, tested={"mixture": mixed},
                            dev_losses={"mixture": dev_loss}, notes={self.name: ngram})

    def section(self, choice: Choice, test_losses: Mapping[str, float]) -> MixSection:
        ngram: BaselineResult = choice.notes[self.name]
        assert isinstance(choice.model, Mixed) and ngram.discount is not None
        return MixSection(ngram.order, ngram.discount, choice.model.weight,
                          choice.dev_losses["mixture"], test_losses["mixture"])


def best_order(results: list[BaselineResult], context_length: int) -> BaselineResult:
    """The Kneser-Ney order best on dev among those whose history fits the context."""
    fitting = [r for r in results if r.discount is not None and r.order <= context_length + 1]
    return min(fitting, key=lambda r: r.dev_loss)


@torch.no_grad()
def choose_weight(mixed: Mixed, dev: Examples, chunk: int = 65536) -> tuple[float, float]:
    """The network's weight in WEIGHTS with the lowest dev loss of the mixture, and that
    loss."""
    mixed.eval()
    device = next(mixed.parameters()).device
    p_net, p_ngram = [], []
    for i in range(0, len(dev), chunk):
        X, Y = dev.X[i:i + chunk].to(device), dev.Y[i:i + chunk].to(device)
        probs = F.softmax(mixed.neural(X).float(), dim=-1)  # (B, V)
        p_net.append(probs.gather(1, Y[:, None]).squeeze(1).double().cpu().numpy())
        p_ngram.append(mixed.ngram_probs(X).gather(1, Y[:, None]).squeeze(1).cpu().numpy())
    net, ngram = np.concatenate(p_net)[None, :], np.concatenate(p_ngram)[None, :]
    w = WEIGHTS[:, None]
    losses = -np.log(w * net + (1 - w) * ngram).mean(axis=1)  # (len(WEIGHTS),)
    best = int(np.argmin(losses))
    return float(WEIGHTS[best]), float(losses[best])
