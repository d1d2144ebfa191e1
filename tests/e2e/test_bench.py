"""The benchmark scripts that train run end to end, so that they do not rot between the
hour-long runs they exist for."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

from tests.conftest import REPO, tiny_study


def test_the_plain_peer_trains_the_studys_space_and_logs_each_trial(
        write_study: Callable[..., Path], tmp_path: Path) -> None:
    """bench/plain_peer.py on a study file as `harness init` writes them (precision auto,
    a searched space): it trains trials with the lecture's loop until its minutes are up and
    writes one line per finished trial."""
    study = write_study(tiny_study(budget={"n_trials": 3, "steps": 60, "eval_every": 30},
                                   fixed={"context_length": 3, "embedding_dim": 8,
                                          "hidden_width": 32, "precision": "auto",
                                          "optimizer": "adamw", "lr_schedule": "step"}))
    out = tmp_path / "peer.jsonl"
    proc = subprocess.run([sys.executable, str(REPO / "bench" / "plain_peer.py"), str(study),
                           "--minutes", "0.1", "--out", str(out)],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert lines and [r["trial"] for r in lines] == list(range(len(lines)))
    assert all(0 < r["end_s"] and math.isfinite(r["best_dev_loss"]) and r["pruned"] in (True, False)
               for r in lines)
    assert all(r["best_dev_loss"] < math.log(27) for r in lines)  # it learned something
