#!/usr/bin/env bash
# Evaluates a fine-tuned checkpoint on the CSL-Daily dev and test splits (one process).
# Writes {dev,test}_tmp_pres.txt / _refs.txt and eval_metrics.json into the output directory.
set -euo pipefail
cd "$(dirname "$0")/.."

ckpt_path=${CKPT:-out/stage3_finetuning/best_checkpoint.pth}

deepspeed --num_gpus "${NUM_GPUS:-1}" --master_port "${MASTER_PORT:-29511}" fine_tuning.py \
  --batch-size 8 \
  --gradient-accumulation-steps 1 \
  --output_dir "${OUTPUT_DIR:-out/test}" \
  --finetune "$ckpt_path" \
  --dataset "${DATASET:-CSL_Daily}" \
  --task SLT \
  --mt5_path "${MT5_PATH:-./pretrained_weight/mt5-base}" \
  --eval \
  "$@"
