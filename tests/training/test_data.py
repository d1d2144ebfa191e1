from __future__ import annotations

import random
from pathlib import Path

import pytest
import torch

from harness.config import DataConfig
from harness.errors import DataError
from harness.training.data import (
    Vocab,
    build_examples,
    load_search_data,
    load_test_examples,
    read_words,
    split_words,
)


def lecture_examples(words: list[str], stoi: dict[str, int], block: int):
    """The lecture's loop, as the reference for the tensor-op windows."""
    X, Y = [], []
    for w in words:
        context = [0] * block
        for ch in w + ".":
            ix = stoi[ch]
            X.append(context)
            Y.append(ix)
            context = context[1:] + [ix]
    return torch.tensor(X), torch.tensor(Y)


def test_canonical_split_counts_with_context_3():
    cfg = DataConfig()
    data = load_search_data(cfg, 3)
    assert (len(data.train), len(data.dev)) == (182_625, 22_655)
    assert len(load_test_examples(cfg, 3)) == 22_866


def test_split_is_the_lectures_shuffle():
    words = read_words()
    expected = list(words)
    random.seed(42)
    random.shuffle(expected)
    train, dev, test = split_words(words, DataConfig())
    n1, n2 = int(0.8 * len(words)), int(0.9 * len(words))
    assert (train, dev, test) == (expected[:n1], expected[n1:n2], expected[n2:])
    assert (len(train), len(dev), len(test)) == (25_626, 3_203, 3_204)


def test_vocab_has_boundary_at_zero():
    vocab = Vocab.from_words(read_words())
    assert len(vocab) == 27
    assert vocab.itos[0] == "." and vocab.stoi["a"] == 1 and vocab.stoi["z"] == 26


@pytest.mark.parametrize("block", [1, 3, 8, 20])
def test_windows_match_the_lecture_loop(block: int):
    words = ["emma", "ava", "x", "isabella"]
    vocab = Vocab.from_words(words)
    ex = build_examples(words, vocab, block)
    X, Y = lecture_examples(words, vocab.stoi, block)
    assert torch.equal(ex.X, X) and torch.equal(ex.Y, Y)
    assert ex.X.shape == (sum(len(w) + 1 for w in words), block)


def test_read_words_handles_crlf_spaces_and_blank_lines(tmp_path: Path):
    p = tmp_path / "w.txt"
    p.write_bytes(b"  anna \r\n\r\nbob\r\n   \r\ncarl")
    assert read_words(p) == ["anna", "bob", "carl"]


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"", "no words"),
        (b"\n  \n\n", "no words"),
        (b"ab\x00cd\n", "binary"),
        (b"caf\xe9\n", "not UTF-8"),
        (b"anna\nmr.bob\n", "boundary character"),
    ],
)
def test_read_words_rejects_bad_files(tmp_path: Path, content: bytes, message: str):
    p = tmp_path / "w.txt"
    p.write_bytes(content)
    with pytest.raises(DataError, match=message):
        read_words(p)


def test_read_words_missing_file(tmp_path: Path):
    with pytest.raises(DataError, match="not found"):
        read_words(tmp_path / "nope.txt")


def test_split_that_leaves_dev_empty_is_an_error():
    with pytest.raises(DataError, match="dev split is empty"):
        split_words(["ab", "cd", "ef"], DataConfig(train=0.8, dev=0.1, test=0.1))


def test_vocabulary_is_built_from_the_data(tmp_path: Path):
    p = tmp_path / "w.txt"
    p.write_text("zoë\nálvaro\nbob\n" * 10, encoding="utf-8")
    data = load_search_data(DataConfig(path=str(p)), 2)
    assert set(data.vocab.itos) == set(".zoëálvarb")
    assert data.vocab.itos[0] == "."
