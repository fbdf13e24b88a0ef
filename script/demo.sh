#!/usr/bin/env bash
# Runs the whole product with no download: generates the Demo sign language (poses, label files,
# a tiny mT5) if missing, trains under the deepspeed launcher, evaluates, and prints the test
# BLEU-4 of the epoch with the best dev BLEU-4 as its last line.
#   NUM_GPUS   ranks (default 1; CPU ranks when no GPU)   ZERO_STAGE  0-3 (default 2)
#   EPOCHS     training epochs                             OUTPUT_DIR  default out/demo
set -euo pipefail
cd "$(dirname "$0")/.."

NUM_GPUS=${NUM_GPUS:-1}
ZERO_STAGE=${ZERO_STAGE:-2}
EPOCHS=${EPOCHS:-12}
OUTPUT_DIR=${OUTPUT_DIR:-out/demo}
DATA_ROOT=${SIGN_DATA_ROOT:-./data}
if ! python -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"; then
  export DS_ACCELERATOR=cpu
  export OMP_NUM_THREADS=${OMP_NUM_THREADS:-$(( $(nproc) / NUM_GPUS > 0 ? $(nproc) / NUM_GPUS : 1 ))}
fi
export WANDB_MODE=${WANDB_MODE:-offline} TOKENIZERS_PARALLELISM=false

python demo_data.py --out "$DATA_ROOT/Demo"

deepspeed --num_gpus "$NUM_GPUS" --master_port "${MASTER_PORT:-29533}" fine_tuning.py \
  --dataset Demo --data_root "$DATA_ROOT" --task SLT \
  --batch-size 16 --gradient-accumulation-steps 1 \
  --epochs "$EPOCHS" --warmup-epochs 1 --opt AdamW --lr 3e-3 --weight-decay 0.01 \
  --label_smoothing 0.1 --stgcn_channels 32,64,64 --hidden_dim 64 --temporal_layers 2 \
  --max_length 128 --num_beams 4 --max_new_tokens 40 \
  --zero_stage "$ZERO_STAGE" --dtype fp32 --num_workers 1 --eval_every 3 \
  --output_dir "$OUTPUT_DIR" "$@"

python - "$OUTPUT_DIR/log.txt" <<'PY'
import json, sys
records = [json.loads(line) for line in open(sys.argv[1]) if line.strip()]
evaluated = [r for r in records if "dev_bleu4" in r and "test_bleu4" in r]
best = max(evaluated, key=lambda r: r["dev_bleu4"])
print(f"best dev BLEU-4 {best['dev_bleu4']:.2f} at epoch {best['epoch']}")
print(f"test BLEU-4: {best['test_bleu4']:.2f}")
PY
