"""How close the training step runs to the machine's limit: step time against its matrix products.

For one config, times (1) the harness's training step (`harness.steps.ManualStep`, what every
trial and the final model run) on random minibatches, and (2) the same matrix products alone:
the very GEMM shapes of one step, forward (x @ W.T for each layer) and backward (dW = dY.T @ X
and dX = dY @ W for each layer, the first layer's dX included: the embedding needs it), timed
bare in the same dtype and torch threads on preallocated tensors. Their ratio, GEMM time / step
time, is the share of the step that is matrix products; the rest is elementwise work (tanh,
softmax, dropout masks, casts), the embedding gather and scatter, and the optimizer update.

    python bench/gemm_ratio.py                  # run 4's best: context 13, emb 35, 2 x 675,
                                                # batch 256, bf16, AdamW, dropout 0.13
    python bench/gemm_ratio.py --precision fp32 --threads 2
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch

from harness.config import hparams
from harness.training.model import MLP
from harness.training.steps import PRECISION_DTYPES, ManualStep

REPO = Path(__file__).resolve().parent.parent
VOCAB = 27


def per_call(fn: Callable[[], object], calls: int, rounds: int) -> float:
    """Median over `rounds` of the mean seconds per call of `fn` (after a warm-up)."""
    for _ in range(max(10, calls // 10)):
        fn()
    out = []
    for _ in range(rounds):
        t0 = time.perf_counter()
        for _ in range(calls):
            fn()
        out.append((time.perf_counter() - t0) / calls)
    return statistics.median(out)


def gemms(hp: hparams.HParams) -> Callable[[], None]:
    """One step's matrix products, bare: forward and backward of every linear layer."""
    dtype = PRECISION_DTYPES[hp.precision]
    B = hp.batch_size
    widths = [hp.context_length * hp.embedding_dim] + [hp.hidden_width] * hp.hidden_layers
    widths.append(VOCAB)
    layers = []
    for fan_in, fan_out in zip(widths[:-1], widths[1:], strict=True):
        x = torch.randn(B, fan_in, dtype=dtype)
        W = torch.randn(fan_out, fan_in, dtype=dtype)
        b = torch.randn(fan_out, dtype=dtype)
        dy = torch.randn(B, fan_out, dtype=dtype)
        layers.append((x, W, b, dy))

    def run() -> None:
        for x, W, b, dy in layers:
            torch.addmm(b, x, W.t())  # forward (B, out)
            dy.t() @ x  # dW (out, in)
            dy @ W  # dX (B, in)

    return run


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--context", type=int, default=13)
    ap.add_argument("--embedding", type=int, default=35)
    ap.add_argument("--hidden", type=int, default=675)
    ap.add_argument("--layers", type=int, default=2)
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--dropout", type=float, default=0.1282)
    ap.add_argument("--optimizer", default="adamw")
    ap.add_argument("--precision", default="bf16")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (a worker of 2 has 1)")
    ap.add_argument("--calls", type=int, default=300)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "gemm-ratio.json")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    hp = hparams.make({"context_length": args.context, "embedding_dim": args.embedding,
                       "hidden_width": args.hidden, "hidden_layers": args.layers,
                       "batch_size": args.batch, "dropout": args.dropout,
                       "optimizer": args.optimizer, "lr": 1.0e-3, "precision": args.precision})
    model = MLP.from_hparams(hp, VOCAB)
    step = ManualStep(model, hp)
    xb = torch.randint(0, VOCAB, (args.batch, args.context))
    yb = torch.randint(0, VOCAB, (args.batch,))

    results = {}
    # Alternate the two measurements so that drift of the machine hits both alike.
    steps, bare = [], []
    for _ in range(args.rounds):
        steps.append(per_call(lambda: step(xb, yb, 1.0e-3), args.calls, 1))
        bare.append(per_call(gemms(hp), args.calls, 1))
    step_s, gemm_s = statistics.median(steps), statistics.median(bare)
    flops = 0
    widths = [hp.context_length * hp.embedding_dim] + [hp.hidden_width] * hp.hidden_layers
    for fan_in, fan_out in zip(widths, widths[1:] + [VOCAB], strict=True):
        flops += 3 * 2 * args.batch * fan_in * fan_out  # forward, dW, dX
    results = {
        "config": hp.to_dict(), "threads": args.threads,
        "n_params": sum(p.numel() for p in model.parameters()),
        "step_ms": step_s * 1e3, "gemm_ms": gemm_s * 1e3, "ratio": gemm_s / step_s,
        "step_ms_rounds": [s * 1e3 for s in steps], "gemm_ms_rounds": [g * 1e3 for g in bare],
        "gemm_gflops": flops / gemm_s / 1e9, "step_gflops": flops / step_s / 1e9,
        "cpu": platform.processor() or platform.machine(), "torch": torch.__version__,
    }
    print(f"{hp.hidden_layers} x {hp.hidden_width}, context {hp.context_length}, embedding "
          f"{hp.embedding_dim}, batch {args.batch}, {args.precision}, {args.optimizer}, "
          f"dropout {args.dropout}, {args.threads} thread(s), {results['n_params']:,} params")
    print(f"  step (harness ManualStep): {step_s * 1e3:.3f} ms  ({results['step_gflops']:.1f} "
          "GFLOP/s of matrix products)")
    print(f"  its matrix products alone: {gemm_s * 1e3:.3f} ms  ({results['gemm_gflops']:.1f} "
          "GFLOP/s)")
    print(f"  ratio (GEMM time / step time): {gemm_s / step_s:.1%}  (rounds, ms: step "
          + ", ".join(f"{s * 1e3:.3f}" for s in steps) + "; gemm "
          + ", ".join(f"{g * 1e3:.3f}" for g in bare) + ")")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
