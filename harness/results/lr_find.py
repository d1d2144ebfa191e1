"""The learning-rate finder ("makemore part 2"): one short run whose learning rate grows
exponentially, the loss read along the way, to set the `lr` bounds of a search."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from harness.config.hparams import HParams
from harness.errors import TrainingDiverged
from harness.training.data import SearchData
from harness.training.train import Evaluation, train


@dataclass(frozen=True)
class LRFindResult:
    exponents: list[float]  # log10(lr) at the end of each reading
    losses: list[float]  # mean minibatch loss over the steps of each reading
    suggested: tuple[float, float]  # an lr range for a search: a decade below the best lr
    diverged_at: float | None  # the lr at which training diverged, if it did


def lr_find(hp: HParams, data: SearchData, *, steps: int = 1000, low: float = 1e-3,
            high: float = 1.0, readings: int = 100) -> LRFindResult:
    """Sweep lr from `low` to `high` (exponentially) over `steps` steps of the same `train`.

    The suggestion spans the decade below the learning rate with the lowest loss: the loss is
    still falling fast there, and training has not yet turned unstable.
    """
    exps = np.linspace(math.log10(low), math.log10(high), steps)
    points: list[tuple[float, float]] = []

    def on_eval(ev: Evaluation) -> None:
        points.append((math.log10(ev.lr), ev.train_loss))

    diverged = None
    try:
        train(hp, data, steps=steps, eval_every=max(1, steps // readings), on_eval=on_eval,
              lr_fn=lambda step: float(10 ** exps[step]))
    except TrainingDiverged as exc:  # expected near the top of the sweep
        diverged = float(10 ** exps[min(exc.step, steps) - 1])
    if not points:
        raise ValueError(f"training diverged before the first reading (lr {low} is too high)")
    best_exp = min(points, key=lambda p: p[1])[0]
    return LRFindResult([p[0] for p in points], [p[1] for p in points],
                        (10 ** (best_exp - 1), 10**best_exp), diverged)
