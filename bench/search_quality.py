"""How good a study's hour is: best dev loss after 15, 30 and 60 minutes, the final test loss,
and the best Kneser-Ney order's test loss on the same data; with --peer, the plain peer's hour
on the same space and data after it (bench/plain_peer.py), for its best dev loss at the same
times.

    python bench/search_quality.py STUDY.yaml [--minutes 60] [--peer] [--out FILE.json]

The study runs unchanged (`harness run-study STUDY.yaml`) in a fresh results folder; its
budget.wall_time is its own. Times count from the command's start.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from harness.config import load_spec
from harness.search import counting, records
from harness.search.liveness import load_study

MARKS = (15, 30, 60)


def best_by(points: list[tuple[float, float]], minutes: float) -> float | None:
    """The lowest dev loss among trials that ended within `minutes`."""
    return min((loss for end_s, loss in points if end_s <= 60 * minutes), default=None)


def harness_hour(study: Path, root: Path) -> dict:
    env = {**os.environ, "HARNESS_ROOT": str(root)}
    started = time.time()
    proc = subprocess.run([sys.executable, "-m", "harness", "run-study", str(study)],
                          env=env, capture_output=True, text=True)
    wall = time.time() - started
    (root / "run-study.txt").write_text(proc.stdout + proc.stderr)
    if proc.returncode != 0:
        raise SystemExit(f"run-study failed ({proc.returncode}): {proc.stderr[-2000:]}")
    os.environ["HARNESS_ROOT"] = str(root)  # the stores read below
    spec = load_spec(study)
    recs = counting.complete(records.search_records(load_study(spec)))
    points = [(r.completed.timestamp() - started, r.loss) for r in recs
              if r.completed is not None and not r.warm_from]
    final = json.loads((root / "studies" / spec.name / "final.json").read_text())
    kn = [r for r in final["references"] if r["model"].startswith("Kneser-Ney")]
    return {"wall_s": wall, "trials": len(points),
            "best_dev": {m: best_by(points, m) for m in MARKS},
            # The saved model's: the mixture's, else the ensemble's, else the seeds' mean.
            "final_test": ((final.get("mix_ngram") or {}).get("test_loss")
                           or final.get("ensemble_test_loss") or final["test_mean"]),
            "final_dev": ((final.get("mix_ngram") or {}).get("dev_loss")
                          or final.get("ensemble_dev_loss") or final["dev_mean"]),
            "unmixed_test": final.get("ensemble_test_loss") or final["test_mean"],
            "seeds_test_mean": final["test_mean"],
            "kneser_ney": kn[0] if kn else None}


def peer_hour(study: Path, minutes: float, folder: Path) -> dict:
    log = folder / "peer.jsonl"
    subprocess.run([sys.executable, str(Path(__file__).parent / "plain_peer.py"), str(study),
                    "--minutes", str(minutes), "--out", str(log)], check=True)
    # Trials the pruner stopped are left out, as the harness's pruned trials are.
    points = [(r["end_s"], r["best_dev_loss"]) for r in map(json.loads, log.open())
              if not r["pruned"]]
    return {"trials": len(points), "best_dev": {m: best_by(points, m) for m in MARKS}}


def _marks(best: dict) -> str:
    return ", ".join(f"{m} min {best[m]:.4f}" if best[m] is not None else f"{m} min -"
                     for m in MARKS)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("study", type=Path)
    parser.add_argument("--minutes", type=float, default=60)
    parser.add_argument("--peer", action="store_true")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    folder = Path(tempfile.mkdtemp(prefix="search-quality-"))
    report = {"study": str(args.study), "folder": str(folder),
              "harness": harness_hour(args.study.resolve(), folder / "mlruns")}
    if args.peer:
        report["peer"] = peer_hour(args.study.resolve(), args.minutes, folder)
    h = report["harness"]
    print(f"harness: {h['trials']} complete trials; best dev after {_marks(h['best_dev'])}")
    kn = h["kneser_ney"]
    print(f"final model: dev {h['final_dev']:.4f}, test {h['final_test']:.4f}; "
          + (f"{kn['model']}: test {kn['test_loss']:.4f}" if kn else ""))
    if "peer" in report:
        p = report["peer"]
        print(f"plain peer: {p['trials']} trials; best dev after {_marks(p['best_dev'])}")
    if args.out:
        args.out.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
