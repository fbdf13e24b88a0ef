#!/usr/bin/env bash
# Runs the whole product with no download: generates the Demo sign language (poses, label files,
# a tiny mT5) if missing, trains under the deepspeed launcher, evaluates, and prints the test
# BLEU-4 of the final model as its last line (dev is scored every 7 epochs, test at the end).
#   NUM_GPUS   ranks (default 1; CPU ranks when no GPU)   ZERO_STAGE  0-3 (default 2)
#   EPOCHS     training epochs                             OUTPUT_DIR  default out/demo
set -euo pipefail
cd "$(dirname "$0")/.."

NUM_GPUS=${NUM_GPUS:-1}
ZERO_STAGE=${ZERO_STAGE:-2}
EPOCHS=${EPOCHS:-14}
OUTPUT_DIR=${OUTPUT_DIR:-out/demo}
DATA_ROOT=${SIGN_DATA_ROOT:-./data}
BATCH_PER_RANK=$(( 16 / NUM_GPUS > 0 ? 16 / NUM_GPUS : 1 ))  # the global batch stays 16
if ! python -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"; then
  export DS_ACCELERATOR=cpu
  # One thread per rank: small kernels gain little from a second thread, and oversubscribed
  # threads (ranks + the DataLoader worker on few cores) cost several times more than they gain.
  export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
fi
export WANDB_MODE=${WANDB_MODE:-offline} TOKENIZERS_PARALLELISM=false

python -m demo.data --out "$DATA_ROOT/Demo"

deepspeed --num_gpus "$NUM_GPUS" --master_port "${MASTER_PORT:-29533}" fine_tuning.py \
  --dataset Demo --data_root "$DATA_ROOT" --task SLT \
  --batch-size "$BATCH_PER_RANK" --gradient-accumulation-steps 1 \
  --epochs "$EPOCHS" --warmup-epochs 0.5 --opt AdamW --lr 1e-3 --weight-decay 0.01 \
  --label_smoothing 0.1 --stgcn_channels 16,32 --hidden_dim 32 --temporal_layers 1 --hands_batch joint \
  --max_length 48 --num_beams 4 --max_new_tokens 30 \
  --zero_stage "$ZERO_STAGE" --dtype fp32 --num_workers 1 --eval_every 7 --skip_test_eval \
  --output_dir "$OUTPUT_DIR" "$@"

python - "$OUTPUT_DIR/log.txt" <<'PY'
import json, sys
records = [json.loads(line) for line in open(sys.argv[1]) if line.strip()]
final = records[-1]
print(f"epochs {final['epoch'] + 1}, dev BLEU-4 {final['dev_bleu4']:.2f}, "
      f"test ROUGE-L {final['test_rouge']:.2f}")
print(f"test BLEU-4: {final['test_bleu4']:.2f}")
PY
