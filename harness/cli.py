"""The `harness` command: argument parsing and printing only; the work is done in the modules."""

from __future__ import annotations

import argparse
import contextlib
import json
import signal
import sys
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any, TextIO

from harness import __version__
from harness.redact import redact

if TYPE_CHECKING:
    from harness.final import FinalResult, Retraining
    from harness.hparams import HParams
    from harness.spec import PickRule, StudySpec
    from harness.storage import StudyRecord
    from harness.trials import TrialRecord

EXIT_USAGE = 2  # bad study file, data file or arguments: nothing was run
EXIT_FAILED = 1
EXIT_INTERRUPTED = 130

EPILOG = """\
examples:
  harness run-study studies/quick.yaml               a real search, then the final model
  harness leaderboard studies/quick.yaml --out leaderboard.csv
  harness finalize studies/quick.yaml                choose on dev, then test once
  harness status studies/quick.yaml                  where the study stands
  harness reproduce studies/quick.yaml --trial 3     retrain trial 3 and compare its losses
  harness report studies/quick.yaml --out report.md  provenance, leaderboard, final model
  harness sample studies/quick.yaml -n 20 --seed 0   names from the final model
  harness train studies/lecture.yaml --json          the lecture's config, no search
  harness lr-find studies/lecture.yaml               a range for the lr of a search
  harness baseline studies/quick.yaml                count-based n-grams: what to beat
  harness train studies/quick.yaml --param lr=0.05 --param hidden_width=128
  harness ui studies/quick.yaml                      the MLflow UI on 127.0.0.1:5000

Results go under ./mlruns (set HARNESS_ROOT to move them): MLflow's store (mlflow.db,
artifacts/), the embedded Optuna storage (optuna.journal) and per-study outputs (studies/NAME/).
"""


# ---------------------------------------------------------------------------------------------
# Progress display


