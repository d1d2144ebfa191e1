"""The plain peer: what a person would run without the harness, for the same time.

Optuna's defaults (TPESampler(), MedianPruner(), an in-memory study) over a study file's space,
each trial trained with the lecture's loop: raw tensors, autograd, the optimizer the config
names, a dev evaluation every `budget.eval_every` steps reported to the pruner, torch's default
threads, one process. It stops starting trials after `--minutes`, and a trial running then
stops at its next evaluation. Writes each finished trial (its end, in seconds from the start,
its best dev loss, and whether it was pruned) as JSON lines to --out.

    python bench/plain_peer.py STUDY.yaml --minutes 60 --out peer.jsonl
"""

from __future__ import annotations

import argparse
import json
import math
import random
import time
from pathlib import Path

import optuna
import torch
import torch.nn.functional as F

from harness.config import load_spec
from harness.search.space import suggest
from harness.training.data import read_words


def examples(words: list[str], stoi: dict[str, int], block: int) -> tuple[torch.Tensor, ...]:
    X, Y = [], []
    for w in words:
        context = [0] * block
        for ch in w + ".":
            X.append(context)
            Y.append(stoi[ch])
            context = context[1:] + [stoi[ch]]
    return torch.tensor(X), torch.tensor(Y)


def lr_at(hp: dict, step: int, steps: int) -> float:
    if hp["lr_schedule"] == "step":
        return hp["lr"] * (hp["lr_step_factor"] if step >= hp["lr_step_at"] * steps else 1.0)
    if hp["lr_schedule"] == "cosine":
        return hp["lr"] * 0.5 * (1 + math.cos(math.pi * step / steps))
    return hp["lr"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("study", type=Path)
    parser.add_argument("--minutes", type=float, default=60)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    spec = load_spec(args.study).with_precision("fp32")  # the lecture's loop: fp32 throughout
    words = read_words(spec.data.path)
    random.seed(spec.data.seed)
    random.shuffle(words)
    n1, n2 = int(0.8 * len(words)), int(0.9 * len(words))
    chars = sorted(set("".join(words)))
    stoi = {"." if i == 0 else chars[i - 1]: i for i in range(len(chars) + 1)}
    V = len(stoi)
    started = time.time()
    deadline = started + 60 * args.minutes
    steps, every = spec.budget.steps, spec.budget.eval_every
    cache: dict[int, tuple] = {}
    out = args.out.open("w")

    def objective(trial: optuna.Trial) -> float:
        hp = {**spec.base_hparams().to_dict(), **suggest(trial, spec.search)}
        T = hp["context_length"]
        if T not in cache:
            cache[T] = (examples(words[:n1], stoi, T), examples(words[n1:n2], stoi, T))
        (Xtr, Ytr), (Xdev, Ydev) = cache[T]
        g = torch.Generator().manual_seed(hp["seed"])
        E, H = hp["embedding_dim"], hp["hidden_width"]
        C = torch.randn((V, E), generator=g)
        layers, fan_in = [], T * E
        for _ in range(hp["hidden_layers"]):
            layers.append((torch.randn((fan_in, H), generator=g) * (5 / 3) / fan_in ** 0.5,
                           torch.zeros(H)))
            fan_in = H
        W2, b2 = torch.randn((fan_in, V), generator=g) * 0.01, torch.zeros(V)
        params = [C, *[p for pair in layers for p in pair], W2, b2]
        for p in params:
            p.requires_grad = True
        opt_class = torch.optim.AdamW if hp["optimizer"] == "adamw" else torch.optim.SGD
        opt = opt_class(params, lr=hp["lr"], weight_decay=hp["weight_decay"])

        def forward(X: torch.Tensor, train: bool) -> torch.Tensor:
            h = C[X].view(X.shape[0], -1)
            for W, b in layers:
                h = torch.tanh(h @ W + b)
                if train and hp["dropout"]:
                    h = F.dropout(h, hp["dropout"])
            return h @ W2 + b2

        best, pruned = math.inf, False
        for step in range(steps):
            ix = torch.randint(0, Xtr.shape[0], (hp["batch_size"],), generator=g)
            loss = F.cross_entropy(forward(Xtr[ix], True), Ytr[ix])
            for group in opt.param_groups:
                group["lr"] = lr_at(hp, step, steps)
            opt.zero_grad()
            loss.backward()
            opt.step()
            if (step + 1) % every == 0 or step + 1 == steps:
                with torch.no_grad():
                    dev = F.cross_entropy(forward(Xdev, False), Ydev).item()
                best = min(best, dev)
                trial.report(dev, step + 1)
                pruned = bool(trial.should_prune())  # a numpy bool from the median pruner
                if pruned or time.time() >= deadline:
                    break
        out.write(json.dumps({"trial": trial.number, "end_s": time.time() - started,
                              "best_dev_loss": best, "pruned": pruned}) + "\n")
        out.flush()
        if pruned:  # as Optuna's examples do: the median pruner then counts it as pruned
            raise optuna.TrialPruned()
        return best

    study = optuna.create_study(sampler=optuna.samplers.TPESampler(),
                                pruner=optuna.pruners.MedianPruner())
    while time.time() < deadline:
        study.optimize(objective, n_trials=1)
    done = [t.value for t in study.trials if t.value is not None]
    print(json.dumps({"trials": len(study.trials), "best_dev_loss": min(done, default=None)}))


if __name__ == "__main__":
    main()
