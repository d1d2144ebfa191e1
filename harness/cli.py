"""The `harness` command: argument parsing and printing only; the work is done in the modules."""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, TextIO

from harness import __version__
from harness.redact import redact

EXIT_USAGE = 2  # bad study file, data file or arguments: nothing was run
EXIT_FAILED = 1
EXIT_INTERRUPTED = 130

EPILOG = """\
examples:
  harness run-study studies/quick.yaml               a real search, then the final model
  harness leaderboard studies/quick.yaml --out leaderboard.csv
  harness finalize studies/quick.yaml                choose on dev, then test once
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
    """A live status line on a terminal (one line per finished trial otherwise), on stderr."""

    def __init__(self, stream: TextIO | None = None) -> None:
        self.stream = stream or sys.stderr
        self.live = self.stream.isatty()
        self.header = ""
        self.running: dict[int, str] = {}  # trial number -> its latest progress

    def status(self, text: str) -> None:
        if self.live:
            self.stream.write("\r\033[K" + text)
            self.stream.flush()

    def line(self, text: str) -> None:
        if self.live:
            self.stream.write("\r\033[K")
        self.stream.write(text + "\n")
        self.stream.flush()

    def trial_started(self, number: int, params: Mapping[str, Any]) -> None:
        self.running[number] = "starting"

    def evaluated(self, number: int, step: int, steps: int, dev_loss: float) -> None:
        self.running[number] = f"step {step}/{steps} dev {dev_loss:.4f}"
        self.status(self.header + "  ".join(f"trial {n}: {text}"
                                            for n, text in sorted(self.running.items())))

    def trial_finished(self, trial: Any, done: int, total: int, best: float | None) -> None:
        self.running.pop(trial.number, None)
        attrs = trial.user_attrs
        loss = attrs.get("best_dev_loss")
        figure = f"best dev {loss:.4f} at step {attrs.get('best_step')}" if loss else ""
        if trial.state.name == "FAIL":
            figure = attrs.get("fail_reason", "failed")
        took = f"  ({trial.duration.total_seconds():.1f} s)" if trial.duration else ""
        best_text = f"{best:.4f}" if best is not None else "-"
        self.header = f"[{done}/{total} trials, best {best_text}] "
        self.line(f"[{done}/{total}] trial {trial.number:>3} {trial.state.name:<8} "
                  f"{figure}{took}  best so far {best_text}")


# ---------------------------------------------------------------------------------------------
# Subcommands


def _load(args: argparse.Namespace) -> Any:
    from harness.spec import load_spec

    values = {}
    if getattr(args, "storage", None):
        values["storage"] = args.storage
    if getattr(args, "tracking_uri", None):
        values["tracking.uri"] = args.tracking_uri
    return load_spec(args.study, args.set, values)


def cmd_run_study(args: argparse.Namespace) -> int:
    from harness.coordinator import run_search

    spec = _load(args)
    workers = args.workers or spec.workers.count
    print(f"study {spec.name}: {spec.budget.n_trials} trials of {spec.budget.steps} steps, "
          f"sampler {spec.sampler.type}, pruner {spec.pruner.type}, {workers} worker(s)",
          file=sys.stderr)
    study = run_search(spec, workers=workers, observer=Progress(), device=args.device)
    from harness.study import search_trials

    trials = search_trials(study)
    complete = [t for t in trials if t.state.name == "COMPLETE"]
    counts = {s: sum(t.state.name == s for t in trials) for s in ("COMPLETE", "PRUNED", "FAIL")}
    print(f"study {spec.name}: " + ", ".join(f"{n} {s.lower()}" for s, n in counts.items()))
    if complete:
        best = study.best_trial
        print(f"best trial {best.number}: dev loss {best.value:.4f}")
        for k, v in best.user_attrs.get("config", best.params).items():
            print(f"  {k} = {v}")
    from harness import paths

    print(f"leaderboard: {paths.study_dir(spec.name) / 'leaderboard.csv'}")
    if spec.tracking.uri and spec.tracking.uri.startswith(("http://", "https://")):
        print(f"MLflow UI:   {redact(spec.tracking.uri)}")
    else:
        print("MLflow UI:   mlflow ui --backend-store-uri "
              f"{redact(spec.tracking.uri or paths.tracking_uri())}")
    if args.no_finalize or not spec.finalize.enabled:
        return 0
    from harness.final import AlreadyFinalized

    try:
        return _finalize_and_report(spec, force=False, device=args.device, workers=workers)
    except AlreadyFinalized as exc:
        print(f"already finalized: test loss {exc.record['test_mean']:.4f} "
              f"+- {exc.record['test_std']:.4f} (harness finalize --force to redo)")
        return 0


def _finalize_and_report(spec: Any, *, force: bool, device: str, workers: int = 1) -> int:
    from harness.final import finalize

    progress = Progress()
    header = [f"finalizing {spec.name}: top {spec.finalize.top_k} trials x {spec.finalize.seeds} "
              "seeds, chosen on mean dev loss; then the test split, once"]

    def report(message: str) -> None:
        if header:  # printed once work starts, not when finalize refuses up front
            progress.line(header.pop())
        progress.status(message)

    record = finalize(spec, force=force, device=device, workers=workers, progress=report)
    progress.status("")
    print(format_final(record))
    return 0


def format_final(record: Mapping[str, Any]) -> str:
    """The finalize report: a person reads it at a glance."""
    lines = [f"final model of study {record['study']} (trial {record['chosen_trial']}, "
             f"{record['n_params']:,} parameters)"]
    lines += ["  candidates (dev loss, mean +- std over seeds " +
              ", ".join(map(str, record["seeds"])) + "):"]
    for c in record["candidates"]:
        mark = "*" if c["trial"] == record["chosen_trial"] else " "
        lines.append(f"   {mark} trial {c['trial']:>4}: {c['dev_mean']:.4f} +- {c['dev_std']:.4f}")
    lines += [
        f"  dev loss   {record['dev_mean']:.4f} +- {record['dev_std']:.4f}",
        f"  test loss  {record['test_mean']:.4f} +- {record['test_std']:.4f}"
        + (f"   (test split evaluated {record['test_evaluations']} times)"
           if record["test_evaluations"] > 1 else ""),
        "  config:    " + ", ".join(f"{k}={v}" for k, v in record["config"].items()),
    ]
    if record["samples"]:
        novel = record["novel_share"]
        lines.append(f"  samples:   {' '.join(record['samples'][:10])}"
                     f"   ({novel:.0%} not in the training words)")
    lines += [f"  model:     {record['model_path']}",
              f"  MLflow:    run {record['mlflow_run_id']} (the 'final model' run of the study)"]
    return "\n".join(lines)


def cmd_worker(args: argparse.Namespace) -> int:
    from harness.study import work

    spec = _load(args)
    print(f"worker joining study {spec.name} ({spec.budget.n_trials} trials in all)",
          file=sys.stderr)
    work(spec, rank=args.rank if args.rank is not None else os.getpid(), observer=Progress(),
         device=args.device)
    return 0


def cmd_finalize(args: argparse.Namespace) -> int:
    spec = _load(args)
    return _finalize_and_report(spec, force=args.force, device=args.device,
                                workers=args.workers or spec.workers.count)


def cmd_sample(args: argparse.Namespace) -> int:
    from harness.final import final_model
    from harness.model import sample_words

    model, _hp, itos = final_model(_load(args))
    for word in sample_words(model, itos, args.n, seed=args.seed, temperature=args.temperature,
                             max_length=args.max_length):
        print(word)
    return 0


def _hparams(spec: Any, params: Sequence[str]) -> Any:
    """The study's fixed values plus `--param NAME=VALUE`s; a bad value is a SpecError."""
    from harness.spec import SpecError, parse_assignments

    try:
        return spec.base_hparams(**parse_assignments(params, "--param", spec.source))
    except ValueError as exc:
        raise SpecError(spec.source, [str(exc)]) from None


