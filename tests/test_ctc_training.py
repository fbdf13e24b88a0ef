"""End to end: `fine_tuning.py --task CSLR --head ctc` on a small generated PHOENIX-style set
(PhoenixDemo): two ranks under the deepspeed launcher, the vocabulary saved from training and
reused at --eval, prefix beam search against greedy decoding, and SignCL on the CTC head."""
import json
import os
import sys

import pytest
import torch
from conftest import DEEPSPEED, ctc_args, free_port, load_file_module, run_command

import utils
from ctc_decode import greedy_decode
from ctc_head import GlossVocab, parse_loss_weights
from datasets import GlossTargets, S2T_Dataset
from labels import load_labels
from models import CTCRecognizer
from SLRT_metrics import read_ctm, read_stm, wer_list, write_stm

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SMALL_MODEL = ["--stgcn_channels", "8,16", "--hidden_dim", "16", "--temporal_layers", "1",
               "--ctc_hidden", "32", "--max_length", "64"]


def load_demo_script():
    return load_file_module("script/make_phoenix_demo.py")


@pytest.fixture(scope="session")
def phoenix_root(tmp_path_factory):
    """data_root holding a small PhoenixDemo set; SICK never occurs in training."""
    data_root = tmp_path_factory.mktemp("phoenix")
    load_demo_script().make_phoenix_demo(str(data_root / "PhoenixDemo"), seed=0, n_train=64,
                                         n_dev=12, n_test=12, unseen=("SICK",))
    return str(data_root)


# ---- flags ----

def test_flags_parse_in_both_spellings_and_belong_to_the_trainer_parser():
    args = utils.parse_args("fine_tuning.py", [
        "--task", "CSLR", "--head", "ctc", "--dataset", "PhoenixDemo", "--ctc-beam", "5",
        "--no-share_classifier", "--loss_weights", "SeqCTC=1,Dist=10", "--sched", "multistep",
        "--lr-steps", "3,7", "--skip-bad-samples"])
    assert (args.task, args.head, args.dataset) == ("CSLR", "ctc", "PhoenixDemo")
    assert args.ctc_beam == 5 and not args.share_classifier and args.weight_norm
    assert args.skip_bad_samples
    assert parse_loss_weights(args.loss_weights) == {"SeqCTC": 1.0, "Dist": 10.0}
    assert args.lr_steps == [3, 7]
    with pytest.raises(ValueError, match="--loss_weights"):
        parse_loss_weights("SeqCTC:1")
    args = utils.parse_args("fine_tuning.py", ["--task", "CSLR", "--head", "ctc"])
    assert args.head == "ctc" and args.ctc_beam == 1 and args.dataset == "CSL_Daily"


# ---- runs ----

def run(cmd, tmp_path, timeout=900):
    proc = run_command(cmd, tmp_path, timeout)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


def two_ranks(*argv):
    return [*DEEPSPEED, "--num_gpus", "2", "--master_port", free_port(), "fine_tuning.py", *argv]


def one_process(*argv):
    return [sys.executable, "fine_tuning.py", *argv]


def cslr_args(data_root, out_dir, *extra):
    return ["--task", "CSLR", "--head", "ctc", "--dataset", "PhoenixDemo",
            "--data_root", data_root, "--output_dir", str(out_dir),
            "--batch-size", "4", "--gradient-accumulation-steps", "1", "--lr", "3e-3",
            "--num_workers", "0", "--dtype", "fp32", "--print_freq", "4", *SMALL_MODEL, *extra]


def read_log(out_dir, name="log.txt"):
    with open(os.path.join(out_dir, name)) as f:
        return [json.loads(line) for line in f]


@pytest.fixture(scope="session")
def trained_run(phoenix_root, tmp_path_factory):
    """Output folder of a 2-rank ZeRO-2 CTC training run on PhoenixDemo."""
    out = tmp_path_factory.mktemp("cslr_run")
    run(two_ranks(*cslr_args(phoenix_root, out / "run", "--epochs", "5", "--zero_stage", "2")),
        out)
    return out / "run"


def test_two_ranks_train_with_falling_loss_and_sclite_files(trained_run):
    log = read_log(trained_run)
    assert [r["epoch"] for r in log] == [0, 1, 2, 3, 4]
    assert log[-1]["train_loss"] < log[0]["train_loss"]
    for phase in ("dev", "test"):
        refs = read_stm(trained_run / f"groundtruth-{phase}.stm")
        assert len(refs) == 12
        for suffix, key in (("", "wer"), ("-conv", "conv_wer")):
            hyps = read_ctm(trained_run / f"output-hypothesis-{phase}{suffix}.ctm")
            scored = wer_list(list(refs.values()), [hyps[name] for name in refs])
            assert scored["wer"] == pytest.approx(log[-1][f"{phase}_{key}"], abs=1e-9)
        assert {"sub_rate", "del_rate", "ins_rate"} <= {k[len(phase) + 1:] for k in log[-1]
                                                         if k.startswith(phase)}


