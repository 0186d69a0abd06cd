#!/bin/bash
# The second write-up at full length on one GPU (issue: 330-epoch MAE in minutes): pretrain the study's
# MAE (mae_vit_tiny_patch4) for 330 epochs, probe its frozen latent (linear, BN-linear, kNN; the random
# encoder beside it), fine-tune it; the wall time of each stage is printed. Numbers: docs/RESULTS.md.
#   bash benchmarks/mae_gpu.sh [RUN_DIR] [PRETRAIN_EPOCHS] [FINETUNE_EPOCHS]
# Batch 500 divides the 45,000 training images, so every step has one shape and one CUDA graph.
set -euo pipefail
RUN=${1:-runs/mae_p4_330}
PRETRAIN_EPOCHS=${2:-330}
FINETUNE_EPOCHS=${3:-100}
GRAPHS="--compile true --compile-mode reduce-overhead"
start=$SECONDS
stage() { echo "== $1: $((SECONDS - start)) s"; start=$SECONDS; }
python3 -m latentprobe train --config configs/mae_tiny_patch4.yaml --epochs "$PRETRAIN_EPOCHS" --batch-size 500 \
  $GRAPHS --grid-every 30 --checkpoint-every 10 --out "$RUN"
stage "pretrained $PRETRAIN_EPOCHS epochs"
python3 -m latentprobe evaluate "$RUN" --probes linear,bn_linear,knn --baselines random --seeds 3
stage "frozen probes"
python3 -m latentprobe finetune "$RUN" --epochs "$FINETUNE_EPOCHS" --batch-size 500 --warmup-epochs 5 $GRAPHS
stage "fine-tuned $FINETUNE_EPOCHS epochs"
