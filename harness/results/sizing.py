"""`harness init`: a study sized to a word list and to this machine, written as a study file.

What an expert would look at before a search, measured: the words (their lengths, alphabet
and examples), the count-based models to beat on the dev split, and this machine's time per
training step at a few model sizes. From these, rules that hold for this family of models
(two wide tanh layers, AdamW with a late step decay, an average of the weights, dropout and
weight decay against overfitting) are sized: the context covers whole words, the trial is
long enough to converge on this much data, the widest model is the widest whose trials fit
the time often enough, pruning rungs sit at quarters of a trial, and the final model is an
ensemble when the time allows. Each choice is written beside its key, in one line.
"""

from __future__ import annotations

import json
import os
import statistics
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from harness.config import DataConfig
from harness.config.hparams import HParams
from harness.training import baseline, memory, precision
from harness.training.data import read_words, split_words, summarize

EPOCHS = 25  # passes over the train split that a trial of these models needs to converge
MIN_STEPS, MAX_STEPS = 3_000, 40_000
EVALUATIONS = 20  # per trial: dev evaluations, and the pruner's decisions
FULL_TRIALS = 10  # full-length trials the widest config must leave room for, all workers
FINAL_SHARE = 0.3  # of the time, at most, for the final model's retrainings (2 rounds)
WIDTHS = (64, 96, 128, 192, 256, 384, 512, 768, 1024, 1536)
PARAMS_PER_EXAMPLE = 12  # wider models than this many parameters per example overfit


@dataclass(frozen=True)
class Profile:
    """What the words are: counts, lengths, alphabet, and the count-based models on dev."""

    path: str
    words: int
    train_examples: int
    vocab: int
    lengths: dict[str, int]  # p50, p90, p95, p99, max
    kneser_ney: baseline.BaselineResult  # the best order on dev


@dataclass(frozen=True)
class Pace:
    """This machine's milliseconds per training step: ms = fixed + per_mac * multiply-adds."""

    fixed_ms: float
    per_mac_ms: float
    precision: str  # the faster where measured
    threads: int

    def step_ms(self, hp: HParams, vocab: int) -> float:
        return self.fixed_ms + self.per_mac_ms * macs(hp, vocab)


def macs(hp: HParams, vocab: int) -> float:
    """Multiply-adds of one forward pass over a minibatch (a step is about three of these)."""
    inner = hp.context_length * hp.embedding_dim * hp.hidden_width + \
        (hp.hidden_layers - 1) * hp.hidden_width ** 2 + hp.hidden_width * vocab
    return float(hp.batch_size * inner)


def profile(path: Path) -> Profile:
    """Read the words, split them as a study does, and score the count-based models."""
    cfg = DataConfig(path=str(path))
    words = read_words(path)
    lengths = sorted(len(w) for w in words)

    def at(q: float) -> int:
        return lengths[int(q * (len(lengths) - 1))]

    split_words(words, cfg)  # raises DataError for a split that cannot work
    summary = summarize(cfg)
    results = baseline.baselines(cfg)
    best = min((r for r in results if r.discount is not None), key=lambda r: r.dev_loss)
    return Profile(str(path), len(words), summary.train_examples, summary.vocab_size,
                   {"p50": at(0.5), "p90": at(0.9), "p95": at(0.95), "p99": at(0.99),
                    "max": lengths[-1]}, best)


def measure_pace(profile: Profile, batch: int, threads: int) -> Pace:
    """Time the training step at three widths (both precisions) and fit a line through the
    faster precision's times against multiply-adds."""
    context = min(16, profile.lengths["max"] + 1)
    points = []
    choices = []
    for width in (256, 512, 1024):
        hp = HParams(context_length=context, embedding_dim=32, hidden_width=width,
                     hidden_layers=2, batch_size=batch, optimizer="adamw")
        timing = precision.measure(hp, profile.vocab, threads=threads)
        choices.append(timing.choice)
        points.append((macs(hp, profile.vocab), timing.ms[timing.choice]))
    chosen = statistics.mode(choices)
    xs, ys = zip(*points, strict=True)
    slope = statistics.linear_regression(xs, ys).slope
    fixed = max(0.0, statistics.fmean(ys) - slope * statistics.fmean(xs))
    return Pace(fixed, max(slope, 1e-12), chosen, threads)


@dataclass(frozen=True)
class Plan:
    """The study's sizes, and why (a line each)."""

    minutes: float
    workers: int
    batch: int
    steps: int
    eval_every: int
    context: tuple[int, int]
    embedding: tuple[int, int]
    width: tuple[int, int]
    trial_s: float  # a full trial of the widest config
    fill: bool
    reasons: dict[str, str]