def test_vocabulary_is_saved_from_train_and_reused_at_evaluation(phoenix_root, trained_run,
                                                                tmp_path):
    saved = torch.load(trained_run / "best_checkpoint.pth", weights_only=True)
    train = read_stm(os.path.join(phoenix_root, "PhoenixDemo",
                                  "phoenix2014-groundtruth-train.stm"))
    assert saved["gloss_vocab"]["itos"] == GlossVocab.build(train.values()).itos
    assert "SICK" not in saved["gloss_vocab"]["itos"]
    # evaluation needs no training labels: the vocabulary comes from the checkpoint
    data_root = tmp_path / "data"
    (data_root / "PhoenixDemo").mkdir(parents=True)
    for name in ("pose_format", "phoenix2014-groundtruth-dev.stm",
                 "phoenix2014-groundtruth-test.stm"):
        os.symlink(os.path.join(phoenix_root, "PhoenixDemo", name),
                   data_root / "PhoenixDemo" / name)
    # same ranks and batches as the training run's evaluation, so the same scores
    proc = run(two_ranks("--eval", "--finetune", str(trained_run / "best_checkpoint.pth"),
                         *cslr_args(str(data_root), tmp_path / "eval")), tmp_path)
    assert "gloss vocabulary from the checkpoint" in proc.stdout
    with open(tmp_path / "eval" / "eval_metrics.json") as f:
        metrics = json.load(f)
    unknown = sum(g == "SICK" for phase in ("dev", "test") for seq in read_stm(
        os.path.join(phoenix_root, "PhoenixDemo", f"phoenix2014-groundtruth-{phase}.stm")).values()
        for g in seq)
    assert unknown > 0
    assert metrics["dev"]["unknown_glosses"] + metrics["test"]["unknown_glosses"] == unknown
    best = next(r for r in read_log(trained_run) if r["epoch"] == saved["epoch"])
    assert metrics["dev"]["wer"] == pytest.approx(best["dev_wer"], abs=1e-9)


def overfit_checkpoint(phoenix_root, folder, clips=4, max_steps=600):
    """A recognizer trained in-process on a few PhoenixDemo clips until greedy decoding gets
    most of their glosses right, saved like the trainer saves it; returns (checkpoint, data_root)
    whose dev and test splits are those clips."""
    demo = os.path.join(phoenix_root, "PhoenixDemo")
    train = os.path.join(demo, "phoenix2014-groundtruth-train.stm")
    entries = load_labels(train, "stm")[:clips]
    data_root = folder / "data"
    (data_root / "PhoenixDemo").mkdir(parents=True)
    os.symlink(os.path.join(demo, "pose_format"), data_root / "PhoenixDemo" / "pose_format")
    for phase in ("dev", "test"):
        write_stm(data_root / "PhoenixDemo" / f"phoenix2014-groundtruth-{phase}.stm",
                  [e["name"] for e in entries], [e["gloss"] for e in entries], "Signer01")
    vocab = GlossVocab.build(e["gloss"] for e in entries)
    stm = str(data_root / "PhoenixDemo" / "phoenix2014-groundtruth-dev.stm")
    dataset = S2T_Dataset(stm, os.path.join(demo, "pose_format"), "dev",
                          dataset_name="PhoenixDemo", max_length=64, task="CSLR",
                          targets=GlossTargets(vocab))
    torch.manual_seed(0)
    model = CTCRecognizer(ctc_args(ctc_hidden=256), vocab.num_classes)
    optimizer = torch.optim.Adam(model.parameters(), 3e-3)
    src, tgt = dataset.collate_fn([dataset[i] for i in range(clips)])
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # these small tensors gain nothing from threads on a busy machine
    try:
        train_until_learnt(model, optimizer, src, tgt, vocab, max_steps)
    finally:
        torch.set_num_threads(threads)
    path = folder / "overfit.pth"
    torch.save({"model": model.state_dict(), "gloss_vocab": vocab.state_dict()}, path)
    return str(path), str(data_root)


def train_until_learnt(model, optimizer, src, tgt, vocab, max_steps):
    for step in range(max_steps):
        model.train()
        loss = model(src, tgt)["loss"]
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if step % 50 == 49:
            model.eval()
            with torch.no_grad():
                out = model(src)
            hyps = [vocab.decode(h) for h in greedy_decode(out["seq_logits"], out["feat_len"],
                                                           batch_first=False)]
            if wer_list(tgt["gt_gloss"], hyps)["wer"] < 30:
                return


def test_beam_search_is_no_worse_than_greedy(phoenix_root, tmp_path):
    checkpoint, data_root = overfit_checkpoint(phoenix_root, tmp_path)
    results = {}
    for beam in ("1", "5"):
        out = tmp_path / f"beam{beam}"
        run(one_process("--eval", "--finetune", checkpoint, "--ctc_beam", beam,
                        *cslr_args(data_root, out, "--ctc_hidden", "256")), tmp_path)
        with open(out / "eval_metrics.json") as f:
            results[beam] = json.load(f)
    assert results["1"]["dev"]["wer"] < 30  # a model that has learnt something
    for phase in ("dev", "test"):
        assert results["5"][phase]["wer"] <= results["1"][phase]["wer"]


def test_signcl_trains_the_ctc_head(phoenix_root, tmp_path):
    out = tmp_path / "signcl"
    proc = run(one_process(*cslr_args(phoenix_root, out, "--use_signcl", "--epochs", "1",
                                      "--quick_break", "2")), tmp_path)
    assert "regularisers: signcl" in proc.stdout
    steps = read_log(out, "log_steps.txt")
    assert [s["step"] for s in steps] == [0, 1]
    assert all("signcl_loss" in s and "seqctc_loss" in s for s in steps)
    [record] = read_log(out)
    assert record["epoch"] == 0 and "train_signcl_loss" in record and "dev_wer" in record
