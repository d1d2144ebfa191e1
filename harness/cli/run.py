"""The commands that train: run-study, worker, finalize, train, lr-find."""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
from collections.abc import Sequence
from pathlib import Path

from harness import api
from harness.cli.progress import Progress
from harness.cli.render import describe_timing, format_final, format_front, tracking_address
from harness.config import StudySpec, parse_assignments
from harness.config.hparams import AUTO_PRECISION, HParams
from harness.errors import AlreadyFinalized, SpecError
from harness.results import plots, sizing
from harness.results.lr_find import lr_find
from harness.search import counting, records
from harness.search.worker import choose_threads, join_study, work
from harness.training import precision
from harness.training.data import load_search_data, summarize
from harness.training.train import Evaluation, train
from harness.util import paths


def explicit(args: argparse.Namespace) -> set[str]:
    """The study keys set on the command line (--set KEY=...)."""
    return {item.partition("=")[0].strip() for item in args.set}


def run_study(args: argparse.Namespace, specs: Sequence[StudySpec]) -> int:
    spec = specs[0]
    workers = args.workers or spec.workers.count
    pruner = "off (Pareto mode)" if spec.objective.pareto else spec.pruner.type
    print(f"study {spec.name}: {spec.budget.n_trials} trials of {spec.budget.steps} steps, "
          f"sampler {spec.sampler.type}, pruner {pruner}, {workers} worker(s)"
          + (f", {spec.budget.wall_time / 60:g} minutes in all (budget.wall_time)"
             if spec.budget.wall_time else ""), file=sys.stderr)
    finalizes = spec.finalize.enabled and not args.no_finalize
    study = api.search(spec, workers=workers, observer=Progress(), device=args.device,
                       finalize_next=finalizes, allow_data_change=args.allow_data_change)
    record = records.read_record(study)
    if record is not None and record.warm_from:
        print(f"warm start: {record.warm_trials} complete trials of study {record.warm_from} "
              f"added ({record.warm_skipped} skipped: they do not fit this study)")
    recs = records.search_records(study)
    print(f"study {spec.name}: " + ", ".join(
        f"{n} {s.lower()}" for s, n in counting.counts_by_state(recs).items()))
    if spec.objective.pareto:
        print(format_front(recs, spec.objective.pareto))
    elif best := counting.best(recs):
        print(f"best trial {best.number}: dev loss {best.value:.4f}")
        for k, v in best.hparams.items():
            print(f"  {k} = {v}")
    if stopped := records.read_stopped(study):
        print(f"stopped before budget.n_trials: {stopped}")
    print(f"leaderboard: {paths.study_dir(spec.name) / 'leaderboard.csv'}")
    print(f"MLflow UI:   {tracking_address(spec)}")
    if not finalizes:
        return 0
    try:
        return _finalize(spec, args, force=False, workers=workers)
    except AlreadyFinalized as exc:
        print(f"not finalized again: {exc}")
        return 0


def _finalize(spec: StudySpec, args: argparse.Namespace, *, force: bool, workers: int) -> int:
    progress = Progress()
    result = api.finalize(spec, force=force, device=args.device, workers=workers,
                          observer=progress, allow_data_change=args.allow_data_change)
    progress.status("")
    print(format_final(result))
    return 0


def worker(args: argparse.Namespace, specs: Sequence[StudySpec]) -> int:
    spec = specs[0]
    paths.require_writable()
    study, record = join_study(spec, explicit(args), args.allow_data_change)
    threads, others = choose_threads(spec, study)
    why = "workers.threads" if spec.workers.threads else (
        f"the cores shared with {others} other live worker(s) of the study on this host")
    print(f"worker joining study {spec.name} ({record.n_trials} trials in all): {threads} torch "
          f"thread(s) ({why})", file=sys.stderr)
    work(spec, observer=Progress(), device=args.device, threads=threads,
         explicit=explicit(args), allow_data_change=args.allow_data_change)
    return 0


def finalize(args: argparse.Namespace, specs: Sequence[StudySpec]) -> int:
    spec = specs[0]
    return _finalize(spec, args, force=args.force, workers=args.workers or spec.workers.count)


