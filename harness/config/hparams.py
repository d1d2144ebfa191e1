"""The hyperparameters of one training run: their names, defaults and allowed values.

This module is the single source of defaults. The defaults are the lecture's hand-tuned config
("makemore part 2"): context 3, embedding 10, one tanh layer of 200, batch 32, SGD at 0.1
dropped to 0.01 halfway. Study files name these fields in `fixed:` and `search:`; the study
spec checks every value it is given with `check_value` before anything runs.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

OPTIMIZERS = ("sgd", "adamw")
LR_SCHEDULES = ("constant", "step", "cosine")
PRECISIONS = ("fp32", "bf16")
# A study's (or `harness train`'s) `fixed.precision` may also be "auto": the faster of the two
# on this machine, measured (harness.training.precision) before any training. A run's HParams always
# hold the precision it trained in.
AUTO_PRECISION = "auto"
MAX_SEED = 2**63 - 1  # torch's generators take seeds in 0..2^64-1; 64-bit signed everywhere


@dataclass(frozen=True)
class HParams:
    """Everything that decides what one training run computes (besides the data and budget)."""

    context_length: int = 3  # characters of context the model sees
    embedding_dim: int = 10  # size of each character's embedding vector
    hidden_width: int = 200  # units in each tanh hidden layer
    hidden_layers: int = 1  # number of tanh hidden layers
    dropout: float = 0.0  # dropout probability after each hidden layer
    batch_size: int = 32  # examples per optimizer step
    optimizer: str = "sgd"  # one of OPTIMIZERS
    lr: float = 0.1  # peak learning rate
    lr_schedule: str = "step"  # one of LR_SCHEDULES
    lr_step_factor: float = 0.1  # step schedule: lr is multiplied by this ...
    lr_step_at: float = 0.5  # ... from this fraction of the steps on
    warmup_frac: float = 0.0  # cosine schedule: fraction of steps of linear warmup
    lr_min_frac: float = 0.0  # cosine schedule: final lr as a fraction of lr
    weight_decay: float = 0.0  # L2 (sgd) or decoupled (adamw) weight decay
    ema_decay: float = 0.0  # > 0: evaluate and keep a moving average of the weights (per step)
    precision: str = "fp32"  # training's matrix products: fp32, or bf16 (fp32 weights kept)
    seed: int = 0  # seeds initialization and batch order

    def to_dict(self) -> dict[str, Any]:
        """The hyperparameters as a plain dict, in declaration order."""
        return dataclasses.asdict(self)


NAMES: tuple[str, ...] = tuple(f.name for f in dataclasses.fields(HParams))

# Hyperparameters that matter under one value of another only: the schedules' own.
APPLIES_UNDER: Mapping[str, tuple[str, Any]] = {
    "lr_step_factor": ("lr_schedule", "step"), "lr_step_at": ("lr_schedule", "step"),
    "warmup_frac": ("lr_schedule", "cosine"), "lr_min_frac": ("lr_schedule", "cosine")}


def applies(name: str, config: Mapping[str, Any]) -> bool:
    """Whether hyperparameter `name` has any effect in `config` (a full set of values)."""
    if name not in APPLIES_UNDER:
        return True
    under, value = APPLIES_UNDER[name]
    return config.get(under) == value
DEFAULTS: Mapping[str, Any] = {f.name: f.default for f in dataclasses.fields(HParams)}
_KINDS: Mapping[str, type] = {"int": int, "float": float, "str": str}
TYPES: Mapping[str, type] = {f.name: _KINDS[str(f.type)] for f in dataclasses.fields(HParams)}


def _positive(x: float) -> bool:
    return x > 0


def _fraction_open(x: float) -> bool:  # [0, 1)
    return 0 <= x < 1


def _fraction_closed(x: float) -> bool:  # [0, 1]
    return 0 <= x <= 1


# name -> (predicate, what a valid value is). Types are checked before predicates.
_RULES: Mapping[str, tuple[Callable[[Any], bool], str]] = {
    "context_length": (_positive, "an integer >= 1"),
    "embedding_dim": (_positive, "an integer >= 1"),
    "hidden_width": (_positive, "an integer >= 1"),
    "hidden_layers": (_positive, "an integer >= 1"),
    "dropout": (_fraction_open, "a number in [0, 1)"),
    "batch_size": (_positive, "an integer >= 1"),
    "optimizer": (lambda v: v in OPTIMIZERS, f"one of {', '.join(OPTIMIZERS)}"),
    "lr": (_positive, "a number > 0"),
    "lr_schedule": (lambda v: v in LR_SCHEDULES, f"one of {', '.join(LR_SCHEDULES)}"),
    "lr_step_factor": (_positive, "a number > 0"),
    "lr_step_at": (_fraction_closed, "a number in [0, 1]"),
    "warmup_frac": (_fraction_open, "a number in [0, 1)"),
    "lr_min_frac": (_fraction_closed, "a number in [0, 1]"),
    "weight_decay": (lambda x: x >= 0, "a number >= 0"),
    "ema_decay": (_fraction_open, "a number in [0, 1)"),
    "precision": (lambda v: v in PRECISIONS, f"one of {', '.join(PRECISIONS)}"),
    "seed": (lambda x: 0 <= x <= MAX_SEED, "an integer in 0..2^63-1"),
}


def coerce(name: str, value: Any) -> Any:
    """Return `value` as the type of hyperparameter `name` (int -> float allowed), else raise.

    Raises KeyError for an unknown name and TypeError for a value of the wrong type.
    """
    kind = TYPES[name]
    if isinstance(value, bool):  # bool is an int in Python; never a valid hyperparameter
        raise TypeError(f"expected {kind.__name__}, got a boolean")
    if kind is float and isinstance(value, int | float):
        return float(value)
    if not isinstance(value, kind):
        raise TypeError(f"expected {kind.__name__}, got {type(value).__name__} {value!r}")
    return value


def check_value(name: str, value: Any) -> str | None:
    """Why `value` is not valid for hyperparameter `name`, or None when it is."""
    if name not in TYPES:
        return f"unknown hyperparameter {name!r}"
    try:
        value = coerce(name, value)
    except TypeError as exc:
        return str(exc)
    if isinstance(value, float) and not math.isfinite(value):
        return f"must be finite, got {value}"
    predicate, expected = _RULES[name]
    return None if predicate(value) else f"must be {expected}, got {value!r}"


def make(values: Mapping[str, Any]) -> HParams:
    """HParams from the defaults overlaid with `values`; ValueError listing every problem."""
    problems = [f"{k}: {why}" for k, v in values.items() if (why := check_value(k, v))]
    if problems:
        raise ValueError("invalid hyperparameters: " + "; ".join(problems))
    return HParams(**{k: coerce(k, v) for k, v in values.items()})
