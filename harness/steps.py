"""One optimizer step of the MLP on a minibatch: forward, backward, update.

Two implementations of the same function:

- `AutogradStep`: the module's forward, `loss.backward()`, a torch.optim optimizer. The reference.
- `ManualStep`: the backward written out by hand, with fused updates. The MLP is so small that
  autograd's per-operation bookkeeping, not arithmetic, dominates a step on a CPU; writing the
  backward out roughly halves the operations (measured here: 2.5x the lecture loop's steps/s).

Both draw dropout masks with `harness.model.dropout_mask`, so with the same seed they compute the
same losses (a test compares them over a few hundred steps).
"""

from __future__ import annotations

from typing import Protocol

import torch
from torch import nn
from torch.nn import functional as F

from harness.hparams import HParams
from harness.model import MLP, dropout_mask

STEP_KINDS = ("manual", "autograd")


class Step(Protocol):
    def __call__(self, xb: torch.Tensor, yb: torch.Tensor, lr: float) -> torch.Tensor:
        """One update on the minibatch (xb (B, T), yb (B,)) at learning rate `lr`; returns the
        minibatch's mean loss as a detached 0-dim tensor (no host sync)."""
        ...


def make_optimizer(hp: HParams, model: MLP) -> torch.optim.Optimizer:
    """The optimizer named by `hp.optimizer`, at `hp.lr` (the schedule sets lr each step)."""
    if hp.optimizer == "sgd":
        return torch.optim.SGD(model.parameters(), lr=hp.lr, weight_decay=hp.weight_decay)
    if hp.optimizer == "adamw":
        # fused: one kernel for all parameters; on a CPU about 5x torch's default (foreach)
        # update for a 0.7M-parameter model, where the update was a fifth of the step.
        return torch.optim.AdamW(model.parameters(), lr=hp.lr, weight_decay=hp.weight_decay,
                                 fused=True)
    raise ValueError(f"unknown optimizer {hp.optimizer!r}")


def make_step(kind: str, model: MLP, hp: HParams) -> Step:
    """A step function of `kind` ("manual" or "autograd") for `model`."""
    if kind == "manual":
        return ManualStep(model, hp)
    if kind == "autograd":
        return AutogradStep(model, hp)
    raise ValueError(f"unknown step kind {kind!r}; choose one of {', '.join(STEP_KINDS)}")


class AutogradStep:
    """The reference: module forward, autograd backward, torch.optim update."""

    def __init__(self, model: MLP, hp: HParams) -> None:
        self.model = model
        self.optimizer = make_optimizer(hp, model)

    def __call__(self, xb: torch.Tensor, yb: torch.Tensor, lr: float) -> torch.Tensor:
        loss = F.cross_entropy(self.model(xb), yb)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        return loss.detach()


class ManualStep:
    """The same step with the backward written out and the updates fused."""

    def __init__(self, model: MLP, hp: HParams) -> None:
        self.model = model
        self.linears = [m for m in model.hidden if isinstance(m, nn.Linear)]
        self.dropout = hp.dropout
        self.sgd = hp.optimizer == "sgd"
        self.weight_decay = hp.weight_decay
        # AdamW keeps its moments in torch's optimizer; the gradients are handed to it.
        self.adamw = None if self.sgd else make_optimizer(hp, model)
        # Dense parameters in a fixed order, for the fused updates.
        self.dense = [p for lin in (*self.linears, model.output) for p in (lin.weight, lin.bias)]
        self._rows = torch.arange(hp.batch_size, device=model.output.weight.device)

    @torch.no_grad()
    def __call__(self, xb: torch.Tensor, yb: torch.Tensor, lr: float) -> torch.Tensor:
        C = self.model.embedding.weight  # (V, E)
        B = xb.shape[0]

        # Forward, keeping what the backward needs.
        x = F.embedding(xb, C).view(B, -1)  # (B, T*E)
        saved = []  # per hidden layer: its input, its tanh output, its dropout mask
        for lin in self.linears:
            h = torch.tanh(torch.addmm(lin.bias, x, lin.weight.t()))  # (B, H)
            mask = None
            if self.dropout > 0:  # as the module's Dropout draws it
                mask = dropout_mask(h, self.dropout)
            saved.append((x, h, mask))
            x = h if mask is None else h * mask
        out = self.model.output
        logits = torch.addmm(out.bias, x, out.weight.t())  # (B, V)
        logp = logits.log_softmax(1)
        loss = F.nll_loss(logp, yb)

        # Backward of the mean cross-entropy: d logits = (softmax - onehot) / B.
        d = logp.exp_()
        d[self._rows[:B], yb] -= 1
        d /= B
        grads = [d.t() @ x, d.sum(0)]  # output weight (V, H), bias (V,)
        dx = d @ out.weight  # (B, H)
        for (x_in, h, mask), lin in zip(reversed(saved), reversed(self.linears), strict=True):
            if mask is not None:
                dx = dx * mask
            da = torch.ops.aten.tanh_backward(dx, h)  # dx * (1 - h^2), one fused op
            grads[:0] = [da.t() @ x_in, da.sum(0)]
            dx = da @ lin.weight  # (B, fan_in)
        rows, d_rows = xb.reshape(-1), dx.view(-1, C.shape[1])  # embedding rows and their grads

        # Update.
        if self.sgd:
            if self.weight_decay:  # torch's SGD: grad + weight_decay * param
                torch._foreach_add_(grads, self.dense, alpha=self.weight_decay)
                C.mul_(1 - lr * self.weight_decay)
            torch._foreach_add_(self.dense, grads, alpha=-lr)
            C.index_add_(0, rows, d_rows, alpha=-lr)  # only the rows in the batch move
        else:
            assert self.adamw is not None
            dC = torch.zeros_like(C).index_add_(0, rows, d_rows)
            for p, g in zip((C, *self.dense), (dC, *grads), strict=True):
                p.grad = g
            for group in self.adamw.param_groups:
                group["lr"] = lr
            self.adamw.step()
        return loss
