#!/usr/bin/env bash
# Prepare what bench/gpu_check.sh carries to a GPU machine that has no network: the wheels of
# the harness's dependencies its image lacks (Python 3.12, x86-64), in .whl/ (git-ignored).
# One command, run here:   bash bench/gpu_wheels.sh
# It prints their size: with the working tree, they must stay under the device tool's 64 MiB.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
version() { "$PYTHON" -c "import importlib.metadata as m; print(m.version('$1'))"; }
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
# The tracking client and its SQL store (not MLflow's server), Optuna, and the samplers' needs,
# at the versions installed here.
"$PYTHON" -m pip download -q --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
  --platform manylinux2014_x86_64 --platform any -d "$tmp" \
  "mlflow-skinny==$(version mlflow)" "optuna==$(version optuna)" "cmaes" "sqlalchemy" "alembic"
rm -rf .whl && mkdir .whl
normalize() { basename "$1" | sed -E 's/-[0-9].*//; s/_/-/g' | tr 'A-Z' 'a-z'; }
for wheel in "$tmp"/*.whl; do
  if ! grep -qx "$(normalize "$wheel")" bench/gpu_image_packages.txt; then
    cp "$wheel" .whl/
  fi
done
echo "$(ls .whl | wc -l) wheels in .whl: $(du -sh .whl | cut -f1)"
