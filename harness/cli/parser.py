"""The `harness` command's arguments: every command, its options and its help."""

from __future__ import annotations

import argparse
import math
from typing import Any

from harness import __version__
from harness.config.hparams import MAX_SEED

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




def positive_int(text: str) -> int:
    """An argparse type: an integer >= 1."""
    value = _whole(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _whole(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None


def positive_float(text: str) -> float:
    """An argparse type: a finite number > 0."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not math.isfinite(value) or value <= 0:
        raise argparse.ArgumentTypeError(f"must be a number > 0, got {text}")
    return value


def seed(text: str) -> int:
    """An argparse type: a seed, 0..2^63-1."""
    value = _whole(text)
    if not 0 <= value <= MAX_SEED:
        raise argparse.ArgumentTypeError(f"must be in 0..2^63-1, got {value}")
    return value


def port(text: str) -> int:
    """An argparse type: a TCP port, 1..65535."""
    value = positive_int(text)
    if value > 65535:
        raise argparse.ArgumentTypeError(f"must be a port in 1..65535, got {value}")
    return value


def trial_number(text: str) -> int:
    """An argparse type: a trial's number, >= 0."""
    value = _whole(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {value}")
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
    data = argparse.ArgumentParser(add_help=False)
    data.add_argument("--allow-data-change", action="store_true",
                      help="accept a data file that changed since the study was created (the "
                           "study records the change, and its final result says so); without "
                           "it the command refuses and says what changed")
    return {"stores": stores, "device": device, "workers": workers, "param": param,
            "data": data}


# What each command does: its line in `harness --help` and the head of `harness CMD --help`.
HELP = {
    "run-study": "Run (or resume) the study's search until it has budget.n_trials trials, then "
                 "finalize: retrain the best trials, choose on dev, evaluate the test split "
                 "once.",
    "worker": "Join a study started by `run-study` (from another terminal or machine): run its "
              "trials until it has the budget it was started with.",
    "finalize": "Retrain the top trials on several seeds, choose by mean dev loss, then "
                "evaluate the test split once, save the model and record the result.",
    "status": "Where the study stands: trials by state, the running ones with their worker and "
              "step, the best so far and when it came, the final model.",
    "sample": "Print names sampled from the study's final model.",
    "leaderboard": "The studies' trials ranked by best dev loss, as CSV or Markdown (several "
                   "study files make one table with a study column).",
    "ui": "Serve the MLflow UI for the study's tracking store and print the address of its "
          "experiment.",
    "train": "Train one config (the study's fixed values plus --param values), no search.",
    "lr-find": "The learning-rate finder: lr grows exponentially over a short run; plots the "
               "loss against log10(lr) and suggests a range for the search.",
    "reproduce": "Retrain a recorded trial from its config and seed, on its thread count, and "
                 "compare its dev-loss curve (equal to 1e-6 on the same machine kind and "
                 "packages; exit 1 otherwise) and provenance.",
    "report": "Write the study's report as one Markdown file: provenance, the leaderboard's "
              "top 10, the figures, the final model's dev and test with the references, 20 "
              "names.",
    "init": "Write a study file sized to a word list and to this machine: read the words, score "
            "the count-based models to beat, time the training step, size the space, the "
            "trials and the final model to the time given.",
    "baseline": "Dev losses of count-based models on the study's split: the lecture's bigram "
                "and Kneser-Ney n-grams of orders 2 to 7 (discount tuned on dev).",
}


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

    def add(name: str, *shared: str, many: bool = False) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=HELP[name], description=HELP[name],
                           parents=[opts[s] for s in shared])
        p.add_argument("study", metavar="STUDY.yaml", nargs="+" if many else None,
                       help="the study file" + ("(s)" if many else ""))
        p.add_argument("--set", action="append", default=[], metavar="KEY.PATH=VALUE",
                       help="override a key of the study file, e.g. --set budget.n_trials=4 "
                            "(repeatable)")
        return p

    _search_commands(add)
    _look_commands(add)
    _tool_commands(add)
    _init_command(sub)
    return parser


def _init_command(sub: Any) -> None:
    """`harness init WORDS.txt`: its argument is a word list, not a study file."""
    p = sub.add_parser("init", help=HELP["init"], description=HELP["init"])
    p.add_argument("words", metavar="WORDS.txt", help="a UTF-8 file, one word per line")
    p.add_argument("--minutes", type=positive_float, default=60.0,
                   help="wall time of the whole study, its final model included (default: 60)")
    p.add_argument("--workers", type=positive_int, metavar="N",
                   help="worker processes (default: one per CPU core)")
    p.add_argument("--out", metavar="STUDY.yaml",
                   help="where to write the study file (default: WORDS.yaml here)")
    p.set_defaults(command="init", study=[], set=[])


Add = Any  # add(name, *shared options, many=False) -> the command's parser


def _search_commands(add: Add) -> None:
    """The commands that run trials or the final model."""
    p = add("run-study", "stores", "device", "workers", "data")
    p.add_argument("--no-finalize", action="store_true",
                   help="stop after the search; do not retrain the best trials or touch the "
                        "test split")
    p.add_argument("--enqueue", action="append", default=[], metavar="NAME",
                   help="run a named config first, cut to the study's space (repeatable; "
                        "names: lecture). Like `enqueue:` in the study file: it takes effect "
                        "when the study is created")
    add("worker", "stores", "device", "data")
    p = add("finalize", "stores", "device", "workers", "data")
    p.add_argument("--force", action="store_true",
                   help="finalize again even though the test split was already evaluated "
                        "(the study's storage counts every evaluation)")


def _look_commands(add: Add) -> None:
    """The commands that look at results."""
    add("status", "stores")
    p = add("sample", "stores", "data")
    p.add_argument("-n", type=positive_int, default=20, help="how many names (default: 20)")
    p.add_argument("--seed", type=seed, default=0, help="random seed (default: 0)")
    p.add_argument("--temperature", type=positive_float, default=1.0,
                   help="softmax temperature: below 1 safer, above 1 wilder (default: 1.0)")
    p.add_argument("--max-length", type=positive_int, default=32,
                   help="longest name, in characters (default: 32)")
    p.add_argument("--model", metavar="URI",
                   help="sample from a registered model instead, e.g. models:/quick@champion "
                        "(found in the study's tracking store)")
    p = add("leaderboard", "stores", many=True)
    p.add_argument("--out", metavar="FILE", help="write the table here (default: standard output)")
    p.add_argument("--format", choices=("csv", "md"), default="csv",
                   help="csv: every column; md: the searched parameters, for a terminal or a "
                        "report (default: csv)")
    p.add_argument("--top", type=positive_int, metavar="N", help="only the first N ranked rows")
    p.add_argument("--baselines", action="store_true",
                   help="add the count-based reference models (harness baseline) as rows")
    p = add("ui", "stores")
    p.add_argument("--host", default="127.0.0.1",
                   help="address to listen on (default: 127.0.0.1, this machine only)")
    p.add_argument("--port", type=port, default=5000, help="port (default: 5000)")


def _tool_commands(add: Add) -> None:
    """The single-config tools (train, lr-find, reproduce), the report and the baselines."""
    p = add("train", "device", "param")
    p.add_argument("--json", action="store_true", help="print the result as one JSON object")
    p.add_argument("--step", default="manual", choices=("manual", "autograd", "graphed"),
                   help="training step: manual (hand-written backward, the default), autograd "
                        "(the reference), graphed (manual captured as a CUDA graph on a GPU)")
    p = add("lr-find", "param")
    p.add_argument("--steps", type=positive_int, default=1000,
                   help="steps of the sweep (default: 1000)")
    p.add_argument("--low", type=positive_float, default=1e-3, help="first lr (default: 1e-3)")
    p.add_argument("--high", type=positive_float, default=1.0, help="last lr (default: 1)")
    p = add("reproduce", "stores", "device", "data")
    p.add_argument("--trial", type=trial_number, required=True, metavar="N",
                   help="the trial's number")
    p = add("report", "stores")
    p.add_argument("--out", metavar="FILE",
                   help="where to write it (default: mlruns/studies/NAME/report.md)")
    add("baseline")
