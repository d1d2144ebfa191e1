"""The one training loop. Trials and the final model both call `train`.

It takes hyperparameters, data and a step budget, calls `on_eval` after every evaluation, and
returns a `TrainResult`. It knows nothing of Optuna or MLflow: the study driver adapts it.
At chosen evaluations it hands a `TrainState` (a checkpoint) to `on_checkpoint`; given one back
as `resume`, it continues exactly where that state was taken: on a CPU, the same losses as a run
that was never interrupted. With `hp.ema_decay` > 0 the weights evaluated and returned are a
moving average of the trained ones (`WeightAverage`).
"""

from __future__ import annotations

import copy
import dataclasses
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from harness.config.hparams import HParams
from harness.errors import TrainingDiverged
from harness.training import memory
from harness.training.data import SearchData
from harness.training.model import MLP, mean_loss, n_params
from harness.training.steps import make_step

# Minibatch indices are drawn this many steps at a time: one gather per block instead of three
# small operations per step. Fixed, so that the batches do not depend on eval_every.
BATCH_BLOCK = 512

# A loss this many times that of uniform guessing (log vocab_size) means training has diverged:
# a sane run starts near 1x (the small output layer) and only goes down.
DIVERGENCE_FACTOR = 10.0


@dataclass(frozen=True)
class Evaluation:
    """One evaluation, handed to `on_eval`."""

    step: int  # optimizer steps done so far
    dev_loss: float  # mean loss on the whole dev split
    train_loss: float  # mean minibatch loss over the steps since the last evaluation
    lr: float  # learning rate of the last step
    elapsed_s: float  # wall time since training started


# Called after each evaluation; returning True stops training early (the driver's pruning).
OnEval = Callable[[Evaluation], bool | None]


