"""Throughput benchmark: the harness against what a user would otherwise write, in one run.

    python bench/throughput.py              # prints a table, writes bench/results/throughput.json

Same config everywhere (the lecture's: context 3, embedding 10, hidden 200, batch 32, SGD):
  (a) the plain lecture loop: raw tensors, autograd, manual SGD, one torch thread;
  (b) the harness's training function, one torch thread (and its autograd reference step);
  (c) a small study through `harness run-study` with 1 and 2 workers, against the naive peer
      (bench/naive_peer.py: an Optuna objective running the lecture loop with torch's default
      threads, logging to MLflow per evaluation). Whole commands are timed, start-up included.
Also reported: the share of a trial's time spent outside training (Optuna, MLflow, data);
trials per hour both over the whole command and from the first trial's start to the last one's
end; and what the machine gives two processes training at once (the ceiling for 2 workers).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F
import yaml

REPO = Path(__file__).resolve().parent.parent


def lecture_loop(Xtr: torch.Tensor, Ytr: torch.Tensor, steps: int) -> float:
    """(a) The lecture's loop, as written in "makemore part 2"; returns steps/s."""
    g = torch.Generator().manual_seed(2147483647)
    C = torch.randn((27, 10), generator=g)
    W1 = torch.randn((30, 200), generator=g) * (5 / 3) / 30**0.5
    b1 = torch.randn(200, generator=g) * 0.01
    W2 = torch.randn((200, 27), generator=g) * 0.01
    b2 = torch.randn(27, generator=g) * 0
    parameters = [C, W1, b1, W2, b2]
    for p in parameters:
        p.requires_grad = True
    t0 = time.perf_counter()
    for i in range(steps):
        ix = torch.randint(0, Xtr.shape[0], (32,), generator=g)
        emb = C[Xtr[ix]]
        h = torch.tanh(emb.view(-1, 30) @ W1 + b1)
        logits = h @ W2 + b2
        loss = F.cross_entropy(logits, Ytr[ix])
        for p in parameters:
            p.grad = None
        loss.backward()
        lr = 0.1 if i < steps // 2 else 0.01
        for p in parameters:
            p.data += -lr * p.grad
    return steps / (time.perf_counter() - t0)


def timed(cmd: list[str], cwd: Path) -> tuple[float, str]:
    """Wall time of a whole command, start-up included, and its output; its results go under
    cwd/mlruns."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "HARNESS_ROOT": str(cwd / "mlruns")}
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, env=env)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        sys.exit(f"failed: {' '.join(cmd)}\n{proc.stderr[-3000:]}")
    return wall, proc.stdout


def study_file(path: Path, trials: int, steps: int, eval_every: int) -> Path:
    """A study of the lecture's model where only lr varies: every trial costs the same."""
    spec = {
        "name": "bench",
        "budget": {"n_trials": trials, "steps": steps, "eval_every": eval_every},
        "sampler": {"type": "random", "seed": 0},
        "pruner": "none",
        "fixed": {"lr_schedule": "step"},
        "search": {"lr": {"type": "float", "low": 0.05, "high": 0.2, "log": True}},
        "finalize": {"enabled": False},
    }
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


def trial_figures(root: Path) -> tuple[float, float]:
    """From the study's own records: the share of trial time spent outside train() (Optuna,
    MLflow, data), and trials per hour from the first trial's start to the last one's end
    (the rate a long study runs at, without the command's start-up and end)."""
    from harness.config import load_spec  # after HARNESS_ROOT is set for this folder
    from harness.search import records as trials
    from harness.search.liveness import load_study

    os.environ["HARNESS_ROOT"] = str(root)
    study = load_study(load_spec(root.parent / "bench.yaml"))
    inside = sum(r.train_s for r in trials.records(study))
    total = sum(t.duration.total_seconds() for t in study.trials)
    span = (max(t.datetime_complete for t in study.trials)
            - min(t.datetime_start for t in study.trials)).total_seconds()
    return 1 - inside / total, len(study.trials) * 3600 / span


CONCURRENT = """
import sys, torch
from harness.config import DataConfig
from harness.config.hparams import HParams
from harness.training.data import load_search_data
from harness.training.train import train
torch.set_num_threads(1)
data = load_search_data(DataConfig(), 3)
train(HParams(), data, steps=500, eval_every=500)  # warm up
print(train(HParams(), data, steps=int(sys.argv[1]), eval_every=int(sys.argv[1])).steps_per_sec)
"""