class Progress:
    """A live status line on a terminal (one line per finished trial otherwise), on stderr.
    Observes the search (harness.events.SearchObserver) and finalize (FinalizeObserver)."""

    def __init__(self, stream: TextIO | None = None) -> None:
        self.stream = stream or sys.stderr
        self.live = self.stream.isatty()
        self.tally = ""  # "4/200 trials, best 1.9330": as of the last finished trial
        self.running: dict[int, str] = {}  # trial number -> its latest progress
        self.picked_by: PickRule | None = None  # finalize in Pareto mode
        self.clock: tuple[float, float] | None = None  # budget.wall_time: (start, seconds)

    def status(self, text: str) -> None:
        if self.live:
            self.stream.write("\r\033[K" + text)
            self.stream.flush()

    def line(self, text: str) -> None:
        if self.live:
            self.stream.write("\r\033[K")
        self.stream.write(text + "\n")
        self.stream.flush()

    # -- the search

    def search_started(self, record: StudyRecord) -> None:
        self.clock = None if record.wall_time is None else (record.timeout_start,
                                                            record.wall_time)
        if record.precision is not None and record.precision_ms is not None:
            self.line(f"precision auto: {record.precision} for every trial (a step of the "
                      f"largest model the study samples: {describe_timing(record.precision_ms)})")

    def budget_used(self) -> str:
        """How much of budget.wall_time has passed, as '12 of 60 min' (seconds for a budget
        under 2 minutes); empty without a wall time."""
        if self.clock is None:
            return ""
        start, budget = self.clock
        used = time.time() - start
        if budget < 120:
            return f"{used:.0f} of {budget:.0f} s"
        return f"{used / 60:.0f} of {budget / 60:.0f} min"

    def header(self) -> str:
        """The live line's start: the trials so far and, with a wall time, the clock now."""
        parts = [part for part in (self.tally, self.budget_used()) if part]
        return f"[{', '.join(parts)}] " if parts else ""

    def trial_started(self, number: int, params: Mapping[str, Any]) -> None:
        self.running[number] = "starting"

    def evaluated(self, number: int, step: int, steps: int, dev_loss: float) -> None:
        self.running[number] = f"step {step}/{steps} dev {dev_loss:.4f}"
        self.status(self.header() + "  ".join(f"trial {n}: {text}"
                                              for n, text in sorted(self.running.items())))

    def trial_finished(self, trial: TrialRecord, done: int, total: int,
                       best: float | None) -> None:
        self.running.pop(trial.number, None)
        loss = trial.best_dev_loss
        figure = f"best dev {loss:.4f} at step {trial.best_step}" if loss else ""
        if trial.state.name == "FAIL":
            figure = trial.fail_reason or "failed"
        if trial.infeasible:
            figure = f"infeasible: {trial.infeasible}" + ("" if loss else ", not trained")
        took = f"  ({trial.duration_s:.1f} s)" if trial.duration_s else ""
        best_text = f"{best:.4f}" if best is not None else "-"
        self.tally = f"{done}/{total} trials, best {best_text}"
        used = self.budget_used()
        self.line(f"[{done}/{total}] trial {trial.number:>3} {trial.state.name:<8} "
                  f"{figure}{took}  best so far {best_text}" + (f"  ({used})" if used else ""))

    # -- finalize

    def picked(self, trial: TrialRecord, front: Sequence[TrialRecord], rule: PickRule) -> None:
        from harness import pareto

        self.picked_by = rule
        self.line(f"Pareto front: {len(front)} trials; finalize.pick {rule.as_written()}: "
                  f"{describe_pick(rule)}\n  -> trial {trial.number}: dev {trial.value:.4f}, "
                  f"{pareto.cost(trial, rule.metric):,.0f} {pareto.UNITS[rule.metric]}")

    def retrainings_planned(self, jobs: Sequence[Retraining], processes: int) -> None:
        trials = dict.fromkeys(f"trial {j.trial}: {j.steps} steps" for j in jobs)
        how = ("chosen on mean dev loss" if len(trials) > 1 else
               "the trial picked from the front" if self.picked_by else
               "one candidate (finalize.top_k 1): nothing to choose between")
        self.line(f"finalizing: {len(jobs)} retrainings on {processes} process(es), "
                  f"{', '.join(trials)}; {how}, then the test split, once")

    def filling(self, jobs: Sequence[Retraining], processes: int, left_s: float) -> None:
        self.line(f"finalize.fill: {left_s / 60:.0f} min left of budget.wall_time: "
                  f"{len(jobs)} more seed(s) of trial {jobs[0].trial} on {processes} "
                  f"process(es), {jobs[0].steps} steps each; each joins the ensemble if it "
                  "lowers its dev loss")

    def retraining_evaluated(self, job: Retraining, step: int, dev_loss: float) -> None:
        self.status(f"trial {job.trial}, seed {job.seed}: step {step}/{job.steps}, "
                    f"dev {dev_loss:.4f}")

    def retraining_done(self, job: Retraining, dev_loss: float, done: int, total: int) -> None:
        self.line(f"[{done}/{total}] trial {job.trial}, seed {job.seed}: best dev {dev_loss:.4f}")


def format_front(recs: Sequence[TrialRecord], metric: str) -> str:
    """Pareto mode's result: the front, cheapest first."""
    from harness import pareto

    front, units = pareto.front(recs, metric), pareto.UNITS[metric]
    lines = [f"Pareto front (dev loss against {units}): {len(front)} trials"]
    lines += [f"  trial {r.number:>4}: {pareto.cost(r, metric):>12,.0f} {units}, "
              f"dev {r.value:.4f}" for r in front]
    return "\n".join(lines)


def describe_pick(rule: PickRule) -> str:
    """Pareto mode's finalize.pick in words."""
    if rule.limit is None:
        return (f"the knee of the front, the trial farthest below the line between its two ends "
                f"(dev loss against log {rule.metric}, each scaled to 0..1)")
    return f"the lowest dev loss on the front with {rule.metric} <= {rule.limit:,.0f}"


def describe_timing(ms: Mapping[str, float]) -> str:
    """precision auto's measurement, ms per step by precision: 'fp32 17.2 ms, bf16 31.1 ms'."""
    return ", ".join(f"{p} {t:.1f} ms" for p, t in ms.items())


