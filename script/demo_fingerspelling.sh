#!/usr/bin/env bash
# Fingerspelling on real recordings: spells random words with the letter clips of the
# spoken-to-signed package's fingerspelling lexicon (MediaPipe Holistic .pose files, MIT), trains
# the translator on them and scores words never seen in training (character and word accuracy,
# BLEU-4 over letters). The package is downloaded once into $CACHE and read in place (it is not
# installed and not a requirement); LEXICON may name the wheel or an unpacked lexicon folder.
#   SIGN_LANGUAGE  lexicon language code (default ase)   EPOCHS      (default 30)
#   NUM_GPUS       ranks (default 1)                     OUTPUT_DIR  (default out/fingerspelling)
set -euo pipefail
cd "$(dirname "$0")/.."

SIGN_LANGUAGE=${SIGN_LANGUAGE:-ase}
EPOCHS=${EPOCHS:-30}
NUM_GPUS=${NUM_GPUS:-1}
OUTPUT_DIR=${OUTPUT_DIR:-out/fingerspelling}
DATA_ROOT=${FS_DATA_ROOT:-./data/fingerspelling}
CACHE=${CACHE:-./data/cache}
BATCH_PER_RANK=$(( 16 / NUM_GPUS > 0 ? 16 / NUM_GPUS : 1 ))
if ! python -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"; then
  export DS_ACCELERATOR=cpu
  export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
fi
export WANDB_MODE=${WANDB_MODE:-offline} TOKENIZERS_PARALLELISM=false

if [ -z "${LEXICON:-}" ]; then
  LEXICON=$(ls "$CACHE"/spoken_to_signed-*.whl 2>/dev/null | head -n 1 || true)
  if [ -z "$LEXICON" ]; then
    pip download --no-deps spoken-to-signed -d "$CACHE"
    LEXICON=$(ls "$CACHE"/spoken_to_signed-*.whl | head -n 1)
  fi
fi

python script/make_fingerspelling_demo.py --lexicon "$LEXICON" --out "$DATA_ROOT/Demo" \
  --language "$SIGN_LANGUAGE"

deepspeed --num_gpus "$NUM_GPUS" --master_port "${MASTER_PORT:-29534}" fine_tuning.py \
  --dataset Demo --data_root "$DATA_ROOT" --task SLT \
  --batch-size "$BATCH_PER_RANK" --gradient-accumulation-steps 1 \
  --epochs "$EPOCHS" --warmup-epochs 0.5 --opt AdamW --lr 1e-3 --weight-decay 0.01 \
  --label_smoothing 0.1 --stgcn_channels 16,32 --hidden_dim 32 --temporal_layers 1 \
  --max_length 128 --num_beams 4 --max_new_tokens 20 \
  --zero_stage 2 --dtype fp32 --num_workers 1 --eval_every 10 --skip_test_eval \
  --output_dir "$OUTPUT_DIR" "$@"

python script/make_fingerspelling_demo.py --score "$OUTPUT_DIR"
python - "$OUTPUT_DIR/log.txt" <<'PY'
import json, sys
final = [json.loads(line) for line in open(sys.argv[1]) if line.strip()][-1]
print(f"epochs {final['epoch'] + 1}, dev BLEU-4 {final['dev_bleu4']:.2f}")
print(f"test BLEU-4 (letters): {final['test_bleu4']:.2f}")
PY
