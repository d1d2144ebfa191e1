"""What a killed worker costs: SIGKILL `run-study` at ~70% of a trial, run it again.

A one-trial study (20,000 steps, an evaluation and a checkpoint every 1,000) is run three ways in
fresh results folders: uninterrupted; killed at 70% then run again (the retry resumes from the
checkpoint); the same with checkpoints off (`budget.checkpoint_every: 0`, the retry starts from
step 0, as before checkpoints existed). Prints the steps trained for the trial in total and the
wall time against the uninterrupted run.

    python bench/kill_resume.py [--steps 20000] [--kill-at 0.7]
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

CONFIG = dict(context_length=8, embedding_dim=24, hidden_width=300, hidden_layers=2,
              batch_size=64, optimizer="adamw", lr=1.0e-3, lr_schedule="cosine",
              warmup_frac=0.02, lr_min_frac=0.05, dropout=0.1)


def study(steps: int, checkpoint_every: int | None) -> dict:
    budget = {"n_trials": 1, "steps": steps, "eval_every": 1000}
    if checkpoint_every is not None:
        budget["checkpoint_every"] = checkpoint_every
    return {"name": "kill-resume", "budget": budget, "sampler": {"type": "random", "seed": 0},
            "pruner": {"type": "none"}, "fixed": CONFIG, "workers": {"threads": 2},
            "finalize": {"enabled": False}, "search": {"seed": [0]}}


def run_study(folder: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "harness", "run-study", "study.yaml",
                             "--no-finalize"], cwd=folder, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, env={**os.environ, "HARNESS_ROOT":
                                                            str(folder / "mlruns")})


def records(folder: Path) -> list:
    """The study's trials, read from its storage (empty before it exists)."""
    os.environ["HARNESS_ROOT"] = str(folder / "mlruns")
    from harness.config import load_spec  # after HARNESS_ROOT is set for this folder
    from harness.search import records as trials
    from harness.search.liveness import load_study

    if not (folder / "mlruns" / "optuna.journal").exists():
        return []
    try:
        return trials.records(load_study(load_spec(folder / "study.yaml")))
    except LookupError:  # not created yet
        return []


def reached(folder: Path, step: int) -> bool:
    """Whether a trial has reported `step`."""
    return any(max(r.intermediate, default=0) >= step for r in records(folder))


def trial_steps(folder: Path) -> list[tuple[int, int | None, int]]:
    """(number, resumed_from_step, last step) of each trial of the study."""
    return [(r.number, r.resumed_from_step, max(r.intermediate, default=0))
            for r in records(folder)]


def once(steps: int, kill_at: float | None, checkpoint_every: int | None) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        (folder / "study.yaml").write_text(yaml.safe_dump(study(steps, checkpoint_every)))
        t0 = time.perf_counter()
        proc = run_study(folder)
        if kill_at is not None:
            while not reached(folder, int(kill_at * steps)):
                if proc.poll() is not None:
                    raise SystemExit("the study ended before the kill")
                time.sleep(0.1)
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            proc = run_study(folder)
        if proc.wait() != 0:
            raise SystemExit(f"run-study exited {proc.returncode}")
        wall = time.perf_counter() - t0
        chain = trial_steps(folder)
    # Steps trained: each piece from where it started to its last evaluation.
    trained = sum(last - (resumed or 0) for _, resumed, last in chain)
    return {"wall_s": wall, "steps_trained": trained, "trials": chain}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=20_000)
    parser.add_argument("--kill-at", type=float, default=0.7)
    parser.add_argument("--out", type=Path, help="also write the figures as JSON")
    args = parser.parse_args()
    rows = {"uninterrupted": once(args.steps, None, None),
            "killed, resumed from the checkpoint": once(args.steps, args.kill_at, None),
            "killed, checkpoints off (restart)": once(args.steps, args.kill_at, 0)}
    base = rows["uninterrupted"]["wall_s"]
    for name, r in rows.items():
        print(f"{name:<36} steps trained {r['steps_trained']:>6,} "
              f"({r['steps_trained'] / args.steps:.2f}x the budget)  wall {r['wall_s']:6.1f} s "
              f"(+{r['wall_s'] - base:5.1f} s)  trials {r['trials']}")
    if args.out:
        args.out.write_text(json.dumps({"steps": args.steps, "kill_at": args.kill_at,
                                        "config": CONFIG, "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
