"""One optimizer step of the MLP on a minibatch: forward, backward, update.

Three implementations of the same function:

- `AutogradStep`: the module's forward, `loss.backward()`, a torch.optim optimizer. The reference.
- `ManualStep`: the backward written out by hand, with fused updates. The MLP is so small that
  autograd's per-operation bookkeeping, not arithmetic, dominates a step on a CPU; writing the
  backward out roughly halves the operations (measured here: 2.5x the lecture loop's steps/s).
- `GraphedStep` (CUDA): the manual step captured once as a CUDA graph and replayed, so that a
  step costs one launch instead of a few dozen.

All draw dropout masks with `harness.training.model.dropout_mask`, so with the same seed they
compute the same losses (tests compare them over a few hundred steps). `hp.precision` "bf16"
runs the matrix products in bfloat16 (autocast in the reference, explicit casts in the manual
step).
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Protocol

import torch
from torch import nn
from torch.nn import functional as F

from harness.config.hparams import HParams
from harness.training.model import MLP, dropout_mask

log = logging.getLogger(__name__)

STEP_KINDS = ("manual", "autograd", "graphed")

# hp.precision -> the dtype of the training step's matrix products. bf16 keeps fp32 weights,
# optimizer state, tanh and softmax; on some CPUs with AVX512-BF16 or AMX (and on GPU tensor
# cores) its products run several times faster than fp32's, which pays once the layers are a
# few hundred wide; on others they run slower (`precision: auto` measures:
# harness.training.precision).
PRECISION_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}

# A learning rate: a number, or a 0-dim tensor on the model's device (what a graph reads).
LR = float | torch.Tensor


@functools.cache
def _warn_once(message: str) -> None:
    log.warning(message)


def _identity(t: torch.Tensor) -> torch.Tensor:
    return t


def _tanh_of_half(z2: torch.Tensor) -> torch.Tensor:
    """tanh(z) from z2 = 2z, as 2 sigmoid(2z) - 1, overwriting z2 (a fresh product, which
    addmm's alpha and beta of 2 double exactly): torch's CPU tanh can be far slower than its
    sigmoid (4-5x for a 256 x 1,024 layer on the machine of bench/RESULTS.md); the two agree
    to 2e-7."""
    return z2.sigmoid_().mul_(2).sub_(1)


class Step(Protocol):
    @property
    def optimizer(self) -> torch.optim.Optimizer | None:
        """The optimizer whose state a checkpoint saves; None where the step keeps none."""
        ...

    def __call__(self, xb: torch.Tensor, yb: torch.Tensor, lr: float) -> torch.Tensor:
        """One update on the minibatch (xb (B, T), yb (B,)) at learning rate `lr`; returns the
        minibatch's mean loss as a detached 0-dim tensor (no host sync)."""
        ...


def make_optimizer(hp: HParams, model: MLP, lr: LR | None = None) -> torch.optim.Optimizer:
    """The optimizer named by `hp.optimizer`, at `lr` (default hp.lr; the schedule sets it each
    step). A tensor `lr` is read on the device at every step, as a CUDA graph needs."""
    lr = hp.lr if lr is None else lr
    if hp.optimizer == "sgd":
        return torch.optim.SGD(model.parameters(), lr=lr, weight_decay=hp.weight_decay)
    if hp.optimizer == "adamw":
        # fused: one kernel for all parameters; on a CPU about 5x torch's default (foreach)
        # update for a 0.7M-parameter model, where the update was a fifth of the step.
        on_cuda = model.output.weight.is_cuda
        return torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=hp.weight_decay,
                                 fused=True, capturable=on_cuda and isinstance(lr, torch.Tensor))
    raise ValueError(f"unknown optimizer {hp.optimizer!r}")


@functools.cache
def cpu_has_fast_bf16() -> bool | None:
    """Whether this CPU lists native bf16 products (AVX512-BF16 or AMX); None where unknown.
    A listing is no promise of speed (an Intel Xeon with AVX512-BF16 ran bf16 products at
    half fp32's rate): `precision: auto` measures (harness.training.precision)."""
    try:
        flags = Path("/proc/cpuinfo").read_text().split()
    except OSError:
        return None
    return "avx512_bf16" in flags or "amx_bf16" in flags


