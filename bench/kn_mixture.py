"""How much a finished study's final model gains when mixed with the Kneser-Ney n-gram: dev
only (the test split is never read). The mixing weight is chosen on one half of the dev words
and scored on the other half, both ways round.

    python bench/kn_mixture.py STUDY.yaml MODEL.pt [--order 7]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch

from harness.config import load_spec
from harness.training import baseline
from harness.training.data import Vocab, build_examples, read_words, split_words
from harness.training.model import load_model

LAMBDAS = np.linspace(0, 1, 101)  # the MLP's weight in the mixture


def target_probs(model: torch.nn.Module, X: torch.Tensor, Y: torch.Tensor) -> np.ndarray:
    """The model's probability of each example's next character, (N,)."""
    out = []
    with torch.no_grad():
        for i in range(0, len(Y), 8192):
            logp = torch.log_softmax(model(X[i:i + 8192]).float(), dim=-1)
            out.append(logp.gather(1, Y[i:i + 8192, None]).squeeze(1))
    return torch.cat(out).double().exp().numpy()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("study", type=Path)
    parser.add_argument("model", type=Path)
    parser.add_argument("--order", type=int, default=7)
    args = parser.parse_args()
    spec = load_spec(args.study)
    words = read_words(spec.data.path)
    train, dev, _test = split_words(words, spec.data)
    vocab = Vocab.from_words(words)
    model, hp, itos = load_model(args.model)
    if tuple(itos) != tuple(vocab.itos):
        raise SystemExit("the model's vocabulary is not this study's")
    ex = build_examples(dev, vocab, hp.context_length)
    p_mlp = target_probs(model, ex.X, ex.Y)
    kn = baseline.KneserNey(train, args.order, vocab)
    discount = float(baseline.DISCOUNTS[int(np.argmin(kn.losses(dev, baseline.DISCOUNTS)))])
    # baseline.examples walks the words in the order build_examples does: one example a target.
    p_kn = np.array([kn.prob(h, w, discount) for h, w in baseline.examples(dev, args.order)])
    half = sum(len(w) + 1 for w in dev[: len(dev) // 2])
    halves = {"first": slice(0, half), "second": slice(half, None)}

    def loss(lam: float, s: slice) -> float:
        return float(-np.mean(np.log(lam * p_mlp[s] + (1 - lam) * p_kn[s])))

    print(f"{spec.name}: {len(p_mlp):,} dev examples; KN {args.order}-gram, discount {discount}")
    for name, scored in halves.items():
        chosen = next(s for n, s in halves.items() if n != name)
        lam = float(LAMBDAS[int(np.argmin([loss(x, chosen) for x in LAMBDAS]))])
        print(f"  dev's {name} half: model {loss(1, scored):.4f}, KN {loss(0, scored):.4f}, "
              f"mixture {loss(lam, scored):.4f} (model weight {lam:.2f}, chosen on the other half)")


if __name__ == "__main__":
    main()
