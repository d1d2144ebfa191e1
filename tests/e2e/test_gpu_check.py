"""bench/gpu_check.sh, dry: the wheels it carries install into a fresh folder for the GPU
machine's Python, and its steps run end to end on this CPU with tiny sizes, so that the one
call a lent GPU allows is not spent on a script that rotted."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.slow


def test_the_gpu_check_runs_dry_on_this_cpu(tmp_path: Path) -> None:
    if not list((REPO / ".whl").glob("*.whl")):
        prepared = subprocess.run(["bash", "bench/gpu_wheels.sh"], cwd=REPO,
                                  capture_output=True, text=True, timeout=600)
        if prepared.returncode != 0:
            pytest.skip(f"the wheels could not be downloaded (no network?): "
                        f"{prepared.stderr.strip().splitlines()[-1:]}")
    wheels = sum(p.stat().st_size for p in (REPO / ".whl").glob("*.whl"))
    assert wheels < 48 * 2**20  # with the tree, under the device tool's 64 MiB
    env = {**os.environ, "OUT": str(tmp_path / "out"), "PYTHON": sys.executable}
    env.pop("HARNESS_ROOT", None)
    proc = subprocess.run(["bash", "bench/gpu_check.sh", "--dry-run"], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=900)
    log = (tmp_path / "out" / "gpu-check.log").read_text()
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "installed into a fresh folder" in log
    assert "CUDA tests:" in log and "skipped" in log  # no GPU here: they say so
    steps = json.loads((tmp_path / "out" / "gpu-step.json").read_text())
    assert {"lecture", "search.yaml largest fp32"} <= set(steps["configs"])
    study = json.loads((tmp_path / "out" / "gpu-study.json").read_text())
    assert study["exit_status"] == 0 and study["trials_finished"] >= 1
    assert study["best_dev_loss"] is not None
    assert shutil.which("bash")
