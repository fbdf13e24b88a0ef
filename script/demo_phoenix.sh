#!/usr/bin/env bash
# Translation and recognition on the generated PHOENIX-2014-T-shaped set, no download: generates
# data/PhoenixTDemo (corpus files with glosses and German translations, poses, a tiny mT5) if
# missing, trains a small pose encoder + mT5 to translate (--task SLT) and a small pose encoder +
# CTC head to recognise glosses (--task CSLR --head ctc) under the deepspeed launcher on CPU
# ranks (or GPUs), and prints the two test figures of the final models as its last lines (sizes
# chosen for about 12-14 minutes on a 2-core CPU):
#   test BLEU-4: X
#   test WER: Y
#   NUM_GPUS    ranks (default 1)          SLT_EPOCHS, CSLR_EPOCHS  training epochs
#   N_TRAIN     training clips (the set is regenerated when it changes)
#   OUTPUT_DIR  default out/demo_phoenix (slt/ and cslr/ below it)
# Extra arguments go to both trainings (so only flags that act on both heads, see flags.py).
set -euo pipefail
cd "$(dirname "$0")/.."

NUM_GPUS=${NUM_GPUS:-1}
SLT_EPOCHS=${SLT_EPOCHS:-14}
CSLR_EPOCHS=${CSLR_EPOCHS:-8}
N_TRAIN=${N_TRAIN:-2000}
OUTPUT_DIR=${OUTPUT_DIR:-out/demo_phoenix}
DATA_ROOT=${SIGN_DATA_ROOT:-./data}
BATCH_PER_RANK=$(( 16 / NUM_GPUS > 0 ? 16 / NUM_GPUS : 1 ))  # the global batch stays 16
if ! python -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"; then
  export DS_ACCELERATOR=cpu
  export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}  # one thread per rank, as script/demo.sh
fi
export WANDB_MODE=${WANDB_MODE:-offline} TOKENIZERS_PARALLELISM=false

python script/make_phoenix_t_demo.py --out "$DATA_ROOT/PhoenixTDemo" --n_train "$N_TRAIN" \
  --n_dev 150 --n_test 150

COMMON=(--dataset PhoenixTDemo --data_root "$DATA_ROOT"
        --stgcn_channels 16,32 --hidden_dim 32 --temporal_layers 1 --hands_batch joint
        --batch-size "$BATCH_PER_RANK" --gradient-accumulation-steps 1
        --zero_stage 2 --dtype fp32 --num_workers 1 --skip_test_eval)

deepspeed --num_gpus "$NUM_GPUS" --master_port "${MASTER_PORT:-29537}" fine_tuning.py \
  "${COMMON[@]}" --task SLT --max_length 48 \
  --epochs "$SLT_EPOCHS" --warmup-epochs 0.5 --opt AdamW --lr 1e-3 --weight-decay 0.01 \
  --label_smoothing 0.1 --num_beams 4 --max_new_tokens 30 --eval_every "$SLT_EPOCHS" \
  --output_dir "$OUTPUT_DIR/slt" "$@"

deepspeed --num_gpus "$NUM_GPUS" --master_port "${MASTER_PORT:-29537}" fine_tuning.py \
  "${COMMON[@]}" --task CSLR --head ctc --ctc_hidden 128 --max_length 64 \
  --epochs "$CSLR_EPOCHS" --opt adamw --lr 6e-3 --weight-decay 1e-4 --sched cosine \
  --eval_every "$CSLR_EPOCHS" --output_dir "$OUTPUT_DIR/cslr" "$@"

python - "$OUTPUT_DIR" <<'PY'
import json, sys
def last(run):
    with open(f"{sys.argv[1]}/{run}/log.txt") as f:
        return [json.loads(line) for line in f if line.strip()][-1]
slt, cslr = last("slt"), last("cslr")
print(f"translation: dev BLEU-4 {slt['dev_bleu4']:.2f}, test ROUGE-L {slt['test_rouge']:.2f}; "
      f"recognition: dev WER {cslr['dev_wer']:.2f}")
print(f"test BLEU-4: {slt['test_bleu4']:.2f}")
print(f"test WER: {cslr['test_wer']:.2f}")
PY
