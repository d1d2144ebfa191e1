"""Where a study's machine time went: a table of seconds per phase, from what its trials recorded.

Machine time is workers x wall time (each worker holds one share of the cores). Each trial
records its seconds per phase (`TrialRecord.times`: sampler, setup, tracking, storage, train,
eval, checkpoints); this script adds what lies between them: each worker's start-up (from the
command's start to its first trial), the time between its trials (ask/tell, heartbeats,
progress) and its idle time at the end (waiting for another worker's last trial), then
finalize (the wall time from the search's end to the final record, on all the cores), split
into its retrainings' training steps and dev evaluations (final.json records them) and the rest.
A second table splits the search's training steps by how each trial ended (complete, or pruned
at a step).

    date +%s > start; harness run-study studies/small.yaml; date +%s > end
    HARNESS_ROOT=... python bench/time_breakdown.py studies/small.yaml \\
        --wall-start $(cat start) --wall-end $(cat end)
"""

from __future__ import annotations

import argparse
import calendar
import time
from collections import defaultdict

from harness.config import load_spec
from harness.search import records
from harness.search import records as trials
from harness.search.liveness import load_study

PHASES = {  # recorded phase -> row name
    "sample": "sampler (ask, suggest)",
    "setup": "trial setup (data, config checks)",
    "tracking": "tracking (MLflow)",
    "storage": "storage and pruner (Optuna)",
    "train": "training steps",
    "eval": "evaluation (dev)",
    "checkpoints": "checkpoints",
}


FINAL_TRAIN = "finalize: training steps"
FINAL_EVAL = "finalize: evaluation (dev)"
FINAL_REST = "finalize: the rest (process start-up, test, samples, figures, records, idle cores)"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("study", help="the study file")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--workers", type=int, help="default: the study file's workers.count")
    parser.add_argument("--wall-start", type=float, help="epoch seconds the command started "
                        "(default: when its run-study opened the study)")
    parser.add_argument("--wall-end", type=float, help="epoch seconds the command ended "
                        "(default: the final record, else the last trial's end)")
    args = parser.parse_args()
    spec = load_spec(args.study, args.set)
    study = load_study(spec)
    record = records.read_record(study)
    recs = [r for r in trials.search_records(study) if not r.warm_from and r.started
            and r.completed]
    workers = args.workers or spec.workers.count
    start = args.wall_start or (record.timeout_start if record else
                                min(r.started.timestamp() for r in recs))
    search_end = max(r.completed.timestamp() for r in recs)
    final = records.read_final(study)
    final_end = (calendar.timegm(time.strptime(final["finished_at"], "%Y-%m-%d %H:%M:%S UTC"))
                 if final else search_end)
    end = args.wall_end or final_end

    rows: dict[str, float] = defaultdict(float)
    by_worker: dict[str, list[trials.TrialRecord]] = defaultdict(list)
    for r in recs:
        by_worker[r.worker or "?"].append(r)
        times = r.times or {}
        for phase, name in PHASES.items():
            rows[name] += times.get(phase, 0.0)
        rows["within trials, unrecorded (model set-up, ask/tell, heartbeats)"] += \
            r.duration_s - sum(times.values())
    for mine in by_worker.values():
        first = min(r.started.timestamp() for r in mine)
        last = max(r.completed.timestamp() for r in mine)
        rows["start-up (imports, study, workers)"] += first - start
        rows["between a worker's trials"] += (last - first) - sum(r.duration_s for r in mine)
        rows["idle at the search's end"] += search_end - last
    for _ in range(workers - len(by_worker)):  # a worker that never ran a trial
        rows["idle at the search's end"] += search_end - start
    finalize = workers * max(0.0, end - search_end)
    retrained = [c for c in (final or {}).get("candidates", ()) if c.get("train_s")]
    if retrained:  # final.json records each retraining's seconds (since issue 18)
        # finalize.fill's models too (since issue 18; absent in older records)
        rows[FINAL_TRAIN] = (sum(sum(c["train_s"]) for c in retrained)
                             + sum(final.get("fill_train_s", ())))
        rows[FINAL_EVAL] = (sum(sum(c["eval_s"]) for c in retrained)
                            + sum(final.get("fill_eval_s", ())))
        rows[FINAL_REST] = finalize - rows[FINAL_TRAIN] - rows[FINAL_EVAL]
    else:
        rows[FINAL_REST] = finalize

    total = workers * (end - start)
    print(f"study {spec.name}: {len(recs)} trials, {workers} workers, wall "
          f"{(end - start) / 60:.1f} min, machine time {total:,.0f} s (workers x wall)")
    print("| phase | seconds | share |\n| --- | ---: | ---: |")
    for name, seconds in rows.items():
        print(f"| {name} | {seconds:,.1f} | {seconds / total:.1%} |")
    search_useful = rows[PHASES["train"]] + rows[PHASES["eval"]]
    useful = search_useful + rows[FINAL_TRAIN] + rows[FINAL_EVAL]
    search = total - finalize
    print(f"| **accounted for** | {sum(rows.values()):,.1f} | {sum(rows.values()) / total:.1%} |")
    print(f"outside training and evaluation: {1 - search_useful / search:.1%} of the search's "
          f"machine time, {1 - useful / total:.1%} of the whole command's (finalize's "
          "retraining counted as training and evaluation"
          + ("" if retrained else ": not recorded in this final.json, so all of finalize "
             "counts as outside") + ")")
    print_steps_by_outcome(recs)


def print_steps_by_outcome(recs: list[trials.TrialRecord]) -> None:
    """The search's training steps by how each trial ended: complete, or pruned at a step
    (what a pruner's late rungs cost, in steps that no complete trial used)."""
    steps: dict[str, list[int]] = defaultdict(list)
    for r in recs:
        if r.steps:
            pruned = r.state.name == "PRUNED"
            steps[f"pruned at {r.steps:,}" if pruned else r.state.name.lower()].append(r.steps)
    total = sum(sum(v) for v in steps.values())
    if not total:
        return
    print("\n| trials | how they ended | training steps | share |\n| ---: | --- | ---: | ---: |")
    for outcome, counts in sorted(steps.items(), key=lambda kv: -sum(kv[1])):
        print(f"| {len(counts)} | {outcome} | {sum(counts):,} | {sum(counts) / total:.1%} |")


if __name__ == "__main__":
    main()
