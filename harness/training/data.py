"""Words -> vocabulary -> seeded split by words -> context windows.

The search sees only `SearchData` (train and dev). The test split is handed out by one function,
`load_test_examples`, which only the final evaluation calls; while a search runs, the split is
sealed (`sealed_test_split`) and that function raises.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import random
import stat
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import torch

from harness.config.schema import DataConfig
from harness.errors import DataError, SealedSplitError
from harness.training import memory

log = logging.getLogger(__name__)

MAX_DATA_BYTES = 256 * 2**20  # a words file larger than this is refused, not read whole
MAX_WORD_CHARS = 1000  # one word per line: a longer line is not a word

BOUNDARY = "."  # starts (as padding) and ends every word; index 0 of every vocabulary


_seals = 0  # how many `sealed_test_split` blocks are open in this process


@contextmanager
def sealed_test_split() -> Iterator[None]:
    """Within this block, `load_test_examples` raises SealedSplitError."""
    global _seals
    _seals += 1
    try:
        yield
    finally:
        _seals -= 1


@dataclass(frozen=True)
class Vocab:
    """Characters of the data plus the boundary token '.' at index 0."""

    itos: tuple[str, ...]

    @classmethod
    def from_words(cls, words: list[str]) -> Vocab:
        return cls((BOUNDARY, *sorted(set("".join(words)))))

    @functools.cached_property
    def stoi(self) -> dict[str, int]:
        return {ch: i for i, ch in enumerate(self.itos)}

    def __len__(self) -> int:
        return len(self.itos)


@dataclass(frozen=True)
class Examples:
    """Next-character examples: X (N, context_length) int64 indices, Y (N,) int64 targets."""

    X: torch.Tensor
    Y: torch.Tensor

    def __len__(self) -> int:
        return len(self.Y)


@dataclass(frozen=True)
class SearchData:
    """What a trial may see: the vocabulary and the train and dev examples. Never the test split."""

    vocab: Vocab
    train: Examples
    dev: Examples
    context_length: int


def bundled_words_path() -> Path:
    """Path of the bundled names.txt (MIT, see resources/NAMES_LICENSE.txt)."""
    return Path(str(resources.files("harness") / "resources" / "names.txt"))


def read_words(path: str | Path | None = None) -> list[str]:
    """Read one word per line (UTF-8); strip spaces and CRLF, drop blank lines."""
    p = Path(path) if path is not None else bundled_words_path()
    try:
        if not stat.S_ISREG(p.stat().st_mode) and not p.is_dir():
            raise DataError(f"data path {p} is not a regular file (a device, pipe or socket "
                            "never ends or cannot be read twice); give a file of words")
        with p.open("rb") as f:
            raw = f.read(MAX_DATA_BYTES + 1)
    except FileNotFoundError:
        raise DataError(f"data file not found: {p}") from None
    except IsADirectoryError:
        raise DataError(f"data path is a directory, not a file: {p}") from None
    except OSError as exc:
        raise DataError(f"cannot read data file {p}: {exc.strerror}") from None
    if len(raw) > MAX_DATA_BYTES:
        raise DataError(f"data file {p} is larger than {MAX_DATA_BYTES // 2**20} MiB; a file of "
                        "words for a character model is far smaller")
    if b"\x00" in raw:
        raise DataError(f"data file {p} looks binary (it contains NUL bytes)")
    try:
        text = raw.decode("utf-8-sig")  # a byte-order mark is not part of the first word
    except UnicodeDecodeError as exc:
        raise DataError(f"data file {p} is not UTF-8 (bad byte at offset {exc.start})") from None
    words = [w.strip() for w in text.splitlines()]
    words = [w for w in words if w]
    long = next((i for i, w in enumerate(words) if len(w) > MAX_WORD_CHARS), None)
    if long is not None:
        raise DataError(f"data file {p}: word {long + 1} is {len(words[long]):,} characters long "
                        f"(at most {MAX_WORD_CHARS:,}); the file should hold one word per line")
    if not words:
        raise DataError(f"data file {p} has no words (it is empty or only blank lines)")
    bad = [w for w in words if BOUNDARY in w]
    if bad:
        raise DataError(
            f"data file {p}: {len(bad)} word(s) contain the boundary character {BOUNDARY!r}, "
            f"which marks the start and end of words (first: {bad[0]!r})"
        )
    return words


def split_words(words: list[str], cfg: DataConfig) -> tuple[list[str], list[str], list[str]]:
    """Shuffle a copy of `words` with `cfg.seed`, then cut it into train/dev/test by fractions.

    With the defaults this is the lectures' `random.seed(42); random.shuffle(words)` and cuts at
    int(0.8 n) and int(0.9 n).
    """
    shuffled = list(words)
    random.Random(cfg.seed).shuffle(shuffled)
    n = len(shuffled)
    n1 = int(cfg.train * n)
    n2 = int((cfg.train + cfg.dev) * n)
    parts = shuffled[:n1], shuffled[n1:n2], shuffled[n2:]
    for name, part in zip(("train", "dev", "test"), parts, strict=True):
        if not part:
            raise DataError(
                f"the {name} split is empty: {n} words split {cfg.train}/{cfg.dev}/{cfg.test}"
            )
    return parts


def build_examples(words: list[str], vocab: Vocab, context_length: int) -> Examples:
    """Every next-character example of `words` as context windows, built with tensor ops.

    Each word w becomes the stream [0]*context_length + w + [0]; window i of it is the
    `context_length` tokens before the target at position i. A word of n characters gives n + 1
    examples.
    """
    if context_length < 1:
        raise DataError(f"context_length must be >= 1, got {context_length}")
    pad = [0] * context_length
    stream: list[int] = []
    is_target: list[bool] = []
    for w in words:
        stream += pad
        stream += [vocab.stoi[c] for c in w]
        stream.append(0)
        is_target += [False] * context_length + [True] * (len(w) + 1)
    tokens = torch.tensor(stream, dtype=torch.long)
    targets = torch.nonzero(torch.tensor(is_target)).squeeze(1)  # (N,) positions in the stream
    window = torch.arange(-context_length, 0)  # (T,)
    X = tokens[targets[:, None] + window[None, :]]  # (N, T)
    Y = tokens[targets]  # (N,)
    return Examples(X, Y)


@dataclass(frozen=True)
class DataSummary:
    """What a data config yields: words per split, examples of the train and dev splits (one
    per character and end of each word), vocabulary size, characters of train and dev."""

    words: tuple[int, int, int]
    train_examples: int
    vocab_size: int
    dev_examples: int = 0

    def tokens(self, context_length: int) -> int:
        """Characters the train and dev examples are built from, padding included."""
        return (self.train_examples + self.dev_examples
                + (self.words[0] + self.words[1]) * context_length)


def summarize(cfg: DataConfig) -> DataSummary:
    """Read and split the data (raising DataError on any problem) and count what it yields."""
    (train_w, dev_w, test_w), vocab = _words_and_vocab(cfg)
    return DataSummary((len(train_w), len(dev_w), len(test_w)),
                       sum(len(w) + 1 for w in train_w), len(vocab),
                       sum(len(w) + 1 for w in dev_w))


@dataclass(frozen=True)
class Fingerprint:
    """What a study was created on: its words (sha256 of them, one per line), the file's size,
    and the words of each split. Recorded with the study; checked by every process that
    joins it, so that no trial, final model or test evaluation runs on other data."""

    sha256: str
    bytes: int
    words: tuple[int, int, int]

    def changes(self, recorded: Fingerprint) -> list[str]:
        """How this data differs from `recorded`, in words (empty when it does not)."""
        out = []
        if self.sha256 != recorded.sha256:
            out.append(f"its words differ (sha256 {self.sha256[:12]}..., recorded "
                       f"{recorded.sha256[:12]}...)")
        if self.bytes != recorded.bytes:
            out.append(f"the file has {self.bytes:,} bytes, recorded {recorded.bytes:,}")
        if self.words != recorded.words:
            out.append("the split has {} / {} / {} words".format(*self.words)
                       + ", recorded {} / {} / {}".format(*recorded.words))
        return out


def fingerprint(cfg: DataConfig) -> Fingerprint:
    """The data's fingerprint, read afresh (a file changed since this process read it shows)."""
    words = read_words(cfg.path)
    path = Path(cfg.path) if cfg.path is not None else bundled_words_path()
    digest = hashlib.sha256("\n".join(words).encode("utf-8")).hexdigest()
    train, dev, test = split_words(words, cfg)
    return Fingerprint(digest, path.stat().st_size, (len(train), len(dev), len(test)))


