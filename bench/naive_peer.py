"""The naive peer: what a user would write without the harness.

An Optuna objective that runs the lecture's training loop (raw tensors, autograd, manual SGD,
torch's default threads) and logs each trial to MLflow with the fluent API, one metric call per
evaluation. Run by bench/throughput.py; prints one JSON line with its wall time.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from pathlib import Path

import mlflow
import optuna
import torch
import torch.nn.functional as F

args = argparse.ArgumentParser()
args.add_argument("--trials", type=int, required=True)
args.add_argument("--steps", type=int, required=True)
args.add_argument("--eval-every", type=int, required=True)
args.add_argument("--root", type=Path, required=True)
a = args.parse_args()

started = time.perf_counter()
words = (Path(__file__).resolve().parent.parent / "harness/resources/names.txt").read_text().split()
chars = sorted(set("".join(words)))
stoi = {s: i + 1 for i, s in enumerate(chars)}
stoi["."] = 0


def build(ws, block=3):
    X, Y = [], []
    for w in ws:
        context = [0] * block
        for ch in w + ".":
            ix = stoi[ch]
            X.append(context)
            Y.append(ix)
            context = context[1:] + [ix]
    return torch.tensor(X), torch.tensor(Y)


random.seed(42)
random.shuffle(words)
n1, n2 = int(0.8 * len(words)), int(0.9 * len(words))
Xtr, Ytr = build(words[:n1])
Xdev, Ydev = build(words[n1:n2])

a.root.mkdir(parents=True, exist_ok=True)
mlflow.set_tracking_uri(f"sqlite:///{a.root.resolve()}/peer.db")
mlflow.set_experiment("naive-peer")


def objective(trial: optuna.Trial) -> float:
    lr = trial.suggest_float("lr", 0.05, 0.2, log=True)
    with mlflow.start_run(run_name=f"trial-{trial.number}"):
        mlflow.log_params({"lr": lr, "context_length": 3, "embedding_dim": 10,
                           "hidden_width": 200, "batch_size": 32})
        g = torch.Generator().manual_seed(trial.number)
        C = torch.randn((27, 10), generator=g)
        W1 = torch.randn((30, 200), generator=g) * (5 / 3) / 30**0.5
        b1 = torch.randn(200, generator=g) * 0.01
        W2 = torch.randn((200, 27), generator=g) * 0.01
        b2 = torch.randn(27, generator=g) * 0
        params = [C, W1, b1, W2, b2]
        for p in params:
            p.requires_grad = True
        best = float("inf")
        for i in range(a.steps):
            ix = torch.randint(0, Xtr.shape[0], (32,), generator=g)
            emb = C[Xtr[ix]]
            h = torch.tanh(emb.view(-1, 30) @ W1 + b1)
            logits = h @ W2 + b2
            loss = F.cross_entropy(logits, Ytr[ix])
            for p in params:
                p.grad = None
            loss.backward()
            step_lr = lr if i < a.steps // 2 else lr / 10
            for p in params:
                p.data += -step_lr * p.grad
            if (i + 1) % a.eval_every == 0:
                with torch.no_grad():
                    h = torch.tanh(C[Xdev].view(-1, 30) @ W1 + b1)
                    dev = F.cross_entropy(h @ W2 + b2, Ydev).item()
                mlflow.log_metric("dev_loss", dev, step=i + 1)
                best = min(best, dev)
        mlflow.log_metric("best_dev_loss", best)
        return best


optuna.logging.set_verbosity(optuna.logging.WARNING)
study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
study.optimize(objective, n_trials=a.trials)
# First trial's start to last trial's end: the rate a long study would run at.
steady_s = (max(t.datetime_complete for t in study.trials)
            - min(t.datetime_start for t in study.trials)).total_seconds()
json.dump({"wall_s": time.perf_counter() - started, "steady_s": steady_s,
           "threads": torch.get_num_threads(), "best": study.best_value}, sys.stdout)