def cmd_train(args: argparse.Namespace) -> int:
    from harness.data import load_search_data
    from harness.steps import STEP_KINDS
    from harness.train import train

    if args.step not in STEP_KINDS:
        print(f"error: --step must be one of {', '.join(STEP_KINDS)}, got {args.step!r}",
              file=sys.stderr)
        return EXIT_USAGE
    spec = _load(args)
    hp = _hparams(spec, args.param)
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
    summary = {**result.summary(), "config": hp.to_dict()}
    if args.json:
        print(json.dumps(summary))
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
    from harness.tracking import ui_command

    spec = _load(args)
    uri = spec.tracking.uri or paths.tracking_uri()
    if uri.startswith(("http://", "https://")):
        print(f"the study is tracked on an MLflow server: open {redact(uri)}")
        return 0
    if spec.tracking.uri is None and not (paths.root() / "mlflow.db").exists():
        raise StudyNotFound(f"no MLflow store yet at {paths.root() / 'mlflow.db'}: run the "
                            f"study first (harness run-study {spec.source})")
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


def cmd_baseline(args: argparse.Namespace) -> int:
    from harness.baseline import baselines

    spec = _load(args)
    print(f"count-based models on the split of {spec.name} (train counts, dev loss; the "
          "test split is not read)", file=sys.stderr)
    results = baselines(spec.data)
    _save_baselines(spec, results)
    for r in results:
        discount = f"  (discount {r.discount})" if r.discount is not None else ""
        print(f"{r.model:<22} dev loss {r.dev_loss:.4f}{discount}")
    return 0


