"""Generative pretraining of the pose encoder and mT5 on CSL-News (Uni-Sign's stage 1).

The model, loss, checkpoints and flags are fine_tuning.py's, so a pretraining checkpoint
continues with `fine_tuning.py --finetune out/stage1_pretraining/best_checkpoint.pth`. The
defaults are Uni-Sign's stage-1 recipe: CSL-News labels (the last 1% of clips is the held-out
split), batch 16 x accumulation 8, lr 3e-4, and `--quick_break 2048` steps per epoch.

    deepspeed --num_gpus 4 pretraining.py --output_dir out/stage1_pretraining

A packed pose store (script/pack_poses.py) in the pose folder is read instead of the per-clip
pickles; --bucket_by_length batches clips of similar length. With no download, demo/news.py
writes a CSL-News-shaped set in the Demo sign language (its mT5 comes with the Demo set):

    python -m demo.data --out data/Demo && python -m demo.news --out data
    deepspeed --num_gpus 2 pretraining.py --data_root data --pose_root data \
        --mt5_path data/Demo/mt5 --output_dir out/news_pretraining
"""
import os

import fine_tuning
import utils

STAGE1_DEFAULTS = {"dataset": "CSL_News", "batch_size": 16, "gradient_accumulation_steps": 8,
                   "lr": 3e-4, "quick_break": 2048, "skip_test_eval": True}


def main(argv=None):
    args = utils.parse_args("pretraining.py", argv, defaults=STAGE1_DEFAULTS)
    return fine_tuning.run_command_line(fine_tuning.main, args)


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    main()
