#!/bin/bash
# The GPU figure of issue #3: frozen and fine-tuned test accuracy of the study's MAE
# (mae_vit_tiny_patch4) within one 10-minute run, epochs stated. Not yet run (no GPU lent so far).
#   LATENTPROBE_DATA=/path bash benchmarks/mae_10min.sh [RUN_DIR] [PRETRAIN_EPOCHS] [FINETUNE_EPOCHS]
# Prints the wall time of each stage; the numbers are in RUN_DIR/mae_report.md.
set -euo pipefail
RUN=${1:-runs/mae_10min}
PRETRAIN_EPOCHS=${2:-100}
FINETUNE_EPOCHS=${3:-30}
start=$SECONDS
stage() { echo "== $1: $((SECONDS - start)) s"; }
python3 benchmarks/bench_mae.py --device cuda
python3 benchmarks/bench_mae.py --device cuda --compile
stage "throughput measured"; start=$SECONDS
latentprobe train --config configs/mae_tiny_patch4.yaml --epochs "$PRETRAIN_EPOCHS" \
  --warmup-epochs 5 --grid-every 25 --compile true --out "$RUN"
stage "pretrained $PRETRAIN_EPOCHS epochs"
latentprobe probe "$RUN" --head linear
latentprobe probe "$RUN" --head bn_linear
stage "frozen probes"
latentprobe finetune "$RUN" --epochs "$FINETUNE_EPOCHS" --batch-size 256 --warmup-epochs 3
stage "fine-tuned $FINETUNE_EPOCHS epochs (total since pretraining started)"
cat "$RUN/mae_report.md" | head -12
