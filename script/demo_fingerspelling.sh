#!/usr/bin/env bash
# Fingerspelling on real recordings: spells random words with the letter clips of the
# spoken-to-signed package's fingerspelling lexicon (MediaPipe Holistic .pose files, MIT), then
#   1. trains the CTC recognizer to read the letters (letters are glosses),
#   2. trains the translator, its pose encoder started from the recognizer's (--init_encoder),
# and scores both on words never seen in training (character and word accuracy, BLEU-4 over
# letters). The package is downloaded once into $CACHE and read in place (it is not installed
# and not a requirement); LEXICON may name the wheel or an unpacked lexicon folder.
#   SIGN_LANGUAGE  lexicon language code (default ase)   EPOCHS      translator (default 20)
#   CTC_EPOCHS     recognizer (default 5)                NUM_GPUS    ranks (default 1)
#   OUTPUT_DIR     default out/fingerspelling (recognizer in OUTPUT_DIR/ctc)
set -euo pipefail
cd "$(dirname "$0")/.."

SIGN_LANGUAGE=${SIGN_LANGUAGE:-ase}
EPOCHS=${EPOCHS:-20}
CTC_EPOCHS=${CTC_EPOCHS:-5}
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

ENCODER=(--stgcn_channels 16,32 --hidden_dim 32 --temporal_layers 1 --hands_batch joint
         --max_length 128)
deepspeed --num_gpus "$NUM_GPUS" --master_port "${MASTER_PORT:-29534}" fine_tuning.py \
  --dataset Demo --data_root "$DATA_ROOT" --task CSLR --head ctc "${ENCODER[@]}" \
  --ctc_hidden 256 --batch-size $(( 8 / NUM_GPUS > 0 ? 8 / NUM_GPUS : 1 )) \
  --gradient-accumulation-steps 1 --epochs "$CTC_EPOCHS" --opt adamw --lr 3e-3 \
  --weight-decay 1e-4 --zero_stage 2 --dtype fp32 --num_workers 1 --eval_every "$CTC_EPOCHS" \
  --output_dir "$OUTPUT_DIR/ctc"

deepspeed --num_gpus "$NUM_GPUS" --master_port "${MASTER_PORT:-29534}" fine_tuning.py \
  --dataset Demo --data_root "$DATA_ROOT" --task SLT "${ENCODER[@]}" \
  --init_encoder "$OUTPUT_DIR/ctc/best_checkpoint.pth" --pose_positions sinusoidal \
  --batch-size "$BATCH_PER_RANK" --gradient-accumulation-steps 1 \
  --epochs "$EPOCHS" --warmup-epochs 0.5 --opt AdamW --lr 1e-3 --weight-decay 0.01 \
  --label_smoothing 0.1 --num_beams 4 --max_new_tokens 20 \
  --zero_stage 2 --dtype fp32 --num_workers 1 --eval_every "$EPOCHS" --skip_test_eval \
  --output_dir "$OUTPUT_DIR" "$@"

for run in ctc .; do
  name=$([ "$run" = ctc ] && echo "CTC recognizer" || echo "translator")
  echo "$name, test words: $(python script/make_fingerspelling_demo.py --score "$OUTPUT_DIR/$run")"
done
