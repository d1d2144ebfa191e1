"""Best dev loss of a study after given minutes of its search: for comparing searches (a warm
start against a cold one) at the same wall clock.

Minutes count from the study's first trial start. A trial counts once it has ended (its
completion time); warm-start trials (an earlier study's, added at creation) count from minute 0,
and are also left out in a second column, which shows what the study found by itself.

    HARNESS_ROOT=/tmp/cold/mlruns python bench/best_over_time.py studies/search.yaml \\
        --minutes 15 30 45
"""

from __future__ import annotations

import argparse

from optuna.trial import TrialState

from harness.config import load_spec
from harness.search import records
from harness.search.liveness import load_study


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("study", help="the study file")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--minutes", type=float, nargs="+", default=[15, 30, 45])
    args = parser.parse_args()
    spec = load_spec(args.study, args.set)
    recs = records.search_records(load_study(spec))
    own = [r for r in recs if not r.warm_from and r.started]
    start = min(r.started for r in own)
    print(f"study {spec.name}: {len(own)} trials of its own, {len(recs) - len(own)} warm")
    print("minutes | best dev (all) | best dev (own trials) | own trials ended")
    for m in args.minutes:
        ended = [r for r in own if r.completed and
                 (r.completed - start).total_seconds() <= m * 60]
        done = [r for r in ended if r.state == TrialState.COMPLETE]
        warm = [r for r in recs if r.warm_from and r.value is not None]
        best_own = min((r.value for r in done), default=None)
        best_all = min([r.value for r in warm] + ([best_own] if best_own else []),
                       default=None)
        print(f"{m:7.0f} | {_fmt(best_all):>14} | {_fmt(best_own):>21} | {len(ended):>16}")


def _fmt(x: float | None) -> str:
    return "-" if x is None else f"{x:.4f}"


if __name__ == "__main__":
    main()
