"""Memory, checked before it is spent: what a config, a sampling run or a model file will take,
against what this machine has free.

torch allocates what it is asked for, and a config that cannot fit (a hidden layer of 10^8
units, a context of 10^5 characters) ends in an allocator's traceback or the kernel's OOM
killer, taking the worker with it. The estimates here are upper bounds, cheap to compute from
the hyperparameters alone; `check` raises MemoryBudgetExceeded with the estimate and the
budget, which a trial records as its failure reason while the study goes on.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

from harness.config.hparams import HParams
from harness.errors import MemoryBudgetExceeded

FLOAT = 4  # bytes of a float32
INDEX = 8  # bytes of an int64 index
# A Python list of ints holds a pointer per item, and ints beyond the small-int cache take an
# object each: building the examples of a word list goes through such lists.
PY_ITEM = 16
BUDGET_SHARE = 0.8  # of the memory available now: the rest is the system's and the others'
BATCH_BLOCK = 512  # minibatches drawn at once (harness.training.train.BATCH_BLOCK)
EVAL_CHUNK = 65_536  # examples evaluated at once (harness.training.model.mean_loss)
GiB = 2**30


@dataclass(frozen=True)
class Estimate:
    """Bytes, by what holds them."""

    parts: dict[str, int]

    @property
    def total(self) -> int:
        return sum(self.parts.values())

    def describe(self) -> str:
        shown = sorted(self.parts.items(), key=lambda kv: -kv[1])[:3]
        return f"about {_size(self.total)} (" + ", ".join(f"{k} {_size(v)}" for k, v in shown) + ")"


def n_params(hp: HParams, vocab_size: int) -> int:
    """The MLP's parameters, from its hyperparameters alone (harness.training.model.MLP)."""
    fan_in = hp.context_length * hp.embedding_dim
    hidden = sum((fan_in if i == 0 else hp.hidden_width) * hp.hidden_width + hp.hidden_width
                 for i in range(hp.hidden_layers))
    last = hp.hidden_width if hp.hidden_layers else fan_in
    return vocab_size * hp.embedding_dim + hidden + last * vocab_size + vocab_size


def training(hp: HParams, vocab_size: int, n_dev: int) -> Estimate:
    """What training `hp` takes besides its examples: weights with their gradients, optimizer
    state, the kept best and averaged copies; a block of minibatches and their activations;
    an evaluation's chunk of the dev split."""
    params = n_params(hp, vocab_size)
    copies = 3 + (2 if hp.optimizer == "adamw" else 0) + (1 if hp.ema_decay else 0)
    width = hp.context_length * hp.embedding_dim + hp.hidden_layers * hp.hidden_width
    return Estimate({
        "weights and optimizer": params * FLOAT * copies,
        "minibatches": BATCH_BLOCK * hp.batch_size * (hp.context_length + 1) * INDEX
        + 4 * hp.batch_size * (width + vocab_size) * FLOAT,
        "evaluation": 3 * min(EVAL_CHUNK, max(n_dev, 1)) * (width + vocab_size) * FLOAT,
    })


def examples(n_examples: int, n_tokens: int, context_length: int) -> Estimate:
    """What building `n_examples` context windows of `context_length` takes, from words of
    `n_tokens` characters (padding included): the lists they are built from and the tensors."""
    return Estimate({"examples": n_examples * (context_length + 1) * INDEX * 2
                     + n_tokens * PY_ITEM})


def sampling(n: int, max_length: int, vocab_size: int, context_length: int,
             members: int = 1) -> Estimate:
    """What sampling `n` names of up to `max_length` characters at once takes."""
    return Estimate({
        "names": n * max_length * INDEX * 2 + n * max_length * PY_ITEM,
        "probabilities": n * vocab_size * FLOAT * (2 + members),
        "contexts": n * context_length * INDEX * 2,
    })


def budget() -> int:
    """Bytes a process may plan to use: HARNESS_MEMORY_BUDGET when set (e.g. "512MiB",
    "2GiB" or bytes), else a share of the memory available now."""
    if text := os.environ.get("HARNESS_MEMORY_BUDGET"):
        return parse_size(text)
    return int(BUDGET_SHARE * _available())


def check(estimate: Estimate, what: str, device: str = "cpu") -> None:
    """Raise MemoryBudgetExceeded when `estimate` is over the budget (of the GPU's free
    memory, for a CUDA device)."""
    limit = budget() if device != "cuda" else _gpu_free()
    if estimate.total > limit:
        where = ("the GPU has free" if device == "cuda" else
                 "this machine can give it (HARNESS_MEMORY_BUDGET sets that)")
        raise MemoryBudgetExceeded(f"{what} needs {estimate.describe()}, more than the "
                                   f"{_size(limit)} {where}")


def parse_size(text: str) -> int:
    """'512MiB', '2GiB', '1.5GB' or a number of bytes -> bytes."""
    m = re.fullmatch(r"\s*([0-9]+(?:\.[0-9]+)?)\s*([KMGT]i?B?)?\s*", text, re.IGNORECASE)
    if not m:
        raise ValueError(f"not a size: {text!r} (e.g. 512MiB, 2GiB or bytes)")
    unit = (m[2] or "").upper().rstrip("B").rstrip("I")
    return int(float(m[1]) * 1024 ** " KMGT".index(unit or " "))


def _gpu_free() -> int:
    import torch  # a CUDA device: torch is loaded already

    return int(BUDGET_SHARE * torch.cuda.mem_get_info()[0])


def _available() -> int:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError):
        return 8 * GiB  # unknown: a modest machine


def _size(n: float) -> str:
    for unit in ("bytes", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n:,.0f} {unit}" if unit == "bytes" else f"{n:,.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"