def format_final(r: FinalResult) -> str:
    """The finalize report: a person reads it at a glance."""
    from harness import report

    lines = [f"final model of study {r.study} (trial {r.chosen_trial}, {r.size} parameters)",
             *([f"  picked:    from the Pareto front by finalize.pick {r.pick}"] if r.pick else []),
             "  candidates (dev loss, mean +- std over seeds "
             + ", ".join(map(str, r.seeds)) + "):"]
    for c in r.candidates:
        mark = "*" if c.trial == r.chosen_trial else " "
        lines.append(f"   {mark} trial {c.trial:>4}: {c.dev_mean:.4f} +- {c.dev_std:.4f}")
    evaluated = (f"   (test split evaluated {r.test_evaluations} times)"
                 if r.test_evaluations > 1 else "")
    lines += [f"  dev loss   {r.dev_mean:.4f} +- {r.dev_std:.4f}",
              f"  test loss  {r.test_mean:.4f} +- {r.test_std:.4f}{evaluated}"]
    if r.trial_model_test_loss is not None:
        lines.append(f"  trial's    dev {r.trial_model_dev_loss:.4f}, test "
                     f"{r.trial_model_test_loss:.4f} (trial {r.chosen_trial}'s own model, "
                     f"seed {r.trial_model_seed}, trained in the search)")
    if r.ensemble_test_loss is not None:
        lines.append(f"  ensemble   dev {r.ensemble_dev_loss:.4f}, test "
                     f"{r.ensemble_test_loss:.4f} (the saved model: {report.ensemble_members(r)} "
                     "averaged)")
    if r.fill_seeds:
        joined = [str(s) for s, k in zip(r.fill_seeds, r.fill_kept, strict=True) if k]
        lines.append(f"  filled     seeds {', '.join(map(str, r.fill_seeds))} "
                     f"({r.fill_steps} steps, the time left): dev "
                     + ", ".join(f"{d:.4f}" for d in r.fill_dev_losses)
                     + f"; joined the ensemble: {', '.join(joined) or 'none'}")
    for ref in r.references:  # scored on test at the same moment: test beside test
        lines.append(f"  reference  {ref.model}: dev {ref.dev_loss:.4f}, test {ref.test_loss:.4f}")
    lines += ["  config:    " + ", ".join(f"{k}={v}" for k, v in r.config.items())]
    if r.samples:
        novel = (f"   ({r.novel_share:.0%} not in the training words)"
                 if r.novel_share is not None else "")
        lines.append(f"  samples:   {' '.join(r.samples[:10])}{novel}")
    lines += [f"  model:     {r.model_path}",
              f"  MLflow:    run {r.mlflow_run_id} (the 'final model' run of the study)"]
    if r.registered:
        name = r.registered.split("/")[1]
        lines.append(f"  registry:  {r.registered}, alias champion: "
                     f"mlflow.pyfunc.load_model('models:/{name}@champion')")
    lines.append(f"  commit:    {r.commit}")
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------
# Subcommands


def _load(args: argparse.Namespace, path: str | None = None) -> StudySpec:
    """The study file with --set, --storage and --tracking-uri applied."""
    from harness.spec import load_spec

    values = {}
    if getattr(args, "storage", None):
        values["storage"] = args.storage
    if getattr(args, "tracking_uri", None):
        values["tracking.uri"] = args.tracking_uri
    spec = load_spec(path or args.study, args.set, values)
    if getattr(args, "enqueue", None):  # after the file's own enqueue list
        values["enqueue"] = [*(spec.raw.get("enqueue") or []), *args.enqueue]
        spec = load_spec(path or args.study, args.set, values)
    return spec


def _explicit(args: argparse.Namespace) -> set[str]:
    """The study keys set on the command line (--set KEY=...)."""
    return {item.partition("=")[0].strip() for item in args.set}


def _tracking_address(spec: StudySpec) -> str:
    from harness import paths

    uri = spec.tracking.uri
    if uri and uri.startswith(("http://", "https://")):
        return redact(uri)
    return f"mlflow ui --backend-store-uri {redact(uri or paths.tracking_uri())}"


