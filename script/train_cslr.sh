#!/usr/bin/env bash
# Continuous sign language recognition on PHOENIX-2014 with the CTC head, VAC's recipe
# (configs/baseline.yaml of VAC_CSLR with its VAC + SMKD settings): batch 2, Adam lr 1e-4, weight
# decay 1e-4, 40 epochs with the lr multiplied by 0.2 after epochs 20 and 35, no gradient
# clipping, SeqCTC + ConvCTC + 25 x distillation, one weight-normalised classifier, beam 10.
# Prints the dev and test WER of the epoch with the best dev WER as its last lines.
#   NUM_GPUS    ranks (default 1)          FINETUNE    checkpoint whose pose encoder is loaded
#   OUTPUT_DIR  default out/phoenix2014_ctc             (a Uni-Sign or translation checkpoint)
# Labels: data/phoenix2014/phoenix2014-groundtruth-{train,dev,test}.stm; poses: NAME.pkl in
# dataset/phoenix2014/pose_format (see config.py). Extra flags are passed on, e.g.
#   bash script/train_cslr.sh --eval --finetune out/phoenix2014_ctc/best_checkpoint.pth
set -euo pipefail
cd "$(dirname "$0")/.."

NUM_GPUS=${NUM_GPUS:-1}
OUTPUT_DIR=${OUTPUT_DIR:-out/phoenix2014_ctc}
FINETUNE=${FINETUNE:-}
if ! python -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"; then
  export DS_ACCELERATOR=cpu
fi
export WANDB_MODE=${WANDB_MODE:-offline} TOKENIZERS_PARALLELISM=false

deepspeed --num_gpus "$NUM_GPUS" --master_port "${MASTER_PORT:-29534}" fine_tuning.py \
  --dataset PHOENIX2014 --task CSLR --head ctc \
  --batch-size 2 --gradient-accumulation-steps 1 --epochs 40 \
  --opt adam --lr 1e-4 --opt-eps 1e-8 --weight-decay 1e-4 --sched multistep --lr_steps 20,35 \
  --gradient-clipping 0 \
  --loss_weights SeqCTC=1,ConvCTC=1,Dist=25 --share_classifier --weight_norm \
  --ctc_hidden 1024 --ctc_beam 10 --max_length 400 \
  --zero_stage 2 --num_workers 8 --print_freq 100 \
  ${FINETUNE:+--finetune "$FINETUNE"} --output_dir "$OUTPUT_DIR" "$@"

if [ -f "$OUTPUT_DIR/log.txt" ]; then
python - "$OUTPUT_DIR/log.txt" <<'PY'
import json, sys
records = [json.loads(line) for line in open(sys.argv[1]) if line.strip()]
evaluated = [r for r in records if "dev_wer" in r and "test_wer" in r]
best = min(evaluated, key=lambda r: r["dev_wer"])
print(f"best dev WER {best['dev_wer']:.2f} at epoch {best['epoch']}")
print(f"test WER: {best['test_wer']:.2f}")
PY
fi
