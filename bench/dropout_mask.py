"""The dropout mask alone: the harness's `dropout_mask` against the ways it could be drawn.

One torch thread (a worker's share), one mask of batch x width, the milliseconds per mask (the
best of 7 rounds of 100) and the share of elements it drops:

    python bench/dropout_mask.py                     # 256 x 1,024, p 0.22: search.yaml's best
    python bench/dropout_mask.py --batch 256 --width 675 --p 0.128
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F

from harness.training.model import dropout_mask


def per_mask_ms(fn: Callable[[], torch.Tensor]) -> tuple[float, float]:
    """Best-of-7 milliseconds per call of `fn`, and the share of zeros in its last mask."""
    for _ in range(20):
        fn()
    best = float("inf")
    for _ in range(7):
        t0 = time.perf_counter()
        for _ in range(100):
            mask = fn()
        best = min(best, (time.perf_counter() - t0) / 100)
    return 1e3 * best, (mask == 0).float().mean().item()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--width", type=int, default=1024)
    ap.add_argument("--p", type=float, default=0.22)
    args = ap.parse_args()
    torch.set_num_threads(1)
    h, p = torch.randn(args.batch, args.width), args.p
    ways = {
        "harness dropout_mask (16-bit lanes of 64-bit draws)": lambda: dropout_mask(h, p),
        "rand_like(h) < 1 - p, / (1 - p) (before)": lambda: torch.rand_like(h).lt_(1 - p)
        .div_(1 - p),
        "uint8 randint >= 256 p": lambda: torch.randint(0, 256, h.shape, dtype=torch.uint8)
        .ge_(round(256 * p)).float().div_(1 - p),
        "F.dropout of ones (bernoulli_)": lambda: F.dropout(torch.ones_like(h), p),
    }
    print(f"mask {args.batch} x {args.width}, p {p}, 1 thread: ms per mask (best of 7 x 100)")
    for name, fn in ways.items():
        ms, dropped = per_mask_ms(fn)
        print(f"  {name:55s} {ms:7.3f} ms   dropped {dropped:.4f}")


if __name__ == "__main__":
    main()