def plan(p: Profile, pace: Pace, minutes: float, workers: int) -> Plan:
    """Size a study to the words `p` and this machine's `pace` for `minutes` on `workers`."""
    batch = 256 if p.train_examples >= 50_000 else 128 if p.train_examples >= 10_000 else 64
    steps = _round(EPOCHS * p.train_examples / batch, 1000, MIN_STEPS, MAX_STEPS)
    context = (max(3, min(p.lengths["p95"] + 1, 12)), max(4, min(16, p.lengths["max"] + 1)))
    context = (min(context[0], context[1] - 2), context[1])
    embedding = (16, 48 if p.vocab <= 64 else 64)
    budget_s = 60 * minutes * workers

    def trial_s(width: int, n_steps: int) -> float:
        hp = HParams(context_length=context[1], embedding_dim=embedding[1], hidden_width=width,
                     hidden_layers=2, batch_size=batch)
        return 1.15 * n_steps * pace.step_ms(hp, p.vocab) / 1000  # evaluations: about 15%

    def fits(width: int, n_steps: int) -> bool:
        return (trial_s(width, n_steps) * FULL_TRIALS <= budget_s * (1 - FINAL_SHARE)
                and 2 * trial_s(width, n_steps) <= 60 * minutes * FINAL_SHARE)

    cap = PARAMS_PER_EXAMPLE * p.train_examples
    allowed = [w for w in WIDTHS if 2 * w * w + w * (context[1] * embedding[1] + p.vocab) <= cap]
    while not any(fits(w, steps) for w in allowed[:1] or WIDTHS[:1]) and steps > MIN_STEPS:
        steps = max(MIN_STEPS, steps * 3 // 4 // 1000 * 1000)
    wide = max((w for w in allowed if fits(w, steps)), default=WIDTHS[0])
    width = (max(WIDTHS[0], wide // 2), wide)
    eval_every = _round(steps / EVALUATIONS, 100, 100, steps)
    full = trial_s(wide, steps)
    reasons = {
        "batch": f"{p.train_examples:,} training examples",
        "steps": f"about {EPOCHS} passes over the train split at batch {batch}",
        "context": f"words of up to {p.lengths['max']} characters (95% within "
                   f"{p.lengths['p95']}): a context that holds whole words",
        "width": f"the widest whose trial ({full / 60:.1f} min here) fits {FULL_TRIALS} times "
                 f"in the time, under {PARAMS_PER_EXAMPLE} parameters per example",
    }
    return Plan(minutes, workers, batch, steps, eval_every, context, embedding, width, full,
                minutes >= 20, reasons)


def _round(x: float, unit: int, low: int, high: int) -> int:
    return int(min(high, max(low, round(x / unit) * unit)))


def default_workers() -> int:
    return max(1, os.cpu_count() or 1)


def study_text(path: Path, p: Profile, pace: Pace, plan_: Plan, name: str) -> str:
    """The study file's text, to be written at `path`: each choice with its reason."""
    pl, kn = plan_, p.kneser_ney
    rungs = _round(pl.steps / 4, pl.eval_every, pl.eval_every, pl.steps)
    ema = 0.999 if pl.steps >= 10_000 else 0.998
    lines = [
        f"# Written by `harness init` for {pl.minutes:g} minutes on {pl.workers} worker(s) here.",
        f"#   harness run-study {path}",
        f"# To beat: the Kneser-Ney {kn.order}-gram, dev {kn.dev_loss:.4f} on this split.",
        f"# Results: mlruns/studies/{name}/. Each key's comment says why init chose it.",
        (f"name: {name}", ""),
        (f"data: {{path: {json.dumps(p.path)}, train: 0.8, dev: 0.1, test: 0.1, seed: 42}}",
         "a relative path is read from the folder harness runs in"),
        ("budget:", ""),
        ("  n_trials: 500", "an upper bound: the wall time ends the search"),
        (f"  steps: {pl.steps}", pl.reasons["steps"]),
        (f"  eval_every: {pl.eval_every}", f"{EVALUATIONS} dev evaluations a trial"),
        (f"  wall_time: {int(60 * pl.minutes)}", "seconds, finalize included"),
        ("sampler:", ""),
        ("  type: tpe", "multivariate TPE: the parameters modelled jointly"),
        ("  seed: 0", ""),
        ("  n_startup_trials: 3", "the 2 starting configs, one at random, then TPE"),
        ("pruner:", ""),
        ("  type: hyperband", "stops weak trials at rungs of training steps"),
        (f"  min_resource: {rungs}", "a quarter of a trial: these models start slowly"),
        ("  reduction_factor: 3", ""),
        ("workers:", ""),
        (f"  count: {pl.workers}", f"one process per core, {pace.threads} thread(s) each"),
        ("finalize:", ""),
        ("  top_k: 2", "the 2 best configs on 2 fresh seeds: chosen on mean dev"),
        ("  seeds: 2", ""),
        ("  ensemble: true", "the final model averages the seeds' and trial's models"),
        (f"  fill: {str(pl.fill).lower()}", "the time left trains more seeds, kept if they help"),
        ("  mix_ngram: true", "mixed with the Kneser-Ney n-gram, the weight chosen on dev"),
        ("fixed:", ""),
        ("  seed: 0", ""),
        ("  precision: auto", f"the faster here, measured (init saw {pace.precision})"),
        ("  hidden_layers: 2", "two tanh layers: this family's best at every size"),
        (f"  batch_size: {pl.batch}", pl.reasons["batch"]),
        ("  optimizer: adamw", ""),
        ("  lr_schedule: step", "a late drop of the rate (lr_step_at 1.0: none)"),
        (f"  ema_decay: {ema}", "evaluate an average of the weights: less noise"),
        ("enqueue:", "two starting points, from the rules, sized to these words"),
        *[(f"  - {_flow(config)}", "") for config in _starting_configs(pl)],
        ("search:", ""),
        (f"  context_length: {{type: int, low: {pl.context[0]}, high: {pl.context[1]}}}",
         pl.reasons["context"]),
        (f"  embedding_dim: {{type: int, low: {pl.embedding[0]}, high: {pl.embedding[1]}, "
         "log: true}", ""),
        (f"  hidden_width: {{type: int, low: {pl.width[0]}, high: {pl.width[1]}, log: true}}",
         pl.reasons["width"]),
        ("  dropout: {type: float, low: 0.05, high: 0.4}", ""),
        ("  weight_decay: {type: float, low: 1.0e-3, high: 1.0e-1, log: true}", ""),
        ("  lr: {type: float, low: 2.0e-4, high: 1.5e-3, log: true}", ""),
        ("  lr_step_factor: {type: float, low: 0.02, high: 0.2, log: true}", ""),
        ("  lr_step_at: {type: float, low: 0.5, high: 1.0}", "1.0: no drop"),
    ]
    return "\n".join(line if isinstance(line, str) else _commented(*line)
                     for line in lines) + "\n"


def _starting_configs(pl: Plan) -> tuple[dict[str, float], dict[str, float]]:
    """Two known-good starting points scaled to the plan's space: a wide, long-context one
    with a late drop of the rate, and a middle one with none."""
    first = {"context_length": pl.context[1] - 1, "embedding_dim": pl.embedding[1] * 3 // 4,
             "hidden_width": pl.width[1], "dropout": 0.2, "weight_decay": 0.05,
             "lr": 5.0e-4, "lr_step_factor": 0.05, "lr_step_at": 0.9}
    second = {"context_length": (pl.context[0] + pl.context[1]) // 2,
              "embedding_dim": pl.embedding[0] * 2,
              "hidden_width": max(pl.width[0], pl.width[1] * 3 // 4), "dropout": 0.15,
              "weight_decay": 0.02, "lr": 7.0e-4, "lr_step_factor": 0.1, "lr_step_at": 1.0}
    return first, second


def _commented(text: str, comment: str) -> str:
    """A YAML line with its comment after it (on the next line when it is long)."""
    if not comment:
        return text
    if len(text) < 24:
        return f"{text:<24}# {comment}"
    return f"{text}\n{'':<24}# {comment}"


def _flow(config: dict[str, float]) -> str:
    return "{" + ", ".join(f"{k}: {v:g}" for k, v in config.items()) + "}"


def estimate_ok(p: Profile, pl: Plan) -> None:
    """Raise MemoryBudgetExceeded when the widest config could not fit here."""
    hp = HParams(context_length=pl.context[1], embedding_dim=pl.embedding[1],
                 hidden_width=pl.width[1], hidden_layers=2, batch_size=pl.batch,
                 optimizer="adamw", ema_decay=0.999)
    memory.check(memory.training(hp, p.vocab, p.train_examples // 10), "the widest config")


def summarize_plan(p: Profile, pace: Pace, pl: Plan) -> Sequence[str]:
    """What init found, in lines a person reads."""
    return [f"words: {p.words:,} ({p.train_examples:,} training examples, {p.vocab} characters, "
            f"95% of words within {p.lengths['p95']} characters)",
            f"to beat: Kneser-Ney {p.kneser_ney.order}-gram, dev {p.kneser_ney.dev_loss:.4f}",
            f"this machine: {pace.fixed_ms:.2f} ms + {pace.per_mac_ms * 1e6:.3f} ms per million "
            f"multiply-adds a step, {pace.precision}, {pace.threads} thread(s) per worker",
            f"trials of {pl.steps:,} steps at batch {pl.batch}; widths {pl.width[0]}-"
            f"{pl.width[1]} (the widest trial about {pl.trial_s / 60:.1f} min), context "
            f"{pl.context[0]}-{pl.context[1]}"]