def make_step(kind: str, model: MLP, hp: HParams) -> Step:
    """A step function of `kind` for `model`: "manual" (the hand-written backward),
    "autograd" (the reference) or "graphed" (manual, replayed as a CUDA graph on a GPU)."""
    if hp.precision == "bf16" and not model.output.weight.is_cuda and cpu_has_fast_bf16() is False:
        _warn_once("precision bf16: this CPU has no AVX512-BF16 or AMX, so bf16 products are "
                   "emulated and likely slower than fp32; consider precision: fp32, or auto "
                   "(measured)")
    if kind == "manual":
        return ManualStep(model, hp)
    if kind == "autograd":
        return AutogradStep(model, hp)
    if kind == "graphed":
        return GraphedStep(model, hp, capture=model.output.weight.is_cuda)
    raise ValueError(f"unknown step kind {kind!r}; choose one of {', '.join(STEP_KINDS)}")


class AutogradStep:
    """The reference: module forward, autograd backward, torch.optim update."""

    def __init__(self, model: MLP, hp: HParams) -> None:
        self.model = model
        self.optimizer = make_optimizer(hp, model)
        self.dtype = PRECISION_DTYPES[hp.precision]
        self.device_type = model.output.weight.device.type

    def __call__(self, xb: torch.Tensor, yb: torch.Tensor, lr: float) -> torch.Tensor:
        # bf16: autocast runs the linear layers in bf16, the loss in fp32.
        with torch.autocast(self.device_type, self.dtype, enabled=self.dtype != torch.float32):
            loss = F.cross_entropy(self.model(xb), yb)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        return loss.detach()


class ManualStep:
    """The same step with the backward written out and the updates fused.

    `lr` may be a number or a 0-dim tensor on the device (`GraphedStep` passes the tensor it
    fills each step; AdamW then needs it at construction: `lr_tensor`)."""

    def __init__(self, model: MLP, hp: HParams, lr_tensor: torch.Tensor | None = None) -> None:
        self.model = model
        self.linears = [m for m in model.hidden if isinstance(m, nn.Linear)]
        self.dropout = hp.dropout
        dtype = PRECISION_DTYPES[hp.precision]
        self._lo: Callable[[torch.Tensor], torch.Tensor] = _identity
        self._hi: Callable[[torch.Tensor], torch.Tensor] = _identity
        if dtype is not torch.float32:  # Python-level identities keep fp32's hot path bare
            self._lo, self._hi = (lambda t: t.to(dtype)), torch.Tensor.float
        self.sgd = hp.optimizer == "sgd"
        self.weight_decay = hp.weight_decay
        # AdamW keeps its moments in torch's optimizer; the gradients are handed to it.
        self.optimizer = self.adamw = None if self.sgd else make_optimizer(hp, model, lr_tensor)
        # Dense parameters in a fixed order, for the fused updates.
        self.dense = [p for lin in (*self.linears, model.output) for p in (lin.weight, lin.bias)]
        # -1 per example, added at its target's logit: softmax - onehot in one scatter.
        self._minus_one = torch.full((hp.batch_size, 1), -1.0,
                                     device=model.output.weight.device)

    @torch.no_grad()
    def __call__(self, xb: torch.Tensor, yb: torch.Tensor, lr: LR) -> torch.Tensor:
        C = self.model.embedding.weight  # (V, E)
        B = xb.shape[0]
        lo, hi = self._lo, self._hi  # to the products' dtype and back; identities in fp32

        # Forward, keeping what the backward needs. Products run in hp.precision; tanh, softmax
        # and everything the update reads stay fp32.
        x = lo(F.embedding(xb, C).view(B, -1))  # (B, T*E)
        saved = []  # per hidden layer: its input, weight, tanh output and dropout mask
        for lin in self.linears:
            W = lo(lin.weight)  # (H, fan_in)
            h = _tanh_of_half(hi(torch.addmm(lo(lin.bias), x, W.t(), beta=2, alpha=2)))
            mask = None
            if self.dropout > 0:  # as the module's Dropout draws it
                mask = dropout_mask(h, self.dropout)
            saved.append((x, W, h, mask))
            x = lo(h if mask is None else h * mask)
        out = self.model.output
        W_out = lo(out.weight)  # (V, H)
        logits = hi(torch.addmm(lo(out.bias), x, W_out.t()))  # (B, V)
        logp = logits.log_softmax(1)
        loss = F.nll_loss(logp, yb)

        # Backward of the mean cross-entropy: d logits = (softmax - onehot) / B.
        d = logp.exp_().scatter_add_(1, yb.view(-1, 1), self._minus_one[:B]).div_(B)
        d_low = lo(d)
        grads = [hi(d_low.t() @ x), d.sum(0)]  # output weight (V, H), bias (V,)
        dx = hi(d_low @ W_out)  # (B, H)
        for x_in, W, h, mask in reversed(saved):
            if mask is not None:
                dx = dx * mask
            da = torch.ops.aten.tanh_backward(dx, h)  # dx * (1 - h^2), one fused op
            da_low = lo(da)
            grads[:0] = [hi(da_low.t() @ x_in), da.sum(0)]
            dx = hi(da_low @ W)  # (B, fan_in)
        rows, d_rows = xb.reshape(-1), dx.view(-1, C.shape[1])  # embedding rows and their grads

        # Update.
        if self.sgd:
            if self.weight_decay:  # torch's SGD: grad + weight_decay * param
                torch._foreach_add_(grads, self.dense, alpha=self.weight_decay)
                C.mul_(1 - lr * self.weight_decay)
            if isinstance(lr, torch.Tensor):  # the rate stays on the device
                torch._foreach_mul_(grads, -lr)
                torch._foreach_add_(self.dense, grads)
                C.index_add_(0, rows, d_rows * -lr)
            else:
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


