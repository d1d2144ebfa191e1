"""Choosing the final model, before the test split is read.

`choose`: the candidate with the lowest *mean* dev loss over the fresh seeds, so one lucky seed
cannot win; its final model is its best seed's. Then each final rule the study enables
(harness.final.rules: the ensemble, fill) may reshape that choice: a `FinalRule` takes the
choice and returns a new one, names the models whose test loss the one evaluation should read
besides the seeds', and, once they are read, writes its `Section` of the result.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

import optuna

from harness.config import StudySpec
from harness.final.candidates import Candidate
from harness.final.events import FinalizeObserver
from harness.final.result import Section
from harness.training.data import Examples
from harness.training.model import LanguageModel, mean_loss


@dataclass(frozen=True)
class Context:
    """What a final rule may use: the study, the seeds retrained, the retrainings' pace, and
    where it may train more."""

    spec: StudySpec
    study: optuna.Study
    seeds: tuple[int, ...]
    step_s: float  # seconds per retraining step, all told (processes, evaluations)
    device: str
    workers: int
    observer: FinalizeObserver | None = None


@dataclass(frozen=True)
class Choice:
    """The chosen candidate and the model to save: its best seed's, or what the rules made."""

    candidate: Candidate
    best_seed: int  # index into the candidate's seeds: the seed with the lowest dev loss
    model: LanguageModel
    # Models whose test loss the evaluation reads besides the seeds', by name, and their dev
    # losses (the last a rule made is the saved model).
    tested: Mapping[str, LanguageModel] = field(default_factory=dict)
    dev_losses: Mapping[str, float] = field(default_factory=dict)
    notes: Mapping[str, Any] = field(default_factory=dict)  # what each rule did, by its name

    def with_(self, **changes: Any) -> Choice:
        """A copy with `changes`; `tested`, `dev_losses` and `notes` are merged, not
        replaced."""
        for merged in ("tested", "dev_losses", "notes"):
            changes[merged] = {**getattr(self, merged), **changes.get(merged, {})}
        return dataclasses.replace(self, **changes)


class FinalRule(Protocol):
    """One way of shaping the final model (finalize.ensemble, finalize.fill)."""

    name: str

    def applies(self, spec: StudySpec) -> bool:
        """Whether the study enables this rule."""
        ...

    def apply(self, ctx: Context, choice: Choice) -> Choice:
        """The choice, reshaped (before the test split is read)."""
        ...

    def section(self, choice: Choice, test_losses: Mapping[str, float]) -> Section | None:
        """The rule's section of the result, from the test losses of its models."""
        ...


def choose(pool: list[Candidate]) -> Choice:
    """The candidate with the lowest mean dev loss; its best seed's model."""
    chosen = min(pool, key=lambda c: c.dev_mean)
    best = min(range(len(chosen.retrained)), key=lambda j: chosen.dev_losses[j])
    return Choice(chosen, best, chosen.models[best])


def loss(model: LanguageModel, examples: Examples) -> float:
    """`model`'s mean loss on `examples`, moved to the model's device (a GPU's, in finalize
    on one)."""
    device = next(model.parameters()).device
    return mean_loss(model, examples.X.to(device), examples.Y.to(device))
