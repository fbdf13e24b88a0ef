#!/usr/bin/env bash
# Uni-Sign's stage-1 recipe (its script/train_stage1.sh): generative pretraining on CSL-News with
# mt5-base on 4 GPUs, batch 16 x accumulation 8, AdamW at lr 3e-4, 20 epochs of 2048 steps.
# Poses come from $SIGN_POSE_ROOT/CSL_News/pose_format (default ./dataset/...): per-clip pickles
# or a packed pose store in that folder, which is detected and used. PACK=1 first packs the
# pickles there (script/pack_poses.py: resumable, and a finished store is kept). Extra flags are
# passed on, e.g. --bucket_by_length.
#   NUM_GPUS (4)  MASTER_PORT (29511)  OUTPUT_DIR (out/stage1_pretraining)
#   MT5_PATH (./pretrained_weight/mt5-base)  PACK (0)  PACK_WORKERS (all cores)
set -euo pipefail
cd "$(dirname "$0")/.."

POSE_DIR="${SIGN_POSE_ROOT:-./dataset}/CSL_News/pose_format"
if [ "${PACK:-0}" = 1 ]; then
  python script/pack_poses.py --pose_dir "$POSE_DIR" --out "$POSE_DIR" \
    --workers "${PACK_WORKERS:-$(nproc)}"
fi

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