def concurrent_train(processes: int, steps: int) -> float:
    """Summed steps/s of `processes` processes each running train() on one thread at once:
    what this machine's cores give when they work together (the ceiling for workers)."""
    procs = [subprocess.Popen([sys.executable, "-c", CONCURRENT, str(steps)], cwd=REPO,
                              stdout=subprocess.PIPE, text=True) for _ in range(processes)]
    return sum(float(p.communicate()[0].split()[-1]) for p in procs)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=10_000, help="steps per round of (a) and (b)")
    ap.add_argument("--rounds", type=int, default=5, help="interleaved rounds of (a) and (b)")
    ap.add_argument("--trials", type=int, default=8, help="trials of the study in (c)")
    ap.add_argument("--trial-steps", type=int, default=20_000, help="steps per trial in (c)")
    ap.add_argument("--eval-every", type=int, default=2_000)
    ap.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "throughput.json")
    args = ap.parse_args()

    from harness.config import DataConfig
    from harness.config.hparams import HParams
    from harness.training.data import load_search_data
    from harness.training.train import train

    data = load_search_data(DataConfig(), 3)
    rows: dict[str, float] = {}
    torch.set_num_threads(1)
    print(f"(a)/(b): {args.rounds} rounds of {args.steps} steps of the lecture config, "
          "1 torch thread, interleaved (this machine's speed drifts; medians are reported)",
          flush=True)
    per_round: dict[str, list[float]] = {"a": [], "manual": [], "autograd": []}
    for _ in range(args.rounds):
        per_round["a"].append(lecture_loop(data.train.X, data.train.Y, args.steps))
        for kind in ("manual", "autograd"):
            r = train(HParams(), data, steps=args.steps, eval_every=args.steps, step_kind=kind)
            per_round[kind].append(r.steps_per_sec)
    rows["a_lecture_loop"] = statistics.median(per_round["a"])
    for kind in ("manual", "autograd"):
        rows[f"b_harness_train_{kind}"] = statistics.median(per_round[kind])
        rows[f"b_{kind}_over_a_median_of_rounds"] = statistics.median(
            b / a for a, b in zip(per_round["a"], per_round[kind], strict=True))
        rows[f"b_{kind}_over_a_min_of_rounds"] = min(
            b / a for a, b in zip(per_round["a"], per_round[kind], strict=True))

    print("machine: 1 and 2 processes running train() at once, 1 thread each", flush=True)
    ceiling = {n: statistics.median(concurrent_train(n, args.steps) for _ in range(3))
               for n in (1, 2)}
    rows["m_1_process_steps_per_s"] = ceiling[1]
    rows["m_2_processes_steps_per_s"] = ceiling[2]

    trial_steps = args.trials * args.trial_steps
    print(f"(c): studies of {args.trials} trials x {args.trial_steps} steps", flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        for workers in (1, 2):
            work = Path(tmp) / f"w{workers}"
            work.mkdir()
            path = study_file(work / "bench.yaml", args.trials, args.trial_steps,
                              args.eval_every)
            wall, _ = timed([sys.executable, "-m", "harness.cli", "run-study", str(path),
                             "--workers", str(workers)], cwd=work)
            rows[f"c_harness_{workers}w_trial_steps_per_s"] = trial_steps / wall
            rows[f"c_harness_{workers}w_trials_per_hour"] = args.trials * 3600 / wall
            share, steady = trial_figures(work / "mlruns")
            rows[f"c_harness_{workers}w_trials_per_hour_steady"] = steady
            rows[f"c_harness_{workers}w_overhead_share"] = share
        peer = Path(tmp) / "peer"
        wall, out = timed([sys.executable, str(REPO / "bench" / "naive_peer.py"), "--trials",
                           str(args.trials), "--steps", str(args.trial_steps), "--eval-every",
                           str(args.eval_every), "--root", str(peer)], cwd=Path(tmp))
        rows["c_peer_trial_steps_per_s"] = trial_steps / wall
        rows["c_peer_trials_per_hour"] = args.trials * 3600 / wall
        rows["c_peer_trials_per_hour_steady"] = args.trials * 3600 / json.loads(out)["steady_s"]

    a = rows["a_lecture_loop"]
    peer = rows["c_peer_trial_steps_per_s"]
    print()
    print(f"{'measure':<44} {'value':>10} {'ratio':>8}")
    for key, value in rows.items():
        if key.endswith("overhead_share"):
            print(f"{key:<44} {value:>9.1%}")
            continue
        if "_over_a_" in key:
            print(f"{key:<44} {value:>9.2f}x")
            continue
        base = a if key.startswith(("a_", "b_")) else ceiling[1] if key.startswith("m_") else peer
        ratio = "" if "per_hour" in key else f"{value / base:>7.2f}x"
        print(f"{key:<44} {value:>10,.0f} {ratio:>8}")
    for what, suffix in (("whole command", ""), ("first start to last end", "_steady")):
        one = rows[f"c_harness_1w_trials_per_hour{suffix}"]
        two = rows[f"c_harness_2w_trials_per_hour{suffix}"]
        peer_rate = rows[f"c_peer_trials_per_hour{suffix}"]
        rows[f"c_2w_over_1w{suffix}"] = two / one
        rows[f"c_2w_over_peer{suffix}"] = two / peer_rate
        print(f"{'2 workers / 1 worker, trials/h, ' + what:<44} {two / one:>10.2f}")
        print(f"{'2 workers / naive peer, trials/h, ' + what:<44} {two / peer_rate:>10.2f}")
    print(f"{'2 processes / 1 process, train() steps/s':<44} {ceiling[2] / ceiling[1]:>10.2f}")

    result = {
        "machine": f"{platform.node()} {platform.machine()}, {os.cpu_count()} cores, "
                   f"torch {torch.__version__}",
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "command": "python " + " ".join(sys.argv),
        "args": {k: str(v) for k, v in vars(args).items()},
        "figures": rows,
        "rounds": per_round,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"\nwritten to {args.out}")


if __name__ == "__main__":
    main()
