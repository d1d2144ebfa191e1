"""The commands that look at a study: status, sample, leaderboard, ui, reproduce, report,
baseline."""

from __future__ import annotations

import argparse
import datetime
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

from harness.cli.render import format_front
from harness.config import StudySpec
from harness.errors import EXIT_FAILED, StudyNotFound
from harness.final.publish import final_model
from harness.final.result import FinalResult
from harness.results import leaderboard, report
from harness.results.reproduce import reproduce
from harness.search import counting, data_guard, records, storage
from harness.search.checkpoints import open_checkpoints
from harness.search.liveness import load_study
from harness.tracking import is_server, open_tracker
from harness.tracking.store import port_in_use, ui_command
from harness.training import baseline
from harness.training.model import sample_words
from harness.util import paths
from harness.util.redact import redact


def status(args: argparse.Namespace, specs: Sequence[StudySpec]) -> int:
    spec = specs[0]
    study = load_study(spec)
    record = records.read_record(study)
    recs = records.records(study)
    where = counting.status(recs)
    total = f" of {record.n_trials}" if record else ""
    print(f"study {spec.name} ({storage.describe(spec.storage)}): {where.counted}{total} "
          "trials counted")
    print("  states:  " + ", ".join(f"{n} {s.lower()}" for s, n in where.states.items()))
    if where.warm and record is not None:
        print(f"  warm:    {where.warm} complete trials of study {record.warm_from} "
              "(warm_start: they inform the sampler and are not counted)")
    if (best := where.best) is not None:
        now = datetime.datetime.now()  # Optuna records local times
        ago = (f", {(now - best.completed).total_seconds() / 60:.0f} min ago"
               if best.completed else "")
        print(f"  best:    trial {best.number}, dev {best.value:.4f} (the last improvement: "
              f"{best.completed:%Y-%m-%d %H:%M:%S}{ago})")
    if spec.objective.pareto:
        print("\n".join("  " + line for line in
                        format_front(recs, spec.objective.pareto).splitlines()))
    if stopped := records.read_stopped(study):
        print(f"  stopped: {stopped}")
    for r in where.running:
        step = max(r.intermediate, default=0)
        dev = f", dev {r.intermediate[step]:.4f}" if r.intermediate else ""
        saved = f", checkpoint at step {r.checkpoint_step}" if r.checkpoint_step else ""
        resumed = f", resumed from step {r.resumed_from_step}" if r.resumed_from_step else ""
        print(f"  running: trial {r.number} on {r.worker or '?'}, step {step}{dev}{saved}"
              f"{resumed}")
    ckpts = open_checkpoints(spec)
    print(f"  checkpoints: {ckpts.disk_bytes() / 1e6:.1f} MB on this machine's disk "
          f"({ckpts.folder})")
    final = records.read_final(study)  # the result as recorded; nothing is evaluated
    print(f"  final:   {FinalResult.from_dict(final).status_line()}" if final else
          "  final:   not finalized")
    return 0


def sample(args: argparse.Namespace, specs: Sequence[StudySpec]) -> int:
    spec = specs[0]
    try:
        study = load_study(spec)
    except StudyNotFound:
        study = None  # no study: no final model either (said below)
    if study is not None and (record := records.read_record(study)) is not None:
        data_guard.check(spec, study, record, args.allow_data_change)
    if args.model:  # a registered model, through the study's tracking store
        from harness.tracking.registry import load  # mlflow.pyfunc: seconds to import

        model, _hp, itos = load(args.model, open_tracker(spec).uri)
    else:
        model, _hp, itos = final_model(spec)
    for word in sample_words(model, itos, args.n, seed=args.seed, temperature=args.temperature,
                             max_length=args.max_length):
        print(word)
    return 0


def ui(args: argparse.Namespace, specs: Sequence[StudySpec]) -> int:
    spec = specs[0]
    uri = spec.tracking.uri or paths.tracking_uri()
    if is_server(uri):
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


def reproduce_trial(args: argparse.Namespace, specs: Sequence[StudySpec]) -> int:
    spec = specs[0]
    print(f"retraining trial {args.trial} of study {spec.name} from its recorded config and "
          "seed", file=sys.stderr)
    r = reproduce(spec, args.trial, device=args.device,
                  allow_data_change=args.allow_data_change)
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


def write_report(args: argparse.Namespace, specs: Sequence[StudySpec]) -> int:
    out = report.write(specs[0], Path(args.out) if args.out else None)
    print(f"report written to {out} (and logged to the study's MLflow run)")
    return 0


def baselines(args: argparse.Namespace, specs: Sequence[StudySpec]) -> int:
    spec = specs[0]
    paths.require_writable()
    print(f"count-based models on the split of {spec.name} (train counts, dev loss; the "
          "test split is not read)", file=sys.stderr)
    results = baseline.baselines(spec.data)
    baseline.save(results, paths.study_dir(spec.name) / "baselines.json")
    for r in results:
        discount = f"  (discount {r.discount})" if r.discount is not None else ""
        print(f"{r.model:<22} dev loss {r.dev_loss:.4f}{discount}")
    return 0


def board(args: argparse.Namespace, specs: Sequence[StudySpec]) -> int:
    boards = []
    for spec in specs:
        refs = (baseline.cached(spec.data, paths.study_dir(spec.name) / "baselines.json")
                if args.baselines else ())
        boards.append(leaderboard.board(spec.name, load_study(spec), spec.search_names(), refs,
                                        spec.objective.pareto))
    text = leaderboard.render(boards, args.format, args.top)
    if args.out:
        paths.output_file(Path(args.out)).write_text(text, encoding="utf-8")
        print(f"written to {args.out}", file=sys.stderr)
    else:
        sys.stdout.write(text)
    for b in boards:
        for note in b.notes:
            print(f"note: {note}", file=sys.stderr)
    return 0