def cmd_run_study(args: argparse.Namespace) -> int:
    from harness import paths, storage, trials
    from harness.coordinator import run_search

    spec = _load(args)
    workers = args.workers or spec.workers.count
    pruner = "off (Pareto mode)" if spec.objective.pareto else spec.pruner.type
    print(f"study {spec.name}: {spec.budget.n_trials} trials of {spec.budget.steps} steps, "
          f"sampler {spec.sampler.type}, pruner {pruner}, {workers} worker(s)"
          + (f", {spec.budget.wall_time / 60:g} minutes in all (budget.wall_time)"
             if spec.budget.wall_time else ""), file=sys.stderr)
    finalizes = spec.finalize.enabled and not args.no_finalize
    study = run_search(spec, workers=workers, observer=Progress(), device=args.device,
                       finalize=finalizes)
    record = storage.read_record(study)
    if record is not None and record.warm_from:
        print(f"warm start: {record.warm_trials} complete trials of study {record.warm_from} "
              f"added ({record.warm_skipped} skipped: they do not fit this study)")
    recs = trials.search_records(study)
    print(f"study {spec.name}: " + ", ".join(
        f"{n} {s.lower()}" for s, n in trials.counts_by_state(recs).items()))
    if spec.objective.pareto:
        print(format_front(recs, spec.objective.pareto))
    elif best := trials.status(recs).best:  # the best feasible complete trial
        print(f"best trial {best.number}: dev loss {best.value:.4f}")
        for k, v in best.hparams.items():
            print(f"  {k} = {v}")
    if stopped := storage.read_stopped(study):
        print(f"stopped before budget.n_trials: {stopped}")
    print(f"leaderboard: {paths.study_dir(spec.name) / 'leaderboard.csv'}")
    print(f"MLflow UI:   {_tracking_address(spec)}")
    if not finalizes:
        return 0
    from harness.final import AlreadyFinalized

    try:
        return _finalize(spec, force=False, device=args.device, workers=workers)
    except AlreadyFinalized as exc:
        print(f"not finalized again: {exc}")
        return 0


def _finalize(spec: StudySpec, *, force: bool, device: str, workers: int) -> int:
    from harness.final import finalize

    progress = Progress()
    result = finalize(spec, force=force, device=device, workers=workers, observer=progress)
    progress.status("")
    print(format_final(result))
    return 0


def cmd_worker(args: argparse.Namespace) -> int:
    from harness.study import choose_threads, join_study, work

    spec = _load(args)
    study, record = join_study(spec, _explicit(args))
    threads, others = choose_threads(spec, study)
    why = "workers.threads" if spec.workers.threads else (
        f"the cores shared with {others} other live worker(s) of the study on this host")
    print(f"worker joining study {spec.name} ({record.n_trials} trials in all): {threads} torch "
          f"thread(s) ({why})", file=sys.stderr)
    work(spec, observer=Progress(), device=args.device, threads=threads,
         explicit=_explicit(args))
    return 0


def cmd_finalize(args: argparse.Namespace) -> int:
    spec = _load(args)
    return _finalize(spec, force=args.force, device=args.device,
                     workers=args.workers or spec.workers.count)


def cmd_status(args: argparse.Namespace) -> int:
    import datetime

    from harness import storage, trials
    from harness.study import load_study, open_checkpoints

    spec = _load(args)
    study = load_study(spec)
    record = storage.read_record(study)
    status = trials.status(trials.records(study))
    now = datetime.datetime.now()  # Optuna records local times
    total = f" of {record.n_trials}" if record else ""
    print(f"study {spec.name} ({storage.describe(spec.storage)}): {status.counted}{total} "
          "trials counted")
    print("  states:  " + ", ".join(f"{n} {s.lower()}" for s, n in status.states.items()))
    if status.warm and record is not None:
        print(f"  warm:    {status.warm} complete trials of study {record.warm_from} "
              "(warm_start: they inform the sampler and are not counted)")
    if status.best is not None:
        best = status.best
        ago = (f", {(now - best.completed).total_seconds() / 60:.0f} min ago"
               if best.completed else "")
        print(f"  best:    trial {best.number}, dev {best.value:.4f} (the last improvement: "
              f"{best.completed:%Y-%m-%d %H:%M:%S}{ago})")
    if spec.objective.pareto:
        print("\n".join("  " + line for line in
                        format_front(trials.records(study), spec.objective.pareto).splitlines()))
    if stopped := storage.read_stopped(study):
        print(f"  stopped: {stopped}")
    for r in status.running:
        step = max(r.intermediate, default=0)
        dev = f", dev {r.intermediate[step]:.4f}" if r.intermediate else ""
        saved = f", checkpoint at step {r.checkpoint_step}" if r.checkpoint_step else ""
        resumed = f", resumed from step {r.resumed_from_step}" if r.resumed_from_step else ""
        print(f"  running: trial {r.number} on {r.worker or '?'}, step {step}{dev}{saved}"
              f"{resumed}")
    ckpts = open_checkpoints(spec)
    print(f"  checkpoints: {ckpts.disk_bytes() / 1e6:.1f} MB on this machine's disk "
          f"({ckpts.folder})")
    if final := storage.read_final(study):
        from harness.final import FinalResult  # the result as recorded; nothing is evaluated

        r = FinalResult.from_dict(final)
        ensemble = (f", ensemble of {r.members} models {r.ensemble_test_loss:.4f}"
                    if r.ensemble_test_loss is not None else "")
        print(f"  final:   test {r.test_mean:.4f} +- {r.test_std:.4f}{ensemble} (trial "
              f"{r.chosen_trial}), the test split evaluated {r.test_evaluations} time(s)")
    else:
        print("  final:   not finalized")
    return 0


