#!/usr/bin/env bash
# The CIFAR-10 design-space exploration reported in docs/exploration.md (paper sections 5-6),
# sized for a 2-core CPU: quarter-width fire modules (base_e = incr_e = 32 instead of 128),
# 20,000 training images x 2 epochs per point, two points trained at a time.
# The three sweeps use different seeds, so the points they share (SR 0.5 = pct3x3 0.5, and
# SR 0.125 = bypass none) measure how much a seed alone moves top-1.
# Usage: bash bench/explore_cifar.sh [OUT]   (about 50 minutes here; resumable: run it again)
set -euo pipefail
OUT=${1:-runs/explore}
DATA=${SHARED:-../shared/data}/cifar10
PY=${PY:-.venv/bin/python}
COMMON=(--data "$DATA" --config configs/cifar10.yaml --base-e 32 --incr-e 32 --epochs 2 --limit-train 20000 --jobs 2)
start=$(date +%s)
$PY -m squeezenet explore --sweep sr --values 0.125 0.25 0.5 0.75 1.0 "${COMMON[@]}" --seed 0 --out "$OUT/sr"
$PY -m squeezenet explore --sweep pct3x3 --values 0.01 0.25 0.5 0.75 0.99 "${COMMON[@]}" --seed 1 --out "$OUT/pct3x3"
$PY -m squeezenet explore --sweep bypass "${COMMON[@]}" --seed 2 --out "$OUT/bypass"
echo "exploration wall time: $(( $(date +%s) - start )) s"
