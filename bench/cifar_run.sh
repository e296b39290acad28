#!/usr/bin/env bash
# The real CIFAR-10 run reported in the README: train a small-input SqueezeNet on this CPU,
# then Deep Compression with retraining. Usage: bash bench/cifar_run.sh [EPOCHS] [OUT]
set -euo pipefail
EPOCHS=${1:-6}   # about 60 minutes of training on a 2-core AVX2 CPU
OUT=${2:-runs/cifar}
DATA=${SHARED:-../shared/data}/cifar10
PY=${PY:-.venv/bin/python}
start=$(date +%s)
$PY -m squeezenet train --model squeezenet1_1 --small-input --data "$DATA" --config configs/cifar10.yaml \
    --epochs "$EPOCHS" --out "$OUT"
echo "training wall time: $(( $(date +%s) - start )) s"
$PY -m squeezenet compress --weights "$OUT/best.pt" --data "$DATA" --config configs/cifar10.yaml \
    --retrain-epochs 1 --retrain-lr 0.0003 --bits 5 --out "$OUT/cifar.sqz" --json | tail -1 > "$OUT/compress.json"
$PY -m squeezenet size "$OUT/cifar.sqz" | tail -2
echo "total wall time: $(( $(date +%s) - start )) s"
