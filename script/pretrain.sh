#!/usr/bin/env bash
# Uni-Sign's stage-1 recipe: generative pretraining on CSL-News with mt5-base on 4 GPUs.
# Pack the per-clip pickles first for speed: python script/pack_poses.py --pose_dir D --out D
set -euo pipefail
cd "$(dirname "$0")/.."

deepspeed --num_gpus "${NUM_GPUS:-4}" --master_port "${MASTER_PORT:-29511}" pretraining.py \
   --batch-size 16 \
   --gradient-accumulation-steps 8 \
   --epochs 20 \
   --opt AdamW \
   --lr 3e-4 \
   --quick_break 2048 \
   --output_dir "${OUTPUT_DIR:-out/stage1_pretraining}" \
   --dataset CSL_News \
   --mt5_path "${MT5_PATH:-./pretrained_weight/mt5-base}" \
   "$@"
