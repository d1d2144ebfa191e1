"""`harness init`: a study sized to the words and this machine, that run-study takes as is."""

from __future__ import annotations

from pathlib import Path

import pytest

from harness.cli import main
from harness.config import load_spec
from harness.results import sizing
from harness.training.baseline import BaselineResult
from harness.training.data import bundled_words_path

KN = BaselineResult("Kneser-Ney 6-gram", 6, 1.98, 0.85)


def _profile(words: int, train_examples: int, vocab: int = 27, longest: int = 15,
             p95: int = 9) -> sizing.Profile:
    return sizing.Profile("words.txt", words, train_examples, vocab,
                          {"p50": 6, "p90": 8, "p95": p95, "p99": 10, "max": longest}, KN)


FAST = sizing.Pace(fixed_ms=1.0, per_mac_ms=1e-8, precision="bf16", threads=1)


def test_the_plan_follows_the_data_and_the_time() -> None:
    names = sizing.plan(_profile(32_033, 182_625), FAST, minutes=60, workers=2)
    assert names.batch == 256 and names.steps == 18_000 and names.eval_every == 900
    assert names.context == (10, 16)  # whole words: 95% within 9 characters, the longest 15
    assert names.width[1] >= 512 and names.fill
    small = sizing.plan(_profile(3_000, 18_000), FAST, minutes=60, workers=2)
    assert small.batch == 128 and small.steps == 4000  # 25 passes over 18,000 examples
    assert small.width[1] < names.width[1]  # fewer examples: narrower (parameters per example)
    slow = sizing.Pace(fixed_ms=5.0, per_mac_ms=1e-6, precision="fp32", threads=1)
    short = sizing.plan(_profile(32_033, 182_625), slow, minutes=10, workers=2)
    assert short.width[1] < names.width[1] and short.steps <= names.steps  # less time: smaller
    assert not short.fill


@pytest.mark.slow
def test_init_writes_a_valid_study_that_explains_each_choice(tmp_path: Path, capsys) -> None:
    words = tmp_path / "some names.txt"
    words.write_text("\n".join(bundled_words_path().read_text().split()[:4000]) + "\n")
    out = tmp_path / "names.yaml"
    assert main(["init", str(words), "--minutes", "20", "--workers", "2", "--out",
                 str(out)]) == 0
    printed = capsys.readouterr().out
    assert "to beat: Kneser-Ney" in printed and f"run it:  harness run-study {out}" in printed
    spec = load_spec(out)
    assert spec.name == "names" and spec.data.path == str(words)
    assert spec.budget.wall_time == 1200 and spec.workers.count == 2
    assert spec.finalize.ensemble and spec.finalize.mix_ngram and spec.auto_precision
    lines = out.read_text().splitlines()
    header = next(i for i, line in enumerate(lines) if not line.startswith("#"))
    assert header <= 5
    # every choice says why, on its line or the one after
    for key in ("steps:", "batch_size:", "context_length:", "hidden_width:", "min_resource:"):
        line = next(i for i, text in enumerate(lines) if text.strip().startswith(key))
        assert "#" in lines[line] or lines[line + 1].strip().startswith("#"), key
