#!/usr/bin/env bash
# Pose-to-German translation on PHOENIX-2014-T with mt5-base, read from the official corpus files
# data/phoenix2014T/PHOENIX-2014-T.{train,dev,test}.corpus.csv ('translation' column) and poses
# dataset/phoenix2014T/pose_format/NAME.pkl. Scored at word level as the PHOENIX-2014-T
# literature does (see the README). Starts from a pretraining checkpoint when CKPT names one
# (a CSL-News stage-1 run, or a CTC recognizer through --init_encoder). Extra flags follow the
# script name, e.g. --use_signcl or --use_hyperbolic.
set -euo pipefail
cd "$(dirname "$0")/.."

output_dir=${OUTPUT_DIR:-out/phoenix2014T_slt}
start=()
if [ -n "${CKPT:-}" ]; then start=(--finetune "$CKPT"); fi
if [ -n "${ENCODER:-}" ]; then start=(--init_encoder "$ENCODER"); fi

deepspeed --num_gpus "${NUM_GPUS:-4}" --master_port "${MASTER_PORT:-29512}" fine_tuning.py \
  --dataset PHOENIX2014T \
  --task SLT \
  --batch-size 8 \
  --gradient-accumulation-steps 1 \
  --epochs 40 \
  --opt AdamW \
  --lr 3e-4 \
  --warmup-epochs 1 \
  --max_length 256 \
  --num_beams 4 \
  --max_new_tokens 100 \
  --bucket_by_length \
  --output_dir "$output_dir" \
  "${start[@]}" \
  --mt5_path "${MT5_PATH:-./pretrained_weight/mt5-base}" \
  "$@"