def cmd_sample(args: argparse.Namespace) -> int:
    from harness.final import final_model
    from harness.model import sample_words

    spec = _load(args)
    if args.model:  # a registered model, through the study's tracking store
        from harness.registry import load
        from harness.study import open_tracker

        model, _hp, itos = load(args.model, open_tracker(spec).uri)
    else:
        model, _hp, itos = final_model(spec)
    for word in sample_words(model, itos, args.n, seed=args.seed, temperature=args.temperature,
                             max_length=args.max_length):
        print(word)
    return 0


def _hparams(spec: StudySpec, params: Sequence[str], device: str = "cpu") -> HParams:
    """The study's fixed values plus `--param NAME=VALUE`s; a bad value is a SpecError. A
    precision of auto is measured here, for this config on `device`, and said."""
    from harness.hparams import AUTO_PRECISION
    from harness.spec import SpecError, parse_assignments

    try:
        values = parse_assignments(params, "--param", spec.source)
        if values.get("precision", spec.fixed.get("precision")) == AUTO_PRECISION:
            from harness.data import summarize
            from harness.precision import measure

            timing = measure(spec.base_hparams(**{**values, "precision": "fp32"}),
                             summarize(spec.data).vocab_size, device=device)
            print(f"precision auto: {timing.choice} (a step of this config: "
                  f"{describe_timing(timing.ms)})", file=sys.stderr)
            values["precision"] = timing.choice
        return spec.base_hparams(**values)
    except ValueError as exc:
        raise SpecError(spec.source, [str(exc)]) from None


def cmd_train(args: argparse.Namespace) -> int:
    from harness.data import load_search_data
    from harness.train import train

    spec = _load(args)
    hp = _hparams(spec, args.param, args.device)
    progress = Progress()

    def on_eval(ev: Any) -> None:
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


def cmd_lr_find(args: argparse.Namespace) -> int:
    from harness import paths, plots
    from harness.data import load_search_data
    from harness.lr_find import lr_find

    spec = _load(args)
    hp = _hparams(spec, args.param)
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


def cmd_ui(args: argparse.Namespace) -> int:
    import subprocess

    from harness import paths
    from harness.study import StudyNotFound, open_tracker
    from harness.tracking import port_in_use, ui_command

    spec = _load(args)
    uri = spec.tracking.uri or paths.tracking_uri()
    if uri.startswith(("http://", "https://")):
        print(f"the study is tracked on an MLflow server: open {redact(uri)}")
        return 0
    if spec.tracking.uri is None and not (paths.root() / "mlflow.db").exists():
        raise StudyNotFound(f"no MLflow store yet at {paths.root() / 'mlflow.db'}: run the "
                            f"study first (harness run-study {spec.source})")
    if port_in_use(args.host, args.port):
        print(f"error: port {args.port} on {args.host} is already in use; choose another with "
              "--port", file=sys.stderr)
        return EXIT_FAILED
    tracker = open_tracker(spec)
    # The runs with their metric charts (MLflow 3 otherwise opens its GenAI overview).
    address = (f"http://{args.host}:{args.port}/#/experiments/{tracker.experiment_id}/runs"
               "?compareRunsMode=CHART")
    print(f"MLflow UI for study {spec.name}: {address}  (expand the study's run to list its "
          "trials; Ctrl-C stops the UI)", flush=True)
    try:
        return subprocess.call(ui_command(uri, args.host, args.port))
    except KeyboardInterrupt:
        return 0


