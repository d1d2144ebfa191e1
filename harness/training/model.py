"""The Bengio et al. (2003) MLP language model, as in "makemore part 2", and sampling from it."""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from harness.config import hparams
from harness.config.hparams import MAX_SEED, HParams
from harness.errors import InputError, ModelFileError
from harness.training import baseline, memory
from harness.training.data import Vocab
from harness.util import paths

# Gain for tanh layers (Kaiming et al.): keeps pre-activations near unit scale so tanh does not
# saturate at initialization ("makemore part 3").
TANH_GAIN = 5 / 3
# The output layer starts small so that the initial softmax is near uniform: initial loss
# about log(vocab_size) instead of confidently wrong.
OUTPUT_SCALE = 0.01


def dropout_mask(h: torch.Tensor, p: float) -> torch.Tensor:
    """Inverted-dropout mask for `h`: 0 with probability p, else 1 / (1 - p).

    The training step draws masks on its hot path, and drawing the random numbers is most of
    their cost: each 64-bit draw is split into four 16-bit integers, one per element (on a CPU
    twice as fast as `rand_like`, itself faster than F.dropout's `bernoulli_`). p is thereby
    rounded to a multiple of 1/65536; the scale uses the rounded p, so the expectation is kept.
    """
    n = h.numel()
    words = torch.randint(-(2**63), 2**63 - 1, ((n + 3) // 4,), dtype=torch.int64,
                          device=h.device)
    uniform16 = words.view(torch.int16)[:n].view(h.shape)  # uniform over -32768 .. 32767
    dropped = round(p * 65536)  # how many of the 65536 values drop an element
    keep = 1.0 - dropped / 65536
    return uniform16.ge(dropped - 32768).to(h.dtype).div_(keep)


class Dropout(nn.Module):
    """Inverted dropout with `dropout_mask`, so the module and the hand-written step
    (harness.training.steps) draw the same masks from the same seed."""

    def __init__(self, p: float) -> None:
        super().__init__()
        self.p = p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * dropout_mask(x, self.p) if self.training and self.p > 0 else x

    def extra_repr(self) -> str:
        return f"p={self.p}"


class MLP(nn.Module):
    """Embedding -> concatenated context -> `hidden_layers` x (linear, tanh, dropout) -> logits."""

    def __init__(
        self,
        vocab_size: int,
        context_length: int,
        embedding_dim: int,
        hidden_width: int,
        hidden_layers: int = 1,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        self.vocab_size = vocab_size
        self.context_length = context_length
        self.embedding = nn.Embedding(vocab_size, embedding_dim)
        layers: list[nn.Module] = []
        fan_in = context_length * embedding_dim
        for _ in range(hidden_layers):
            layers += [nn.Linear(fan_in, hidden_width), nn.Tanh()]
            if dropout > 0:
                layers.append(Dropout(dropout))
            fan_in = hidden_width
        self.hidden = nn.Sequential(*layers)
        self.output = nn.Linear(fan_in, vocab_size)
        self.reset_parameters()

    @classmethod
    def from_hparams(cls, hp: HParams, vocab_size: int) -> MLP:
        return cls(
            vocab_size=vocab_size,
            context_length=hp.context_length,
            embedding_dim=hp.embedding_dim,
            hidden_width=hp.hidden_width,
            hidden_layers=hp.hidden_layers,
            dropout=hp.dropout,
        )

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """Unit-normal embeddings, fan-in-scaled tanh layers, a small output layer."""
        nn.init.normal_(self.embedding.weight)
        for layer in self.hidden:
            if isinstance(layer, nn.Linear):
                nn.init.normal_(layer.weight, std=TANH_GAIN / math.sqrt(layer.in_features))
                nn.init.zeros_(layer.bias)
        nn.init.normal_(self.output.weight, std=OUTPUT_SCALE / math.sqrt(self.output.in_features))
        nn.init.zeros_(self.output.bias)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        """idx (B, T) int64 -> logits (B, vocab_size)."""
        emb = self.embedding(idx)  # (B, T, E)
        h = self.hidden(emb.flatten(1))  # (B, T*E) -> (B, H)
        return self.output(h)  # (B, V)


class Ensemble(nn.Module):
    """Several MLPs of one config (trained on different seeds) that predict together: the
    average of their next-character distributions.

    `forward` returns the log of that average, which serves as logits wherever an MLP's are
    used (its softmax is the average; cross-entropy on it is the ensemble's loss), so
    `mean_loss`, `sample` and `complete` take either.
    """

    def __init__(self, members: Sequence[MLP]) -> None:
        super().__init__()
        if not members or len({(m.vocab_size, m.context_length) for m in members}) != 1:
            raise ValueError("an ensemble needs one or more MLPs of one vocabulary and context")
        self.members = nn.ModuleList(members)
        self.vocab_size = members[0].vocab_size
        self.context_length = members[0].context_length

    @property
    def models(self) -> list[MLP]:
        """The members, in order."""
        return [m for m in self.members if isinstance(m, MLP)]

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        """idx (B, T) int64 -> log of the members' mean probabilities (B, vocab_size)."""
        logp = torch.stack([F.log_softmax(m(idx), dim=-1) for m in self.members])  # (M, B, V)
        return torch.logsumexp(logp, dim=0) - math.log(len(self.members))


class Mixed(nn.Module):
    """An MLP (or an ensemble) mixed with a Kneser-Ney n-gram: `weight` times the network's
    next-character distribution plus 1 - `weight` times the n-gram's, whose history is the
    last order - 1 characters of the context.

    The counts remember rare long contexts that a network of this size smooths away, so the
    two err differently and their mixture beats both (finalize.mix_ngram chooses the weight on
    dev). The n-gram travels as its training words and is counted again when the model is
    loaded. `forward` returns the log of the mixture, used as logits like an Ensemble's.
    """

    CACHE = 200_000  # distinct histories whose n-gram distributions are kept

    def __init__(self, neural: MLP | Ensemble, itos: Sequence[str], words: Sequence[str],
                 order: int, discount: float, weight: float) -> None:
        super().__init__()
        if len(itos) != neural.vocab_size or not set("".join(words)) <= set(itos[1:]):
            raise ValueError("the n-gram's words and vocabulary are not the network's")
        if not 0.0 <= weight <= 1.0 or not 0.0 < discount < 1.0:
            raise ValueError(f"weight must be in 0..1 and discount in (0, 1), got {weight}, "
                             f"{discount}")
        if not 1 <= order <= neural.context_length + 1:
            raise ValueError(f"an n-gram of order {order} needs a context of {order - 1}; the "
                             f"network's is {neural.context_length}")
        self.neural = neural
        self.words = tuple(words)
        self.ngram = baseline.KneserNey(self.words, order, Vocab(tuple(itos)))
        self.order, self.discount, self.weight = order, discount, weight
        self.vocab_size, self.context_length = neural.vocab_size, neural.context_length
        self._cache: dict[bytes, np.ndarray] = {}

    def ngram_probs(self, idx: torch.Tensor) -> torch.Tensor:
        """idx (B, T) int64 -> the n-gram's next-character distributions (B, vocab_size)."""
        n = self.order - 1
        rows = idx[:, idx.shape[1] - n:].cpu().numpy() if n else np.zeros((len(idx), 0))
        out = np.empty((len(rows), self.vocab_size))
        for i, row in enumerate(rows):
            key = row.tobytes()
            p = self._cache.get(key)
            if p is None:
                if len(self._cache) >= self.CACHE:
                    self._cache.clear()
                history = "".join(self.ngram.vocab[j] for j in row)
                p = self._cache[key] = self.ngram.distribution(history, self.discount)
            out[i] = p
        return torch.from_numpy(out).to(device=idx.device, dtype=torch.float32)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        """idx (B, T) int64 -> log of the mixed probabilities (B, vocab_size)."""
        logp = F.log_softmax(self.neural(idx).float(), dim=-1)
        if self.weight == 1.0:
            return logp
        logq = torch.log(self.ngram_probs(idx))
        if self.weight == 0.0:
            return logq
        return torch.logaddexp(logp + math.log(self.weight), logq + math.log(1 - self.weight))


# What evaluation, sampling and saving take: one MLP, an ensemble of them, or either mixed
# with an n-gram.
LanguageModel = MLP | Ensemble | Mixed


def neural_part(model: LanguageModel) -> MLP | Ensemble:
    """The network in `model`: itself, or what a Mixed mixes."""
    return model.neural if isinstance(model, Mixed) else model


def n_params(model: nn.Module) -> int:
    """Number of trainable parameters."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


@torch.no_grad()
def mean_loss(model: LanguageModel, X: torch.Tensor, Y: torch.Tensor, chunk: int = 65536) -> float:
    """Mean cross-entropy of `model` on (X, Y), in eval mode, in fixed chunks (deterministic)."""
    was_training = model.training
    model.eval()
    total = torch.zeros((), dtype=torch.float64, device=X.device)
    for i in range(0, len(Y), chunk):
        logits = model(X[i : i + chunk])
        total += F.cross_entropy(logits, Y[i : i + chunk], reduction="sum").double()
    model.train(was_training)
    return total.item() / len(Y)


@torch.no_grad()
def sample(
    model: LanguageModel,
    n: int,
    *,
    generator: torch.Generator,
    temperature: float = 1.0,
    max_length: int = 32,
    context: torch.Tensor | None = None,
) -> list[list[int]]:
    """Sample `n` sequences of token indices; each stops at the boundary token (0) or max_length.
    `context` (n, T) continues given beginnings (default: all boundary tokens, a new word)."""
    model.eval()
    device = next(model.parameters()).device
    if context is None:
        context = torch.zeros((n, model.context_length), dtype=torch.long, device=device)
    out = torch.zeros((n, max_length), dtype=torch.long, device=device)
    done = torch.zeros(n, dtype=torch.bool, device=device)
    for t in range(max_length):
        probs = F.softmax(model(context) / temperature, dim=-1)  # (n, V)
        nxt = torch.multinomial(probs, 1, generator=generator).squeeze(1)  # (n,)
        nxt = torch.where(done, torch.zeros_like(nxt), nxt)
        out[:, t] = nxt
        done |= nxt == 0
        if bool(done.all()):
            break
        context = torch.cat([context[:, 1:], nxt[:, None]], dim=1)
    # Keep each row up to (not including) its first boundary token.
    return [row[: row.index(0)] if 0 in row else row for row in out.tolist()]


# ---------------------------------------------------------------------------------------------
# Saving and loading: tensors and plain values only, read back with weights_only=True, so
# loading a model file never unpickles code. Format 2 holds a list of members' weights (one
# for an MLP) and, for a Mixed model, its n-gram's words and settings; format 1 files (one
# MLP's "state_dict") still load.

MODEL_FORMAT = 2


def save_model(path: Path, model: LanguageModel, hp: HParams, itos: Sequence[str]) -> None:
    """Write the weights (each member's, for an ensemble), the hyperparameters and the
    vocabulary: all that using it needs. An ensemble's members share `hp` but for the seed.
    The file is replaced whole (written beside it, then renamed): a process killed mid-write
    leaves the previous file, never a cut-off one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    neural = neural_part(model)
    members = list(neural.members) if isinstance(neural, Ensemble) else [neural]
    payload: dict[str, Any] = {
        "format": MODEL_FORMAT,
        "hparams": hp.to_dict(),
        "itos": list(itos),
        "ensemble": isinstance(neural, Ensemble),
        "state_dicts": [{k: v.detach().cpu() for k, v in m.state_dict().items()}
                        for m in members],
    }
    if isinstance(model, Mixed):  # the n-gram as its words: counted again when loaded
        payload["ngram"] = {"words": list(model.words), "order": model.order,
                            "discount": model.discount, "weight": model.weight}
    paths.replace_whole(path, lambda partial: torch.save(payload, partial))


def load_model(path: Path) -> tuple[LanguageModel, HParams, tuple[str, ...]]:
    """Read a file written by `save_model` (weights_only: no code is unpickled)."""
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # pickle.UnpicklingError for code, RuntimeError for junk
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ModelFileError(f"{path}: refused to load (only tensors and plain values are "
                             f"read, never code): {first}") from None
    if not isinstance(payload, dict) or payload.get("format") not in (1, MODEL_FORMAT):
        raise ModelFileError(f"{path}: not a harness model file")
    hp, itos, states = _parts(path, payload)
    memory.check(memory.Estimate({"weights": memory.n_params(hp, len(itos)) * memory.FLOAT
                                  * len(states)}), f"the model in {path}")
    members = []
    for state in states:
        member = MLP.from_hparams(hp, len(itos))
        expected = {k: tuple(v.shape) for k, v in member.state_dict().items()}
        found = {k: tuple(v.shape) for k, v in state.items()}
        if found != expected:
            raise ModelFileError(f"{path}: its weights do not fit its own hyperparameters "
                                 f"({_first_difference(found, expected)})")
        member.load_state_dict(state)
        members.append(member)
    neural: MLP | Ensemble = Ensemble(members) if payload.get("ensemble") else members[0]
    model: LanguageModel = (neural if payload.get("ngram") is None
                            else _mixed(path, neural, itos, payload["ngram"]))
    model.eval()
    return model, hp, itos


MAX_NGRAM_CHARS = 50_000_000  # a model file's n-gram words, all told: counting them is seconds


def _mixed(path: Path, neural: MLP | Ensemble, itos: tuple[str, ...], ngram: Any) -> Mixed:
    """The Mixed model a file's `ngram` entry describes, each value checked before it is
    used. Raises ModelFileError."""
    fields = ngram if isinstance(ngram, dict) else {}
    words, order = fields.get("words"), fields.get("order")
    discount, weight = fields.get("discount"), fields.get("weight")
    if not (isinstance(words, list) and all(isinstance(w, str) for w in words)
            and type(order) is int and type(discount) is float and type(weight) is float):
        raise ModelFileError(f"{path}: its n-gram is not words, an order, a discount and a "
                             "weight")
    if sum(map(len, words)) > MAX_NGRAM_CHARS:
        raise ModelFileError(f"{path}: its n-gram's words hold more than {MAX_NGRAM_CHARS:,} "
                             "characters")
    try:
        return Mixed(neural, itos, words, order, discount, weight)
    except ValueError as exc:
        raise ModelFileError(f"{path}: its n-gram does not fit its network: {exc}") from None


def _parts(path: Path, payload: dict[str, Any]
           ) -> tuple[HParams, tuple[str, ...], list[dict[str, torch.Tensor]]]:
    """A model file's hyperparameters, vocabulary and members' weights, each checked for
    shape before anything is built from them. Raises ModelFileError."""
    raw = payload.get("hparams")
    problems = ([f"{k}: {why}" for k, v in raw.items() if (why := hparams.check_value(k, v))]
                if isinstance(raw, dict) else ["no hyperparameters"])
    itos = payload.get("itos")
    if not isinstance(itos, list | tuple) or not itos or not all(
            isinstance(c, str) and len(c) == 1 for c in itos) or len(set(itos)) != len(itos):
        problems.append("its vocabulary is not a list of distinct characters")
    states = payload.get("state_dicts") or [payload.get("state_dict")]
    if not all(isinstance(st, dict) and all(isinstance(v, torch.Tensor) for v in st.values())
               for st in states):
        problems.append("its weights are not tensors by name")
    if problems:
        raise ModelFileError(f"{path}: not a model this harness can read: "
                             + "; ".join(problems))
    assert isinstance(raw, dict) and isinstance(itos, list | tuple)
    return hparams.make(raw), tuple(itos), states


def _first_difference(found: dict[str, tuple[int, ...]],
                      expected: dict[str, tuple[int, ...]]) -> str:
    for key in sorted(set(found) | set(expected)):
        if found.get(key) != expected.get(key):
            return (f"{key}: {found.get(key, 'missing')}, expected "
                    f"{expected.get(key, 'none')}")
    return "they differ"


def sample_words(model: LanguageModel, itos: Sequence[str], n: int, *, seed: int,
                 temperature: float = 1.0, max_length: int = 32) -> list[str]:
    """`n` words sampled from the model with a seeded generator, decoded with `itos`. Raises
    InputError for a temperature that is not a number > 0 or a seed outside 0..2^63-1, and
    MemoryBudgetExceeded for more names than fit."""
    if not (isinstance(temperature, int | float) and math.isfinite(temperature)
            and temperature > 0):
        raise InputError(f"temperature must be a number > 0, got {temperature!r}")
    if not 0 <= seed <= MAX_SEED:
        raise InputError(f"seed must be in 0..{MAX_SEED}, got {seed}")
    neural = neural_part(model)
    members = len(neural.members) if isinstance(neural, Ensemble) else 1
    memory.check(memory.sampling(n, max_length, len(itos), model.context_length, members),
                 f"sampling {n:,} names of up to {max_length:,} characters")
    device = next(model.parameters()).device
    gen = torch.Generator(device=device).manual_seed(seed)
    rows = sample(model, n, generator=gen, temperature=temperature, max_length=max_length)
    return ["".join(itos[i] for i in row) for row in rows]


def ms_per_name(model: LanguageModel, itos: Sequence[str], n: int = 20) -> float:
    """Milliseconds to sample one name on its own (one at a time, as a deployed model serves
    them), the mean over `n` names, on the model's device and the current torch threads."""
    sample_words(model, itos, 1, seed=0)  # warm-up
    t0 = time.perf_counter()
    for seed in range(n):
        sample_words(model, itos, 1, seed=seed)
    return (time.perf_counter() - t0) / n * 1000


@torch.no_grad()
def complete(model: LanguageModel, itos: Sequence[str], prefixes: Sequence[str], *, seed: int = 0,
             max_length: int = 32) -> list[tuple[str, dict[str, float]]]:
    """For each prefix: a name sampled to complete it (seeded), and the probabilities of the
    next character ('.' ends the name). Raises ValueError on a character outside the
    vocabulary."""
    stoi = {c: i for i, c in enumerate(itos)}
    T = model.context_length
    rows = []
    for prefix in prefixes:
        unknown = sorted(set(prefix) - set(stoi) | ({"."} & set(prefix)))
        if unknown:
            raise ValueError(f"prefix {prefix!r}: characters outside the vocabulary: {unknown}")
        rows.append(([0] * T + [stoi[c] for c in prefix])[-T:] if T else [])
    device = next(model.parameters()).device
    context = torch.tensor(rows, dtype=torch.long, device=device).view(len(prefixes), T)
    model.eval()
    probs = F.softmax(model(context), dim=-1).cpu()  # (n, V)
    gen = torch.Generator(device=device).manual_seed(seed)
    tails = sample(model, len(prefixes), generator=gen, max_length=max_length,
                   context=context)
    return [(prefix + "".join(itos[i] for i in tail),
             {itos[i]: float(p) for i, p in enumerate(probs[j])})
            for j, (prefix, tail) in enumerate(zip(prefixes, tails, strict=True))]
