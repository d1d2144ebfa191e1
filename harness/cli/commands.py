"""Every command of `harness`, by name: each takes the parsed arguments and the validated study
files, prints what it did, and returns its exit status."""

from __future__ import annotations

import argparse
from collections.abc import Callable, Mapping, Sequence

from harness.cli import look, run
from harness.config import StudySpec

Command = Callable[[argparse.Namespace, Sequence[StudySpec]], int]

COMMANDS: Mapping[str, Command] = {
    "run-study": run.run_study,
    "worker": run.worker,
    "finalize": run.finalize,
    "train": run.train_one,
    "lr-find": run.find_lr,
    "status": look.status,
    "sample": look.sample,
    "leaderboard": look.board,
    "ui": look.ui,
    "reproduce": look.reproduce_trial,
    "report": look.write_report,
    "baseline": look.baselines,
    "init": run.init,
}