def cmd_reproduce(args: argparse.Namespace) -> int:
    from harness.reproduce import reproduce

    spec = _load(args)
    print(f"retraining trial {args.trial} of study {spec.name} from its recorded config and "
          "seed", file=sys.stderr)
    r = reproduce(spec, args.trial, device=args.device)
    print(f"trial {r.trial}: best dev loss recorded {r.recorded:.6f}, reproduced "
          f"{r.reproduced:.6f} ({r.steps} steps, {r.threads} torch thread(s); recorded with "
          f"{r.recorded_threads or 'unknown'})")
    print(f"largest difference over the dev-loss curve: {r.max_difference:.2e} "
          f"({'matches' if r.matches else 'does not match'} to 1e-6)")
    if not r.matches and r.seed_noise is not None:
        print(f"the best losses differ by {abs(r.recorded - r.reproduced):.4f}: "
              f"{'within' if r.within_noise else 'beyond'} twice the seed noise recorded by "
              f"finalize (dev std over seeds {r.seed_noise:.4f})")
    if r.differences:
        print("provenance differences (recorded -> now):")
        for key, (then, now) in r.differences.items():
            print(f"  {key}: {then} -> {now}")
    else:
        print("provenance: the same code, packages and machine kind as recorded")
    return 0 if r.matches or r.within_noise else EXIT_FAILED


def cmd_report(args: argparse.Namespace) -> int:
    from pathlib import Path

    from harness import report

    out = report.write(_load(args), Path(args.out) if args.out else None)
    print(f"report written to {out} (and logged to the study's MLflow run)")
    return 0


def cmd_baseline(args: argparse.Namespace) -> int:
    from harness import baseline, paths

    spec = _load(args)
    print(f"count-based models on the split of {spec.name} (train counts, dev loss; the "
          "test split is not read)", file=sys.stderr)
    results = baseline.baselines(spec.data)
    baseline.save(results, paths.study_dir(spec.name) / "baselines.json")
    for r in results:
        discount = f"  (discount {r.discount})" if r.discount is not None else ""
        print(f"{r.model:<22} dev loss {r.dev_loss:.4f}{discount}")
    return 0


def cmd_leaderboard(args: argparse.Namespace) -> int:
    from pathlib import Path

    from harness import baseline, leaderboard, paths
    from harness.study import load_study

    boards = []
    for path in args.study:
        spec = _load(args, path)
        refs = (baseline.cached(spec.data, paths.study_dir(spec.name) / "baselines.json")
                if args.baselines else ())
        boards.append(leaderboard.board(spec.name, load_study(spec), spec.search_names(), refs,
                                        spec.objective.pareto))
    text = leaderboard.render(boards, args.format, args.top)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(text, encoding="utf-8")
        print(f"written to {args.out}", file=sys.stderr)
    else:
        sys.stdout.write(text)
    for b in boards:
        for note in b.notes:
            print(f"note: {note}", file=sys.stderr)
    return 0


# ---------------------------------------------------------------------------------------------
# Parser and entry point