def _save_baselines(spec: Any, results: Sequence[Any]) -> None:
    from dataclasses import asdict

    from harness import paths

    out = paths.study_dir(spec.name) / "baselines.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps([asdict(r) for r in results], indent=2) + "\n")


def _load_baselines(spec: Any) -> list[Any]:
    """The study's saved baselines, computed (and saved) first if there are none."""
    from harness import paths
    from harness.baseline import BaselineResult, baselines

    path = paths.study_dir(spec.name) / "baselines.json"
    if path.exists():
        return [BaselineResult(**r) for r in json.loads(path.read_text())]
    results = baselines(spec.data)
    _save_baselines(spec, results)
    return results


def cmd_leaderboard(args: argparse.Namespace) -> int:
    from harness import leaderboard
    from harness.spec import load_spec
    from harness.study import load_study

    boards: dict[str, Any] = {}
    notes: list[str] = []
    searched = ["trial", "state", "model", "best_dev_loss", "best_step"]
    for path in args.study:
        spec = load_spec(path, args.set)
        study = load_study(spec)
        boards[spec.name] = leaderboard.build(study,
                                              _load_baselines(spec) if args.baselines else ())
        notes += [f"{spec.name}: {v}" for v in leaderboard.edge_flags(study).values()]
        searched += [n for n in spec.search_names() if n not in searched]
    df = leaderboard.combine(boards) if len(boards) > 1 else next(iter(boards.values()))
    if args.top:  # the first N ranked trials, with the reference rows among them
        ranked = df.index[df["rank"].notna()][: args.top]
        df = df.loc[: ranked[-1]] if len(ranked) else df.head(0)
    if args.format == "md":
        columns = ["rank", "study", *searched, "n_params", "duration_s"]
        text = leaderboard.to_markdown(df, columns) + "\n"
    else:
        text = df.to_csv(index=False)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(text, encoding="utf-8")
        print(f"{len(df)} rows written to {args.out}", file=sys.stderr)
    else:
        sys.stdout.write(text)
    for note in notes:
        print(f"note: {note}", file=sys.stderr)
    return 0


# ---------------------------------------------------------------------------------------------
# Parser and entry point


