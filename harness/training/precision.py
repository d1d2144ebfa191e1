"""`precision: auto`: the training step's precision, chosen by timing the step on this machine.

bf16 products pay only where the hardware multiplies bf16 natively, and a CPU's flags do not
say whether it does: an Intel Xeon listing AVX512-BF16 (family 6, model 207) ran search.yaml's
step 1.8x *slower* in bf16 than in fp32, an AMD EPYC (Zen 5) 2.2x faster (bench/RESULTS.md).
So `auto` times a few steps of the largest model a study can sample in each precision, with
the torch threads a worker will have, and takes bf16 only when it is clearly faster. A study
measures once, when it is created, and records the choice (`harness.storage.StudyRecord`):
every worker that joins, on any machine, trains in the same precision.
"""

from __future__ import annotations

import dataclasses
import statistics
import time
from dataclasses import dataclass

import torch

from harness.config.hparams import PRECISIONS, HParams
from harness.training import memory
from harness.training.model import MLP
from harness.training.steps import ManualStep
from harness.training.train import resolve_device

# bf16 rounds every product to 8 bits of mantissa: it must be this much faster to be chosen.
BF16_MARGIN = 1.1
WARMUP_STEPS = 2  # per precision, untimed: first calls allocate and pick kernels
# Timed steps per precision, alternating one of each: whatever else loads the machine meanwhile
# weighs on both alike.
TIMED_STEPS = 12
# Timing stops after MIN_TIMED_STEPS of each once one precision is CLEAR_RATIO times as fast as
# the other, far from BF16_MARGIN: bf16 without native support can take 30x fp32's time (a
# second per step on a Zen 3), and more of those steps would not change the choice.
MIN_TIMED_STEPS = 3
CLEAR_RATIO = 2.0


@dataclass(frozen=True)
class Timing:
    """Milliseconds per training step of one model in each precision (the median of its timed
    steps), and the choice."""

    ms: dict[str, float]  # precision -> median ms per step
    threads: int
    device: str

    @property
    def choice(self) -> str:
        """bf16 when it is at least BF16_MARGIN times as fast as fp32, else fp32."""
        return "bf16" if self.ms["fp32"] >= BF16_MARGIN * self.ms["bf16"] else "fp32"


def measure(hp: HParams, vocab_size: int, *, device: str = "cpu",
            threads: int | None = None) -> Timing:
    """Time the manual training step of `hp`'s model (its precision aside) on random
    minibatches in fp32 and in bf16, on `device` with `threads` torch threads (default: the
    current setting, which is restored). Training later is unaffected: the weights are thrown
    away and torch's random state is put back. Up to TIMED_STEPS steps of each, fewer once
    the choice is clear (CLEAR_RATIO): about a second for search.yaml's models where bf16
    is native, 6-8 s (measured) on a Zen 3 that emulates it."""
    dev = resolve_device(device)
    # Two models of the largest config: one that cannot fit is said before it is built.
    memory.check(memory.Estimate({k: 2 * v for k, v in memory.training(hp, vocab_size, 1)
                                  .parts.items()}), "timing precision auto's largest config",
                 device=dev.type)
    before = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        with torch.random.fork_rng(devices=[dev] if dev.type == "cuda" else []):
            torch.manual_seed(0)
            steps = {p: _step(dataclasses.replace(hp, precision=p), vocab_size, dev)
                     for p in PRECISIONS}
            xb = torch.randint(0, vocab_size, (hp.batch_size, hp.context_length), device=dev)
            yb = torch.randint(0, vocab_size, (hp.batch_size,), device=dev)
            # A learning rate of 0: the same arithmetic as training, on weights that stay as
            # initialized. A real rate on random labels, or a study's default one, can blow
            # them up, and arithmetic on inf, NaN or subnormal numbers has speeds of its own.
            for step in steps.values():
                for _ in range(WARMUP_STEPS):
                    step(xb, yb, 0.0)
            seconds: dict[str, list[float]] = {p: [] for p in PRECISIONS}
            for i in range(TIMED_STEPS):
                for p, step in steps.items():
                    seconds[p].append(_time_step(step, xb, yb, dev))
                ms = {p: 1e3 * statistics.median(s) for p, s in seconds.items()}
                if i + 1 >= MIN_TIMED_STEPS and _clear(ms):
                    break
        return Timing(ms, torch.get_num_threads(), str(dev))
    finally:
        torch.set_num_threads(before)


def _clear(ms: dict[str, float]) -> bool:
    """One precision is at least CLEAR_RATIO times as fast as the other."""
    return max(ms.values()) >= CLEAR_RATIO * min(ms.values())


def _step(hp: HParams, vocab_size: int, dev: torch.device) -> ManualStep:
    # ManualStep, not make_step: no warning about bf16 on a CPU that lacks it, which this
    # measurement is the answer to.
    return ManualStep(MLP.from_hparams(hp, vocab_size).to(dev), hp)


def _time_step(step: ManualStep, xb: torch.Tensor, yb: torch.Tensor,
               dev: torch.device) -> float:
    """Seconds of one step (at a learning rate of 0)."""
    _sync(dev)
    t0 = time.perf_counter()
    step(xb, yb, 0.0)
    _sync(dev)
    return time.perf_counter() - t0


def _sync(dev: torch.device) -> None:
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)