def hparams(spec: StudySpec, params: Sequence[str], device: str = "cpu") -> HParams:
    """The study's fixed values plus `--param NAME=VALUE`s; a bad value is a SpecError. A
    precision of auto is measured here, for this config on `device`, and said."""
    try:
        values = parse_assignments(params, "--param", spec.source)
        if values.get("precision", spec.fixed.get("precision")) == AUTO_PRECISION:
            timing = precision.measure(spec.base_hparams(**{**values, "precision": "fp32"}),
                             summarize(spec.data).vocab_size, device=device)
            print(f"precision auto: {timing.choice} (a step of this config: "
                  f"{describe_timing(timing.ms)})", file=sys.stderr)
            values["precision"] = timing.choice
        return spec.base_hparams(**values)
    except SpecError:
        raise
    except ValueError as exc:
        raise SpecError(spec.source, [str(exc)]) from None


def train_one(args: argparse.Namespace, specs: Sequence[StudySpec]) -> int:
    spec = specs[0]
    hp = hparams(spec, args.param, args.device)
    progress = Progress()

    def on_eval(ev: Evaluation) -> None:
        text = (f"step {ev.step}/{spec.budget.steps}  dev {ev.dev_loss:.4f}  "
                f"train {ev.train_loss:.4f}  lr {ev.lr:.3g}")
        # A live line on a terminal; in a log, one line per evaluation.
        progress.status(text) if progress.live else progress.line(text)

    data = load_search_data(spec.data, hp.context_length)
    result = train(hp, data, steps=spec.budget.steps, eval_every=spec.budget.eval_every,
                   on_eval=on_eval, device=args.device, step_kind=args.step)
    progress.status("")
    if args.json:
        print(json.dumps({**result.summary(), "config": hp.to_dict()}))
    else:
        for key, value in result.summary().items():
            print(f"{key:>14}: {value:.4f}" if isinstance(value, float) else f"{key:>14}: {value}")
    return 0


def find_lr(args: argparse.Namespace, specs: Sequence[StudySpec]) -> int:
    spec = specs[0]
    paths.require_writable()
    hp = hparams(spec, args.param)
    print(f"sweeping lr from {args.low:g} to {args.high:g} over {args.steps} steps "
          f"({hp.optimizer}, batch {hp.batch_size})", file=sys.stderr)
    result = lr_find(hp, load_search_data(spec.data, hp.context_length), steps=args.steps,
                     low=args.low, high=args.high)
    path = plots.lr_finder(result.exponents, result.losses, result.suggested,
                           paths.study_dir(spec.name) / "plots" / "lr_find.png")
    low, high = result.suggested
    if result.diverged_at:
        print(f"training diverged at lr {result.diverged_at:.3g}")
    print(f"lowest loss at lr {high:.3g}; suggested search range: lr {low:.3g} .. {high:.3g}")
    print(f"  search: {{lr: {{type: float, low: {low:.2e}, high: {high:.2e}, log: true}}}}")
    print(f"plot: {path}")
    return 0


def init(args: argparse.Namespace, specs: Sequence[StudySpec]) -> int:
    """Write a study file sized to a word list and this machine."""
    words = Path(args.words)
    out = paths.output_file(Path(args.out or f"{words.stem}.yaml"))
    workers = args.workers or sizing.default_workers()
    name = re.sub(r"[^A-Za-z0-9._-]+", "-", out.stem).strip("-._") or "study"
    print(f"reading {words} and scoring the count-based models on its dev split...",
          file=sys.stderr)
    profile = sizing.profile(words)
    print("timing the training step here...", file=sys.stderr)
    pace = sizing.measure_pace(profile, batch=256, threads=max(1, (os.cpu_count() or 1)
                                                                // workers))
    plan = sizing.plan(profile, pace, args.minutes, workers)
    sizing.estimate_ok(profile, plan)
    out.write_text(sizing.study_text(out, profile, pace, plan, name), encoding="utf-8")
    for line in sizing.summarize_plan(profile, pace, plan):
        print(line)
    print(f"written: {out}\nrun it:  harness run-study {out}")
    return 0