@functools.lru_cache(maxsize=4)
def _words_and_vocab(cfg: DataConfig) -> tuple[tuple[list[str], list[str], list[str]], Vocab]:
    words = read_words(cfg.path)
    # The vocabulary comes from all words, so that dev characters are never out of vocabulary.
    return split_words(words, cfg), Vocab.from_words(words)


@functools.lru_cache(maxsize=8)
def load_search_data(cfg: DataConfig, context_length: int) -> SearchData:
    """Train and dev examples for one context length (cached: trials reuse them). Raises
    MemoryBudgetExceeded, before building anything, when they cannot fit."""
    (train_w, dev_w, _test_w), vocab = _words_and_vocab(cfg)
    summary = summarize(cfg)
    memory.check(memory.examples(summary.train_examples + summary.dev_examples,
                                 summary.tokens(context_length), context_length),
                 f"the examples of context length {context_length:,}")
    data = SearchData(
        vocab=vocab,
        train=build_examples(train_w, vocab, context_length),
        dev=build_examples(dev_w, vocab, context_length),
        context_length=context_length,
    )
    log.debug("data: %d train / %d dev examples", len(data.train), len(data.dev))
    return data


def load_test_examples(cfg: DataConfig, context_length: int) -> Examples:
    """The test split. Only the final evaluation calls this; never during a search."""
    _, vocab = _words_and_vocab(cfg)
    return build_examples(load_test_words(cfg), vocab, context_length)


def load_test_words(cfg: DataConfig) -> list[str]:
    """The test split's words (for the count-based references). Only the final evaluation
    calls this; never during a search."""
    if _seals:
        raise SealedSplitError("the test split is sealed while a search runs; it is evaluated "
                              "once, by finalize")
    (_train_w, _dev_w, test_w), _vocab = _words_and_vocab(cfg)
    return list(test_w)


def training_words(cfg: DataConfig) -> frozenset[str]:
    """The training words, to tell sampled names that are new from those seen in training."""
    (train_w, _dev_w, _test_w), _vocab = _words_and_vocab(cfg)
    return frozenset(train_w)