def positive_int(text: str) -> int:
    """An argparse type: an integer >= 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _options() -> dict[str, argparse.ArgumentParser]:
    """Options shared by several commands, each declared once (argparse parent parsers)."""
    stores = argparse.ArgumentParser(add_help=False)
    stores.add_argument("--storage", metavar="URL",
                        help="the study's Optuna storage, e.g. postgresql://USER@HOST/DB "
                             "(default: the study file's storage, else mlruns/optuna.journal)")
    stores.add_argument("--tracking-uri", metavar="URI",
                        help="MLflow tracking server or database, e.g. http://HOST:5000 "
                             "(default: the study file's tracking.uri, else mlruns/mlflow.db)")
    device = argparse.ArgumentParser(add_help=False)
    device.add_argument("--device", default="cpu",
                        help="torch device for training: cpu, cuda, auto (default: cpu)")
    workers = argparse.ArgumentParser(add_help=False)
    workers.add_argument("--workers", type=positive_int, metavar="N",
                         help="worker processes (default: the study's workers.count): on CPU "
                              "each gets cores/N torch threads; on GPUs, workers.per_gpu per GPU")
    param = argparse.ArgumentParser(add_help=False)
    param.add_argument("--param", action="append", default=[], metavar="NAME=VALUE",
                       help="a hyperparameter value, e.g. --param lr=0.05 (repeatable; the "
                            "study's fixed values and the defaults otherwise)")
    return {"stores": stores, "device": device, "workers": workers, "param": param}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="harness",
        description="Hyperparameter search for character-level MLP language models "
                    "(Bengio et al. 2003), with Optuna studies and MLflow tracking.",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"harness {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress details")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    opts = _options()

    def add(name: str, func: Any, help_text: str, *shared: str,
            many: bool = False) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help_text, description=help_text,
                           parents=[opts[s] for s in shared])
        p.add_argument("study", metavar="STUDY.yaml", nargs="+" if many else None,
                       help="the study file" + ("(s)" if many else ""))
        p.add_argument("--set", action="append", default=[], metavar="KEY.PATH=VALUE",
                       help="override a key of the study file, e.g. --set budget.n_trials=4 "
                            "(repeatable)")
        p.set_defaults(func=func)
        return p

    _search_commands(add)
    _result_commands(add)
    return parser


Add = Any  # add(name, func, help, *shared options, many=False) -> the command's parser


def _search_commands(add: Add) -> None:
    """The commands that run trials or the final model."""
    p = add("run-study", cmd_run_study,
            "Run (or resume) the study's search until it has budget.n_trials trials, then "
            "finalize: retrain the best trials, choose on dev, evaluate the test split once.",
            "stores", "device", "workers")
    p.add_argument("--no-finalize", action="store_true",
                   help="stop after the search; do not retrain the best trials or touch the "
                        "test split")
    p.add_argument("--enqueue", action="append", default=[], metavar="NAME",
                   help="run a named config first, cut to the study's space (repeatable; "
                        "names: lecture). Like `enqueue:` in the study file: it takes effect "
                        "when the study is created")
    add("worker", cmd_worker,
        "Join a study started by `run-study` (from another terminal or machine): run its "
        "trials until it has the budget it was started with.", "stores", "device")
    p = add("finalize", cmd_finalize,
            "Retrain the top trials on several seeds, choose by mean dev loss, then evaluate "
            "the test split once, save the model and record the result.",
            "stores", "device", "workers")
    p.add_argument("--force", action="store_true",
                   help="finalize again even though the test split was already evaluated "
                        "(the study's storage counts every evaluation)")


def _result_commands(add: Add) -> None:
    """The commands that look at results, and the single-config tools."""
    add("status", cmd_status, "Where the study stands: trials by state, the running ones with "
        "their worker and step, the best so far and when it came, the final model.", "stores")
    p = add("sample", cmd_sample, "Print names sampled from the study's final model.", "stores")
    p.add_argument("-n", type=positive_int, default=20, help="how many names (default: 20)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")
    p.add_argument("--temperature", type=float, default=1.0,
                   help="softmax temperature: below 1 safer, above 1 wilder (default: 1.0)")
    p.add_argument("--max-length", type=positive_int, default=32,
                   help="longest name, in characters (default: 32)")
    p.add_argument("--model", metavar="URI",
                   help="sample from a registered model instead, e.g. models:/quick@champion "
                        "(found in the study's tracking store)")
    p = add("leaderboard", cmd_leaderboard,
            "The studies' trials ranked by best dev loss, as CSV or Markdown (several study "
            "files make one table with a study column).", "stores", many=True)
    p.add_argument("--out", metavar="FILE", help="write the table here (default: standard output)")
    p.add_argument("--format", choices=("csv", "md"), default="csv",
                   help="csv: every column; md: the searched parameters, for a terminal or a "
                        "report (default: csv)")
    p.add_argument("--top", type=positive_int, metavar="N", help="only the first N ranked rows")
    p.add_argument("--baselines", action="store_true",
                   help="add the count-based reference models (harness baseline) as rows")
    p = add("ui", cmd_ui, "Serve the MLflow UI for the study's tracking store and print the "
                          "address of its experiment.", "stores")
    p.add_argument("--host", default="127.0.0.1",
                   help="address to listen on (default: 127.0.0.1, this machine only)")
    p.add_argument("--port", type=int, default=5000, help="port (default: 5000)")
    p = add("train", cmd_train,
            "Train one config (the study's fixed values plus --param values), no search.",
            "device", "param")
    p.add_argument("--json", action="store_true", help="print the result as one JSON object")
    p.add_argument("--step", default="manual", choices=("manual", "autograd", "graphed"),
                   help="training step: manual (hand-written backward, the default), autograd "
                        "(the reference), graphed (manual captured as a CUDA graph on a GPU)")
    p = add("lr-find", cmd_lr_find,
            "The learning-rate finder: lr grows exponentially over a short run; plots the loss "
            "against log10(lr) and suggests a range for the search.", "param")
    p.add_argument("--steps", type=positive_int, default=1000,
                   help="steps of the sweep (default: 1000)")
    p.add_argument("--low", type=float, default=1e-3, help="first lr (default: 1e-3)")
    p.add_argument("--high", type=float, default=1.0, help="last lr (default: 1)")
    p = add("reproduce", cmd_reproduce,
            "Retrain a recorded trial from its config and seed, on its thread count, and "
            "compare its dev-loss curve (equal to 1e-6 on the same machine kind and packages; "
            "exit 1 otherwise) and provenance.", "stores", "device")
    p.add_argument("--trial", type=int, required=True, metavar="N", help="the trial's number")
    p = add("report", cmd_report,
            "Write the study's report as one Markdown file: provenance, the leaderboard's top "
            "10, the figures, the final model's dev and test with the references, 20 names.",
            "stores")
    p.add_argument("--out", metavar="FILE",
                   help="where to write it (default: mlruns/studies/NAME/report.md)")
    add("baseline", cmd_baseline,
        "Dev losses of count-based models on the study's split: the lecture's bigram and "
        "Kneser-Ney n-grams of orders 2 to 7 (discount tuned on dev).")


@contextlib.contextmanager
def _sigterm_as_interrupt() -> Iterator[None]:
    """`kill PID` (SIGTERM: what a scheduler or `timeout` sends) stops a command as Ctrl-C
    does: local workers stopped, their trials re-queued, exit 130. Without it the command
    would die at once and leave its worker processes running. Later SIGTERMs are ignored
    while it stops."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    from harness.coordinator import interrupt_once

    previous = signal.signal(signal.SIGTERM, interrupt_once())
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `harness` console script; returns the exit code."""
    args = build_parser().parse_args(argv)
    from harness import logs, provenance

    provenance.set_command(sys.argv[1:] if argv is None else argv)
    logs.configure(args.verbose)
    from harness.coordinator import WorkersFailed
    from harness.data import DataError
    from harness.final import AlreadyFinalized, NothingToFinalize
    from harness.journal import JournalDamaged
    from harness.model import ModelFileError
    from harness.reproduce import CannotReproduce
    from harness.spec import SpecError
    from harness.storage import StorageError, StudyNotFound
    from harness.study import BudgetConflict
    from harness.tracking import TrackingError

    try:
        with _sigterm_as_interrupt():
            return args.func(args)
    except (SpecError, DataError, BudgetConflict) as exc:
        print(f"error: {redact(str(exc))}", file=sys.stderr)
        return EXIT_USAGE
    except (StudyNotFound, StorageError, TrackingError, AlreadyFinalized, NothingToFinalize,
            WorkersFailed, ModelFileError, JournalDamaged, CannotReproduce) as exc:
        print(f"error: {redact(str(exc))}", file=sys.stderr)
        return EXIT_FAILED
    except KeyboardInterrupt:
        print("\ninterrupted; run the same command again to resume", file=sys.stderr)
        return EXIT_INTERRUPTED


if __name__ == "__main__":
    sys.exit(main())