@dataclass
class TrainState:
    """Everything needed to continue a run where it stopped: what a checkpoint holds.

    `to_dict`/`from_dict` give plain containers of tensors and numbers, which
    `torch.load(weights_only=True)` reads back.
    """

    config: dict[str, Any]  # the run's hyperparameters (HParams.to_dict)
    steps: int  # the run's step budget (the schedule depends on it)
    step: int  # optimizer steps done
    model: dict[str, torch.Tensor]
    optimizer: dict[str, Any] | None  # the optimizer's state_dict; None for plain SGD
    rng: torch.Tensor  # torch's CPU generator (init, dropout masks on a CPU)
    cuda_rng: torch.Tensor | None  # the device generator (dropout masks on a GPU)
    block_rng: torch.Tensor  # the batch generator before the current block was drawn
    best_loss: float
    best_step: int
    best_model: dict[str, torch.Tensor]
    averaged_model: dict[str, torch.Tensor] | None  # WeightAverage's weights; None without
    dev_curve: list[tuple[int, float]]
    train_curve: list[tuple[int, float]]
    elapsed_s: float  # wall time trained so far
    eval_s: float  # of which evaluating

    def to_dict(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TrainState:
        """Raises ValueError when `d` is not a TrainState's dict."""
        names = {f.name for f in dataclasses.fields(cls)}
        if not isinstance(d, dict) or set(d) != names:
            raise ValueError("not a training state")
        curves = {k: [(int(s), float(v)) for s, v in d[k]] for k in ("dev_curve", "train_curve")}
        return cls(**{**d, **curves})


# Called with the training state at a checkpoint; it must be done with it when it returns.
OnCheckpoint = Callable[[TrainState], None]


@dataclass
class TrainResult:
    """What a training run produced. `model` holds the weights of the best dev evaluation."""

    best_dev_loss: float
    best_step: int
    dev_curve: list[tuple[int, float]]
    train_curve: list[tuple[int, float]]
    steps: int  # steps actually run
    stopped_early: bool  # True when on_eval asked to stop
    steps_per_sec: float  # optimizer steps per second, evaluations excluded
    elapsed_s: float  # the whole loop: steps, evaluations and the callbacks
    eval_s: float  # of which evaluating on dev
    n_params: int
    model: MLP = field(repr=False)

    @property
    def dev_loss(self) -> float:
        """The dev loss of the last evaluation."""
        return self.dev_curve[-1][1]

    @property
    def train_loss(self) -> float:
        return self.train_curve[-1][1]

    def summary(self) -> dict[str, Any]:
        """JSON-ready figures (no curves, no model)."""
        return {
            "best_dev_loss": self.best_dev_loss,
            "best_step": self.best_step,
            "dev_loss": self.dev_loss,
            "train_loss": self.train_loss,
            "steps": self.steps,
            "stopped_early": self.stopped_early,
            "steps_per_sec": self.steps_per_sec,
            "elapsed_s": self.elapsed_s,
            "eval_s": self.eval_s,
            "n_params": self.n_params,
        }


class WeightAverage:
    """An exponential moving average of a model's weights (Polyak averaging), held in a copy of
    the model that evaluations read.

    Adam's steps at a high learning rate leave the weights jittering around a better point; the
    average sits nearer it, and needs no lower rate to get there. After n steps the decay is
    min(decay, (1 + n) / (10 + n)), so that early evaluations do not mostly see the initial
    weights (TensorFlow's ExponentialMovingAverage with num_updates does the same).
    """

    def __init__(self, model: MLP, decay: float) -> None:
        self.model = copy.deepcopy(model)
        self.decay = decay
        self._trained: list[torch.Tensor] = list(model.parameters())
        self._averaged: list[torch.Tensor] = list(self.model.parameters())

    @torch.no_grad()
    def update(self, step: int) -> None:
        """Move the average toward the weights after optimizer step `step` (1-based)."""
        decay = min(self.decay, (1 + step) / (10 + step))
        torch._foreach_lerp_(self._averaged, self._trained, 1 - decay)


def lr_at(hp: HParams, step: int, total_steps: int) -> float:
    """Learning rate for optimizer step `step` (0-based) of `total_steps`."""
    if hp.lr_schedule == "constant":
        return hp.lr
    if hp.lr_schedule == "step":
        # The lecture's drop: lr until a fraction of the steps, then lr * factor.
        return hp.lr if step < hp.lr_step_at * total_steps else hp.lr * hp.lr_step_factor
    if hp.lr_schedule == "cosine":
        warmup = int(hp.warmup_frac * total_steps)
        if step < warmup:
            return hp.lr * (step + 1) / warmup
        progress = (step - warmup) / max(1, total_steps - warmup)
        floor = hp.lr * hp.lr_min_frac
        return floor + (hp.lr - floor) * 0.5 * (1 + math.cos(math.pi * progress))
    raise ValueError(f"unknown lr_schedule {hp.lr_schedule!r}")


def resolve_device(device: str) -> torch.device:
    """'auto' -> cuda when available, else cpu; anything else as given."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def train(
    hp: HParams,
    data: SearchData,
    *,
    steps: int,
    eval_every: int,
    on_eval: OnEval | None = None,
    device: str = "cpu",
    step_kind: str = "manual",
    lr_fn: Callable[[int], float] | None = None,
    checkpoint_every: int = 0,
    on_checkpoint: OnCheckpoint | None = None,
    resume: TrainState | None = None,
) -> TrainResult:
    """Train the MLP of `hp` on `data.train` for `steps` steps, evaluating on `data.dev`.

    Evaluates every `eval_every` steps and after the last step. `step_kind` picks the step
    implementation (harness.training.steps): "manual" (fast), "autograd" (the reference) or
    "graphed" (manual, replayed as a CUDA graph on a GPU); all compute the same function.
    `lr_fn(step)` replaces hp's schedule (the learning-rate finder's sweep).

    Every `checkpoint_every` steps (a multiple of `eval_every`; 0: never), after the evaluation
    and `on_eval`, the state is handed to `on_checkpoint`. `resume` continues from such a state
    of the same config and steps. Raises TrainingDiverged on a diverging loss and ValueError on
    a config the data cannot serve or a state of another run.
    """
    if steps < 1 or eval_every < 1:
        raise ValueError(f"steps and eval_every must be >= 1, got {steps} and {eval_every}")
    if hp.context_length != data.context_length:
        raise ValueError(
            f"data was built for context_length {data.context_length}, hp has {hp.context_length}"
        )
    if hp.batch_size > len(data.train):
        raise ValueError(
            f"batch_size {hp.batch_size} is larger than the {len(data.train)} training examples"
        )
    if checkpoint_every and (checkpoint_every < 0 or checkpoint_every % eval_every):
        raise ValueError(f"checkpoint_every must be a multiple of eval_every ({eval_every}), "
                         f"got {checkpoint_every}")
    if resume is not None and (resume.config != hp.to_dict() or resume.steps != steps
                               or not 0 < resume.step < steps):
        raise ValueError("the training state to resume is of another run (config or steps)")
    dev = resolve_device(device)
    # Memory is checked before any is spent: a config that cannot fit fails here, not in the
    # allocator (MemoryBudgetExceeded).
    memory.check(memory.training(hp, len(data.vocab), len(data.dev)), "this config",
                 device=dev.type)
    # Same seed, same result: one generator seeds the init, another draws the batches.
    torch.manual_seed(hp.seed)
    batch_gen = torch.Generator(device=dev).manual_seed(hp.seed)
    model = MLP.from_hparams(hp, len(data.vocab)).to(dev)
    update = make_step(step_kind, model, hp)
    # The weights that are evaluated, kept as the best and returned: the trained ones, or
    # their moving average.
    average = WeightAverage(model, hp.ema_decay) if hp.ema_decay else None
    evaluated = average.model if average is not None else model
    Xtr, Ytr = data.train.X.to(dev), data.train.Y.to(dev)  # (N, T), (N,)
    Xdev, Ydev = data.dev.X.to(dev), data.dev.Y.to(dev)

    def draw_block(start: int) -> tuple[torch.Tensor, torch.Tensor]:
        # batch_size random training examples for each of the next (up to) BATCH_BLOCK steps.
        n = min(BATCH_BLOCK, steps - start)
        ix = torch.randint(0, len(Ytr), (n, hp.batch_size), device=dev, generator=batch_gen)
        return Xtr[ix], Ytr[ix]  # (n, B, T), (n, B)

    dev_curve: list[tuple[int, float]] = []
    train_curve: list[tuple[int, float]] = []
    best_loss, best_step, best_state = math.inf, 0, None
    loss_sum = torch.zeros((), device=dev)  # summed minibatch losses since the last eval
    stopped_early = False
    limit = DIVERGENCE_FACTOR * math.log(len(data.vocab))
    eval_time, before = 0.0, 0.0  # seconds evaluating; seconds trained before a resume
    step = 0
    block_rng = batch_gen.get_state()
    if resume is not None:
        # Continue where the state was taken: weights, optimizer, generators, the block of
        # minibatches in use (drawn again from its recorded generator state), curves, best.
        step = resume.step
        model.load_state_dict(resume.model)
        if update.optimizer is not None and resume.optimizer is not None:
            update.optimizer.load_state_dict(resume.optimizer)
        torch.set_rng_state(resume.rng)
        if resume.cuda_rng is not None and dev.type == "cuda":
            torch.cuda.set_rng_state(resume.cuda_rng, dev)
        block_rng = resume.block_rng
        batch_gen.set_state(block_rng)
        Xb, Yb = draw_block(step - (step - 1) % BATCH_BLOCK - 1)
        best_loss, best_step = resume.best_loss, resume.best_step
        best_state = resume.best_model
        if average is not None and resume.averaged_model is not None:
            average.model.load_state_dict(resume.averaged_model)
        dev_curve, train_curve = list(resume.dev_curve), list(resume.train_curve)
        eval_time, before = resume.eval_s, resume.elapsed_s
    started = time.perf_counter() - before
    while step < steps:
        # Minibatches are drawn a block at a time: one gather instead of three small ops a step.
        k = step % BATCH_BLOCK
        if k == 0:
            block_rng = batch_gen.get_state()
            Xb, Yb = draw_block(step)
        # Forward, backward, update at this step's learning rate.
        lr = lr_fn(step) if lr_fn else lr_at(hp, step, steps)
        loss = update(Xb[k], Yb[k], lr)  # (B, T), (B,) -> mean minibatch loss (0-dim)
        loss_sum += loss  # no host sync per step: the loss is read only at evaluations
        step += 1
        if average is not None:
            average.update(step)

        if step % eval_every and step != steps:
            continue
        # Evaluate on the whole dev split; this is where the host reads the loss.
        t0 = time.perf_counter()
        n_since = step - (train_curve[-1][0] if train_curve else 0)
        train_loss = loss_sum.item() / n_since
        loss_sum.zero_()
        if not train_loss < limit:  # also catches NaN
            raise TrainingDiverged(step, "train loss", train_loss, limit)
        dev_loss = mean_loss(evaluated, Xdev, Ydev)
        if not dev_loss < limit:
            raise TrainingDiverged(step, "dev loss", dev_loss, limit)
        dev_curve.append((step, dev_loss))
        train_curve.append((step, train_loss))
        if dev_loss < best_loss:
            best_loss, best_step = dev_loss, step
            best_state = copy.deepcopy(evaluated.state_dict())
        eval_time += time.perf_counter() - t0
        ev = Evaluation(step, dev_loss, train_loss, lr, time.perf_counter() - started)
        if on_eval is not None and on_eval(ev):
            stopped_early = step < steps
            break
        if on_checkpoint is not None and checkpoint_every and step % checkpoint_every == 0 \
                and step < steps:
            assert best_state is not None  # an evaluation just ran
            on_checkpoint(TrainState(
                hp.to_dict(), steps, step, model.state_dict(),
                update.optimizer.state_dict() if update.optimizer is not None else None,
                torch.get_rng_state(),
                torch.cuda.get_rng_state(dev) if dev.type == "cuda" else None,
                block_rng, best_loss, best_step, best_state,
                average.model.state_dict() if average is not None else None, list(dev_curve),
                list(train_curve), time.perf_counter() - started, eval_time))

    elapsed = time.perf_counter() - started
    assert best_state is not None  # at least one evaluation ran (steps >= 1)
    model.load_state_dict(best_state)
    model.eval()
    return TrainResult(
        best_dev_loss=best_loss,
        best_step=best_step,
        dev_curve=dev_curve,
        train_curve=train_curve,
        steps=step,
        stopped_early=stopped_early,
        steps_per_sec=step / max(elapsed - eval_time, 1e-9),  # over all pieces of a resumed run
        elapsed_s=elapsed,
        eval_s=eval_time,
        n_params=n_params(model),
        model=model,
    )
