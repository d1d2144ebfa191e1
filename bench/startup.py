"""How long `harness run-study BAD.yaml` takes to report a study file's error: the whole
command, Python's start included, best of N runs (a busy machine only adds time).

    python bench/startup.py [--runs 10]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=10)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        bad = Path(tmp) / "bad.yaml"
        bad.write_text("name: bad\nbudget: {n_trials: -1}\nsearch: {lr: [0.1]}\n")
        times = []
        for _ in range(args.runs):
            t0 = time.perf_counter()
            proc = subprocess.run([sys.executable, "-m", "harness", "run-study", str(bad)],
                                  capture_output=True, text=True, cwd=tmp)
            times.append(time.perf_counter() - t0)
            assert proc.returncode == 2, proc.stderr
        python = []
        for _ in range(args.runs):
            t0 = time.perf_counter()
            subprocess.run([sys.executable, "-c", "pass"], check=True)
            python.append(time.perf_counter() - t0)
    print(f"bad study file reported in {min(times):.3f} s (best of {args.runs}; median "
          f"{sorted(times)[len(times) // 2]:.3f} s); a bare Python start: {min(python):.3f} s")


if __name__ == "__main__":
    main()
