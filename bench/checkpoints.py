"""What trial checkpoints cost: seconds spent saving against the trial's training time.

Trains configs of `studies/search.yaml`'s space with its budget's evaluation interval and a
checkpoint at every evaluation (the default), saving through the harness's CheckpointStore to
a local folder, and prints the share of the run spent saving and the checkpoint's size.

    python bench/checkpoints.py                 # run 4's best config and the space's largest
    python bench/checkpoints.py --steps 3000 --threads 1
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch

from harness.config import DataConfig
from harness.config.hparams import HParams
from harness.search.checkpoints import CheckpointStore
from harness.training.data import load_search_data
from harness.training.train import TrainState, train

CONFIGS = {
    # studies/RESULTS.md, run 4's best trial (783,297 parameters)
    "run 4 best (2 x 675)": dict(context_length=13, embedding_dim=35, hidden_width=675,
                                 hidden_layers=2, dropout=0.1282, batch_size=256,
                                 weight_decay=0.03298, optimizer="adamw", lr=3.819e-4,
                                 lr_schedule="step", lr_step_factor=0.03704,
                                 lr_step_at=0.6043, precision="bf16"),
    # the largest model search.yaml can sample: the most to save per checkpoint
    "largest (3 x 1024)": dict(context_length=16, embedding_dim=64, hidden_width=1024,
                               hidden_layers=3, batch_size=256, optimizer="adamw", lr=3.0e-4,
                               precision="bf16"),
}


def measure(name: str, config: dict, steps: int, eval_every: int) -> dict:
    hp = HParams(**config)
    data = load_search_data(DataConfig(), hp.context_length)
    with tempfile.TemporaryDirectory() as tmp:
        store = CheckpointStore(Path(tmp))
        saves: list[float] = []

        def save(state: TrainState) -> None:
            t0 = time.perf_counter()
            store.save(0, state)
            saves.append(time.perf_counter() - t0)

        result = train(hp, data, steps=steps, eval_every=eval_every,
                       checkpoint_every=eval_every, on_checkpoint=save)
        size = store.disk_bytes()
    return {"config": name, "n_params": result.n_params, "steps": steps,
            "checkpoints": len(saves), "checkpoint_mb": size / 1e6,
            "save_s_mean": sum(saves) / len(saves), "save_s_total": sum(saves),
            "train_s": result.elapsed_s, "share": sum(saves) / result.elapsed_s}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=5000)
    parser.add_argument("--eval-every", type=int, default=1000, help="search.yaml's: 1000")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (a worker's)")
    parser.add_argument("--out", type=Path, help="also write the figures as JSON")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    rows = [measure(name, cfg, args.steps, args.eval_every) for name, cfg in CONFIGS.items()]
    for r in rows:
        print(f"{r['config']:<22} {r['n_params']:>9,} params  {r['checkpoints']} checkpoints of "
              f"{r['checkpoint_mb']:.1f} MB, {r['save_s_mean'] * 1000:.0f} ms each: "
              f"{r['save_s_total']:.2f} s of {r['train_s']:.1f} s trained = "
              f"{100 * r['share']:.2f}%")
    if args.out:
        args.out.write_text(json.dumps({"threads": args.threads, "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
