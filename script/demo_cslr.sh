#!/usr/bin/env bash
# Continuous recognition with the CTC head on the generated PhoenixDemo set, no download:
# generates data/PhoenixDemo if missing, trains a small pose encoder + CTC head on CPU ranks (or
# GPUs), then scores the best checkpoint on dev and test with greedy and prefix beam decoding.
# The last lines give dev and test WER for both decoders.
#   NUM_GPUS  ranks (default 1)   EPOCHS  default 30   BEAM  beam width compared (default 10)
#   OUTPUT_DIR default out/demo_cslr
set -euo pipefail
cd "$(dirname "$0")/.."

NUM_GPUS=${NUM_GPUS:-1}
EPOCHS=${EPOCHS:-30}
BEAM=${BEAM:-10}
OUTPUT_DIR=${OUTPUT_DIR:-out/demo_cslr}
DATA_ROOT=${SIGN_DATA_ROOT:-./data}
if ! python -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"; then
  export DS_ACCELERATOR=cpu
  export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
fi
export WANDB_MODE=${WANDB_MODE:-offline} TOKENIZERS_PARALLELISM=false

python script/make_phoenix_demo.py --out "$DATA_ROOT/PhoenixDemo"

MODEL=(--stgcn_channels 16,32 --hidden_dim 32 --temporal_layers 1 --ctc_hidden 256
       --max_length 128)
deepspeed --num_gpus "$NUM_GPUS" --master_port "${MASTER_PORT:-29535}" fine_tuning.py \
  --task CSLR --head ctc --dataset PhoenixDemo --data_root "$DATA_ROOT" "${MODEL[@]}" \
  --batch-size $(( 16 / NUM_GPUS > 0 ? 16 / NUM_GPUS : 1 )) --gradient-accumulation-steps 1 \
  --epochs "$EPOCHS" --opt adamw --lr 3e-3 --weight-decay 1e-4 --sched cosine \
  --zero_stage 2 --dtype fp32 --num_workers 1 --eval_every 5 --skip_test_eval \
  --output_dir "$OUTPUT_DIR" "$@"

for beam in 1 "$BEAM"; do
  deepspeed --num_gpus "$NUM_GPUS" --master_port "${MASTER_PORT:-29535}" fine_tuning.py \
    --task CSLR --head ctc --dataset PhoenixDemo --data_root "$DATA_ROOT" "${MODEL[@]}" \
    --eval --finetune "$OUTPUT_DIR/best_checkpoint.pth" --ctc_beam "$beam" --batch-size 8 \
    --dtype fp32 --num_workers 1 --output_dir "$OUTPUT_DIR/eval_beam$beam" > /dev/null
done

python - "$OUTPUT_DIR" "$BEAM" <<'PY'
import json, sys
out, beam = sys.argv[1], sys.argv[2]
for width in ("1", beam):
    with open(f"{out}/eval_beam{width}/eval_metrics.json") as f:
        metrics = json.load(f)
    name = "greedy" if width == "1" else f"beam {width}"
    print(f"{name}: dev WER {metrics['dev']['wer']:.2f}, test WER {metrics['test']['wer']:.2f}")
PY
