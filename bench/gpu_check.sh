#!/usr/bin/env bash
# One call on a GPU machine, its figures written under $OUT (about 7 minutes):
#   1. install the carried wheels (bench/gpu_wheels.sh prepares them, in .whl/);
#   2. run the CUDA tests (the CUDA-graph step included);
#   3. train the lecture's config and studies/search.yaml's largest on the GPU for a fixed
#      number of steps (bench/gpu_step.py: steps/s, against bench/results/cpu-step-*.json);
#   4. run studies/gpu.yaml for 4 minutes, its workers.per_gpu workers on the one GPU (bf16),
#      sampling nvidia-smi each second: trials per minute, GPU utilisation, best dev loss.
# On the device tool:   run(command="bash bench/gpu_check.sh", carry=[".whl"], timeout_s=540)
# On your own GPU:      OUT=gpu-check bash bench/gpu_check.sh      (wheels optional there)
# Dry run (CPU, tiny sizes, what CI runs so it does not rot):  bash bench/gpu_check.sh --dry-run
set -uo pipefail
cd "$(dirname "$0")/.."
DRY=0
[ "${1:-}" = "--dry-run" ] && DRY=1
OUT=${OUT:-$(mktemp -d)}
mkdir -p "$OUT"
work=$(mktemp -d)
export HARNESS_ROOT="$work/mlruns" PYTHONUNBUFFERED=1
PYTHON=${PYTHON:-python3}
log() { echo "[gpu_check $(date +%H:%M:%S)] $*" | tee -a "$OUT/gpu-check.log"; }
if [ $DRY = 1 ]; then
  DEVICE=cpu STEPS=50 STUDY_S=25 UTIL=0
  STUDY_SET=(--set budget.n_trials=2 --set budget.steps=100 --set budget.eval_every=50
             --set workers.count=2 --set fixed.precision=fp32)
else
  DEVICE=cuda STEPS=3000 STUDY_S=240 UTIL=1
  STUDY_SET=()
fi

# 1. The wheels: into a fresh folder (a dry run checks they install for the GPU's Python 3.12).
if compgen -G ".whl/*.whl" > /dev/null; then
  flags=(--no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$work/site")
  if [ $DRY = 1 ]; then
    flags+=(--only-binary=:all: --python-version 3.12 --implementation cp
            --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64
            --platform manylinux2014_x86_64 --platform any)
  fi
  "$PYTHON" -m pip install -q "${flags[@]}" .whl/*.whl || { log "FAILED: the wheels"; exit 1; }
  log "wheels: $(ls .whl | wc -l) installed into a fresh folder ($(du -sh .whl | cut -f1))"
  [ $DRY = 0 ] && export PYTHONPATH="$work/site:$PWD"
else
  log "wheels: none in .whl (bench/gpu_wheels.sh prepares them); using what is installed"
fi
# This tree's harness, ahead of any installed copy.
[ $DRY = 1 ] && export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
[ $DRY = 0 ] && export PYTHONPATH="${PYTHONPATH:-$PWD}"
[ $UTIL = 1 ] && nvidia-smi > "$OUT/nvidia-smi.txt" 2>&1

# 2. The CUDA tests (they skip, and say so, without a GPU).
log "CUDA tests"
"$PYTHON" -m pytest -q -m cuda -rs -p no:cacheprovider tests > "$OUT/cuda-tests.txt" 2>&1
log "CUDA tests: $(tail -1 "$OUT/cuda-tests.txt")"

# 3. Steps per second of two configs on the device.
log "training steps on $DEVICE"
"$PYTHON" bench/gpu_step.py --device "$DEVICE" --steps "$STEPS" --out "$OUT/gpu-step.json" \
  | tee -a "$OUT/gpu-check.log" || { log "FAILED: bench/gpu_step.py"; exit 1; }

# 4. studies/gpu.yaml for STUDY_S seconds, nvidia-smi sampled each second.
if [ $UTIL = 1 ]; then
  nvidia-smi --query-gpu=utilization.gpu,memory.used --format=csv,noheader,nounits -l 1 \
    > "$OUT/gpu-util.csv" 2>&1 &
  smi=$!
fi
log "studies/gpu.yaml for $STUDY_S s on $DEVICE"
started=$(date +%s)
"$PYTHON" -m harness run-study studies/gpu.yaml --device "$DEVICE" --no-finalize \
  --set budget.wall_time=$STUDY_S --set budget.timeout=$STUDY_S "${STUDY_SET[@]}" \
  > "$OUT/gpu-study.txt" 2>&1
status=$?
elapsed=$(( $(date +%s) - started ))
[ $UTIL = 1 ] && kill $smi 2> /dev/null
"$PYTHON" - "$OUT" "$elapsed" "$status" <<'PY'
import csv, json, os, sys
from pathlib import Path
out, elapsed, status = Path(sys.argv[1]), float(sys.argv[2]), int(sys.argv[3])
board = Path(os.environ["HARNESS_ROOT"]) / "studies" / "gpu" / "leaderboard.csv"
rows = list(csv.DictReader(board.open())) if board.exists() else []
done = [r for r in rows if r["state"] in ("COMPLETE", "PRUNED", "FAIL")]
losses = [float(r["best_dev_loss"]) for r in rows if r["state"] == "COMPLETE"]
util = []
if (out / "gpu-util.csv").exists():
    for line in (out / "gpu-util.csv").read_text().splitlines():
        try:
            util.append(float(line.split(",")[0]))
        except ValueError:
            pass
summary = {"exit_status": status, "seconds": elapsed, "trials_finished": len(done),
           "trials_per_minute": 60 * len(done) / elapsed if elapsed else None,
           "complete": len(losses), "best_dev_loss": min(losses, default=None),
           "gpu_util_mean": sum(util) / len(util) if util else None,
           "gpu_util_samples": len(util)}
(out / "gpu-study.json").write_text(json.dumps(summary, indent=2) + "\n")
print(json.dumps(summary))
PY
log "done: figures in $OUT"
[ $status = 0 ]
