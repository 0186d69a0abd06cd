#!/usr/bin/env bash
# The CPU headline end to end, each stage timed by /usr/bin/time -v (wall, CPU, peak resident memory):
#   bash benchmarks/headline.sh [RUN_DIR] [extra evaluate options]
#   MODEL_ARGS="... pool_grid=4" LATENT_DIM=32000 bash benchmarks/headline.sh RUN_DIR   (another patch model)
# Pretraining: the winner-take-all patch autoencoder, 2,000 filters and their mirror images (a 4,000-filter
# dictionary), 16,000-d flip-invariant soft-threshold latent, its products in bfloat16, 2 epochs.
# Evaluation: BN + linear, cosine lr over 60 epochs (EPOCHS), chosen on validation, then refit on training +
# validation (REFIT=--refit, the default; REFIT= for none), 3 probe seeds; the latent of an image is that of
# its mirror image, so the probe sees what training on mirror images would show it. Until git 26e7db5 the
# defaults were 30 epochs and no refit (RESULTS, "Lean and fast, second step"). The recipe before it
# (4,000 free filters, 32,000-d, 15 probe epochs over the images and their mirror images):
#   MODEL_ARGS="activation=winner_take_all winners=1 encoding=soft_threshold" LATENT_DIM=32000 EPOCHS=15 \
#       bash benchmarks/headline.sh RUN_DIR --flip-train
# Stage figures go to RUN_DIR.train.time and RUN_DIR.evaluate.time; docs/RESULTS.md quotes them.
set -euo pipefail
run=${1:-runs/headline}
shift || true
mkdir -p "$(dirname "$run")"
/usr/bin/time -v -o "$run.train.time" latentprobe train --model patch_ae --latent-dim "${LATENT_DIM:-16000}" \
    --epochs 2 --batch-size 32 --optimizer adam --lr 3e-3 --seed 0 \
    --model-args "${MODEL_ARGS:-activation=winner_take_all winners=1 encoding=soft_threshold flip_invariant=true precision=bfloat16}" --out "$run"
/usr/bin/time -v -o "$run.evaluate.time" latentprobe evaluate "$run" --probes bn_linear --probe-schedule cosine \
    --probe-epochs "${EPOCHS:-60}" --probe-patience "${EPOCHS:-60}" ${REFIT---refit} --baselines none --probe-seeds 3 \
    --threads 2 "$@"
for stage in train evaluate; do
    echo "$stage: $(grep -E 'Elapsed|Maximum resident' "$run.$stage.time" | sed 's/^\s*//' | paste -sd ';')"
done
