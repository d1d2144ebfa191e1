"""Training steps per second of two configs on one device: the lecture's and the largest that
studies/search.yaml can sample (its space read from the file), with the harness's own `train`.

    python bench/gpu_step.py --device cuda --steps 3000 --out OUT.json
    python bench/gpu_step.py --device cpu --steps 3000     # the CPU figures to compare with

Each config trains `--steps` steps after a warm-up of up to 200, evaluating once at the end; the
figure is train()'s steps_per_sec (evaluations excluded). Written as JSON to --out.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import torch

from harness.config import DataConfig, load_spec
from harness.config.hparams import HParams
from harness.training.data import load_search_data
from harness.training.train import train

REPO = Path(__file__).resolve().parent.parent
SIZES = ("context_length", "embedding_dim", "hidden_width", "hidden_layers", "batch_size")


def configs() -> dict[str, HParams]:
    search = load_spec(REPO / "studies" / "search.yaml")
    # The first enqueued config's learning rate and regularisation (the defaults' SGD rate
    # diverges with AdamW), at the largest sizes the space allows.
    known = {k: v for k, v in search.enqueue[0].items() if k not in SIZES}
    largest = search.base_hparams(precision="fp32", **known,
                                  **{name: search.largest(name) for name in SIZES})
    return {"lecture": HParams(), "search.yaml largest fp32": largest,
            "search.yaml largest bf16": HParams(**{**largest.to_dict(), "precision": "bf16"})}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--steps", type=int, default=3000)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    rows = {}
    for name, hp in configs().items():
        if args.device == "cpu" and hp.precision == "bf16":
            continue  # bf16 on a CPU: bench/gemm_ratio.py measures it
        data = load_search_data(DataConfig(), hp.context_length)
        warm = min(200, args.steps)
        train(hp, data, steps=warm, eval_every=warm, device=args.device)  # warm-up
        t0 = time.perf_counter()
        result = train(hp, data, steps=args.steps, eval_every=args.steps, device=args.device)
        rows[name] = {"steps_per_sec": result.steps_per_sec, "n_params": result.n_params,
                      "wall_s": time.perf_counter() - t0, "config": hp.to_dict()}
        print(f"{name:<28} {result.steps_per_sec:>9,.0f} steps/s  ({result.n_params:,} "
              f"parameters, batch {hp.batch_size})", flush=True)
    device = (torch.cuda.get_device_name(0) if args.device.startswith("cuda")
              else platform.processor() or "cpu")
    report = {"device": device, "torch": torch.__version__, "threads": torch.get_num_threads(),
              "steps": args.steps, "configs": rows}
    if args.out:
        args.out.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
