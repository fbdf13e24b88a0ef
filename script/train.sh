#!/usr/bin/env bash
# Fine-tunes the pose-only translator on CSL-Daily with mt5-base (Uni-Sign's stage-3 pose-only
# recipe). Pass extra flags after the script name, e.g. --use_hyperbolic.
set -euo pipefail
cd "$(dirname "$0")/.."

output_dir=${OUTPUT_DIR:-out/stage3_finetuning}
ckpt_path=${CKPT:-out/stage1_pretraining/best_checkpoint.pth}
finetune=()
[ -f "$ckpt_path" ] && finetune=(--finetune "$ckpt_path")

deepspeed --num_gpus "${NUM_GPUS:-4}" --master_port "${MASTER_PORT:-29511}" fine_tuning.py \
  --batch-size 8 \
  --gradient-accumulation-steps 1 \
  --epochs 20 \
  --opt AdamW \
  --lr 3e-4 \
  --output_dir "$output_dir" \
  "${finetune[@]}" \
  --dataset CSL_Daily \
  --task SLT \
  --mt5_path "${MT5_PATH:-./pretrained_weight/mt5-base}" \
  "$@"