def storage_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--storage", metavar="URL",
                   help="Optuna storage shared by every worker, e.g. postgresql://USER@HOST/DB "
                        "(default: the study file's storage, else mlruns/optuna.journal)")
    p.add_argument("--tracking-uri", metavar="URI",
                   help="MLflow tracking server or database, e.g. http://HOST:5000 "
                        "(default: the study file's tracking.uri, else mlruns/mlflow.db)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="harness",
        description="Hyperparameter search for character-level MLP language models "
                    "(Bengio et al. 2003), with Optuna studies and MLflow tracking.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"harness {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress details")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def add(name: str, func: Any, help_text: str, many: bool = False) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help_text, description=help_text)
        p.add_argument("study", metavar="STUDY.yaml", nargs="+" if many else None,
                       help="the study file" + ("(s)" if many else ""))
        p.add_argument("--set", action="append", default=[], metavar="KEY.PATH=VALUE",
                       help="override a key of the study file, e.g. --set budget.n_trials=4 "
                            "(repeatable)")
        p.set_defaults(func=func)
        return p

    p = add("run-study", cmd_run_study,
            "Run (or resume) the study's search until it has budget.n_trials trials, then "
            "finalize: retrain the best trials, choose on dev, evaluate the test split once.")
    p.add_argument("--device", default="cpu", help="torch device for training: cpu, cuda, auto "
                                                   "(default: cpu)")
    p.add_argument("--workers", type=int, metavar="N",
                   help="worker processes (default: the study's workers.count, 1): on CPU each "
                        "gets cores/N torch threads; on GPUs, workers.per_gpu per GPU")
    storage_flags(p)
    p.add_argument("--no-finalize", action="store_true",
                   help="stop after the search; do not retrain the best trials or touch the "
                        "test split")

    p = add("train", cmd_train,
            "Train one config (the study's fixed values plus --param values), no search.")
    p.add_argument("--param", action="append", default=[], metavar="NAME=VALUE",
                   help="a hyperparameter value, e.g. --param lr=0.05 (repeatable)")
    p.add_argument("--json", action="store_true", help="print the result as one JSON object")
    p.add_argument("--device", default="cpu", help="torch device: cpu, cuda, auto (default: cpu)")
    p.add_argument("--step", default="manual",
                   help="training step: manual (hand-written backward, the default), autograd "
                        "(the reference), graphed (manual captured as a CUDA graph on a GPU)")

    p = add("worker", cmd_worker,
            "Join a running study from another machine: run its trials until it has "
            "budget.n_trials (start the study with `run-study` first).")
    storage_flags(p)
    p.add_argument("--rank", type=int, help="seeds this worker's sampler (default: its pid)")
    p.add_argument("--device", default="cpu", help="torch device: cpu, cuda, auto (default: cpu)")

    p = add("finalize", cmd_finalize,
            "Retrain the top trials on several seeds, choose by mean dev loss, then evaluate "
            "the test split once, save the model and record the result.")
    p.add_argument("--workers", type=int, metavar="N",
                   help="processes for the retrainings (default: the study's workers.count)")
    p.add_argument("--force", action="store_true",
                   help="finalize again even though the test split was already evaluated "
                        "(the record counts every evaluation)")
    p.add_argument("--device", default="cpu", help="torch device: cpu, cuda, auto (default: cpu)")

    p = add("sample", cmd_sample, "Print names sampled from the study's final model.")
    p.add_argument("-n", type=int, default=20, help="how many names (default: 20)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")
    p.add_argument("--temperature", type=float, default=1.0,
                   help="softmax temperature: below 1 safer, above 1 wilder (default: 1.0)")
    p.add_argument("--max-length", type=int, default=32,
                   help="longest name, in characters (default: 32)")

    p = add("leaderboard", cmd_leaderboard,
            "The studies' trials ranked by best dev loss, as CSV or Markdown (several study "
            "files make one table with a study column).", many=True)
    p.add_argument("--out", metavar="FILE", help="write the table here (default: standard output)")
    p.add_argument("--format", choices=("csv", "md"), default="csv",
                   help="csv: every column; md: the searched parameters, for a terminal or a "
                        "report (default: csv)")
    p.add_argument("--top", type=int, metavar="N", help="only the first N rows")
    p.add_argument("--baselines", action="store_true",
                   help="add the count-based reference models (harness baseline) as rows")

    p = add("ui", cmd_ui, "Serve the MLflow UI for the study's tracking store and print the "
                          "address of its experiment.")
    p.add_argument("--host", default="127.0.0.1",
                   help="address to listen on (default: 127.0.0.1, this machine only)")
    p.add_argument("--port", type=int, default=5000, help="port (default: 5000)")

    p = add("lr-find", cmd_lr_find,
            "The learning-rate finder: lr grows exponentially over a short run; plots the loss "
            "against log10(lr) and suggests a range for the search.")
    p.add_argument("--param", action="append", default=[], metavar="NAME=VALUE",
                   help="a hyperparameter value for the sweep (the study's fixed values and the "
                        "defaults otherwise)")
    p.add_argument("--steps", type=int, default=1000, help="steps of the sweep (default: 1000)")
    p.add_argument("--low", type=float, default=1e-3, help="first lr (default: 1e-3)")
    p.add_argument("--high", type=float, default=1.0, help="last lr (default: 1)")

    add("baseline", cmd_baseline,
        "Dev losses of count-based models on the study's split: the lecture's bigram and "
        "Kneser-Ney n-grams of orders 2 to 7 (discount tuned on dev).")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `harness` console script; returns the exit code."""
    args = build_parser().parse_args(argv)
    from harness import logs

    logs.configure(args.verbose)
    from harness.coordinator import WorkersFailed
    from harness.data import DataError
    from harness.final import AlreadyFinalized, NothingToFinalize
    from harness.model import ModelFileError
    from harness.spec import SpecError
    from harness.study import StorageError, StudyNotFound
    from harness.tracking import TrackingError

    try:
        return args.func(args)
    except (SpecError, DataError) as exc:
        print(f"error: {redact(str(exc))}", file=sys.stderr)
        return EXIT_USAGE
    except (StudyNotFound, StorageError, TrackingError, AlreadyFinalized, NothingToFinalize,
            WorkersFailed, ModelFileError) as exc:
        print(f"error: {redact(str(exc))}", file=sys.stderr)
        return EXIT_FAILED
    except KeyboardInterrupt:
        print("\ninterrupted; run the same command again to resume", file=sys.stderr)
        return EXIT_INTERRUPTED


if __name__ == "__main__":
    sys.exit(main())
