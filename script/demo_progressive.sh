#!/usr/bin/env bash
# MMTLB's progressive pretraining on the generated PHOENIX-2014-T-shaped set, no download, as an
# ablation: the same translation run (--task SLT, same seed and schedule) from scratch and from
# the stages, on CPU in one process per run (about 15 minutes of CPU time at the defaults):
#   stage 1  the pose encoder learns glosses with the CTC head    (--task CSLR --head ctc)
#   stage 2  mT5 learns to translate glosses, no pose read         (--task G2T)
#   stage 3  translation with MMTLB's mapper (--mapper mlp) from scratch, from stage 1
#            (--init_encoder), from stage 2 (--init_lm), and from both
# and prints one line per run: dev and test BLEU-4 and ROUGE-L. A run whose folder holds its
# finished training state is not trained again (the trainer resumes it): rerunning the script
# after an interruption continues where it stopped.
#   N_TRAIN      training clips (default 600; the set is regenerated when it changes)
#   SLT_EPOCHS, CTC_EPOCHS, G2T_EPOCHS   (defaults 4, 6, 20)
#   OUTPUT_DIR   default out/demo_progressive
# Extra arguments go to every translation run.
set -euo pipefail
cd "$(dirname "$0")/.."

N_TRAIN=${N_TRAIN:-600}
SLT_EPOCHS=${SLT_EPOCHS:-4}
CTC_EPOCHS=${CTC_EPOCHS:-6}
G2T_EPOCHS=${G2T_EPOCHS:-20}
OUTPUT_DIR=${OUTPUT_DIR:-out/demo_progressive}
DATA_ROOT=${SIGN_DATA_ROOT:-./data/progressive}
if ! python -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"; then
  export DS_ACCELERATOR=cpu OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
fi
export WANDB_MODE=${WANDB_MODE:-disabled} TOKENIZERS_PARALLELISM=false

python script/make_phoenix_t_demo.py --out "$DATA_ROOT/PhoenixTDemo" --n_train "$N_TRAIN" \
  --n_dev 100 --n_test 100

RUN=(--dataset PhoenixTDemo --data_root "$DATA_ROOT" --batch-size 16
     --gradient-accumulation-steps 1 --dtype fp32 --num_workers 1 --seed 0 --skip_test_eval)
POSES=(--stgcn_channels 16,32 --hidden_dim 32 --temporal_layers 1 --hands_batch joint)
TEXT=(--num_beams 4 --max_new_tokens 30 --label_smoothing 0.1)

python fine_tuning.py "${RUN[@]}" "${POSES[@]}" --task CSLR --head ctc --ctc_hidden 128 \
  --max_length 64 --epochs "$CTC_EPOCHS" --lr 6e-3 --eval_every "$CTC_EPOCHS" \
  --output_dir "$OUTPUT_DIR/stage1_ctc"
python fine_tuning.py "${RUN[@]}" "${TEXT[@]}" --task G2T --epochs "$G2T_EPOCHS" --lr 1e-3 \
  --warmup-epochs 1 --weight-decay 0.01 --eval_every "$G2T_EPOCHS" \
  --output_dir "$OUTPUT_DIR/stage2_g2t"

ENCODER=(--init_encoder "$OUTPUT_DIR/stage1_ctc/best_checkpoint.pth")
LM=(--init_lm "$OUTPUT_DIR/stage2_g2t/best_checkpoint.pth")
translate() {  # NAME FLAGS...: one translation run
  local name=$1; shift
  python fine_tuning.py "${RUN[@]}" "${POSES[@]}" "${TEXT[@]}" --task SLT --mapper mlp \
    --max_length 48 --epochs "$SLT_EPOCHS" --warmup-epochs 0.5 --lr 1e-3 --weight-decay 0.01 \
    --eval_every "$SLT_EPOCHS" --output_dir "$OUTPUT_DIR/slt_$name" "$@" "${EXTRA[@]}"
}
EXTRA=("$@")
translate scratch
translate encoder "${ENCODER[@]}"
translate lm "${LM[@]}"
translate both "${ENCODER[@]}" "${LM[@]}"

python - "$OUTPUT_DIR" <<'PY'
import json, os, sys
def last(run):
    with open(os.path.join(sys.argv[1], run, "log.txt")) as f:
        return [json.loads(line) for line in f if line.strip()][-1]
ctc, g2t = last("stage1_ctc"), last("stage2_g2t")
print(f"stage 1 (CTC): dev WER {ctc['dev_wer']:.2f}")
print(f"stage 2 (G2T): dev BLEU-4 {g2t['dev_bleu4']:.2f}, test BLEU-4 {g2t['test_bleu4']:.2f}")
for name in ("scratch", "encoder", "lm", "both"):
    r = last(f"slt_{name}")
    print(f"SLT {name}: dev BLEU-4 {r['dev_bleu4']:.2f}, test BLEU-4 {r['test_bleu4']:.2f}, "
          f"test ROUGE-L {r['test_rouge']:.2f}")
PY