class GraphedStep:
    """The manual step, captured once as a CUDA graph and replayed at every step.

    A step of this model is a few dozen small kernels, each costing a launch; a replayed graph
    costs one. Replays reuse fixed addresses, so the minibatch is copied into static buffers
    and the learning rate lives in a device tensor that the step reads (a schedule needs no
    new capture). Dropout draws fresh masks at each replay (PyTorch advances the graph's RNG
    offset). With `capture=False` (any CPU) the same static-buffer step runs eagerly: the form
    in which its logic is checked without a GPU.
    """

    WARMUP_STEPS = 3  # run on a side stream before capture, as CUDA graphs require

    def __init__(self, model: MLP, hp: HParams, *, capture: bool) -> None:
        device = model.output.weight.device
        self.lr = torch.tensor(float(hp.lr), device=device)
        self.inner = ManualStep(model, hp, lr_tensor=self.lr)
        self.xb = torch.zeros((hp.batch_size, hp.context_length), dtype=torch.long,
                              device=device)
        self.yb = torch.zeros(hp.batch_size, dtype=torch.long, device=device)
        self.graph: torch.cuda.CUDAGraph | None = None
        self.loss: torch.Tensor | None = None
        self.capture = capture

    @property
    def optimizer(self) -> torch.optim.Optimizer | None:
        return self.inner.optimizer

    def __call__(self, xb: torch.Tensor, yb: torch.Tensor, lr: float) -> torch.Tensor:
        self.xb.copy_(xb)
        self.yb.copy_(yb)
        self.lr.fill_(lr)  # a kernel argument, not a host sync
        if not self.capture:
            return self.inner(self.xb, self.yb, self.lr)
        if self.graph is None:
            self._capture()
        assert self.graph is not None and self.loss is not None
        self.graph.replay()
        return self.loss  # the graph's output buffer: read it before the next step

    def _capture(self) -> None:
        """Warm up on a side stream, undo the warm-up's updates, then record one step."""
        model, opt = self.inner.model, self.inner.adamw
        params = [p.detach().clone() for p in model.parameters()]
        # The optimizer's moments: empty on a fresh run, loaded from a checkpoint on a resume.
        moments = {p: {k: v.clone() for k, v in state.items() if isinstance(v, torch.Tensor)}
                   for p, state in (opt.state.items() if opt is not None else ())}
        rng = torch.cuda.get_rng_state()
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(self.WARMUP_STEPS):
                self.inner(self.xb, self.yb, self.lr)
        torch.cuda.current_stream().wait_stream(side)
        # The warm-up trained on the first batch: put the weights, the optimizer's moments
        # (zero where the warm-up created them) and the RNG back.
        with torch.no_grad():
            for param, saved in zip(model.parameters(), params, strict=True):
                param.copy_(saved)
            for p, state in (opt.state.items() if opt is not None else ()):
                for key, value in state.items():
                    if isinstance(value, torch.Tensor):
                        before = moments.get(p, {}).get(key)
                        value.copy_(before) if before is not None else value.zero_()
        torch.cuda.set_rng_state(rng)
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph):
            self.loss = self.inner(self.xb, self.yb, self.lr)
