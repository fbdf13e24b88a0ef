"""CTC recognition: gloss label readers, the recognizer, clip checks, evaluation files and
end-to-end training under the deepspeed launcher on a small generated PHOENIX-style set."""
import gzip
import importlib.util
import json
import os
import pickle
import socket
import subprocess
import sys
import types

import numpy as np
import pytest
import torch

import cslr
from ctc_head import GlossVocab
from datasets import DataError, S2T_Dataset
from SLRT_metrics import read_ctm, read_stm, wer_list, write_stm

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SMALL_MODEL = ["--stgcn_channels", "8,16", "--hidden_dim", "16", "--temporal_layers", "1",
               "--ctc_hidden", "32", "--max_length", "64"]
REAL_STM_LINES = (
    "01April_2010_Thursday_heute_default-2 1 Signer04 0.0 1.79769e+308 "
    "WEST WARM WEST BLEIBEN KUEHL\n"
    "29July_2010_Thursday_heute_default-7 1 signer05 0.0 1.79769e+308 __ON__ TEMPERATUR "
    "WIE-AUSSEHEN MORGEN GLEICH SIEBZEHN ACHTZEHN SUEDOST WENN REGEN\n")


def load_demo_script():
    spec = importlib.util.spec_from_file_location(
        "make_phoenix_demo", os.path.join(ROOT, "script", "make_phoenix_demo.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="session")
def phoenix_root(tmp_path_factory):
    """data_root holding a small PhoenixDemo set; SICK never occurs in training."""
    data_root = tmp_path_factory.mktemp("phoenix")
    load_demo_script().make_phoenix_demo(str(data_root / "PhoenixDemo"), seed=0, n_train=64,
                                         n_dev=12, n_test=12, unseen=("SICK",))
    return str(data_root)


def model_args(**overrides):
    values = dict(stgcn_channels=[8, 16], hidden_dim=16, temporal_layers=1, temporal_kernel=5,
                  ctc_hidden=32, share_classifier=True, weight_norm=True,
                  loss_weights="SeqCTC=1,ConvCTC=1,Dist=25", dataset="PhoenixDemo")
    return types.SimpleNamespace(**{**values, **overrides})


def random_clip(frames, seed=0):
    rng = np.random.default_rng(seed)
    keypoints = rng.uniform(100, 300, (frames, 1, 133, 2)).astype(np.float32)
    return {"keypoints": keypoints, "scores": np.full((frames, 1, 133), 0.9, np.float32)}


def write_set(folder, samples):
    """STM + pose files for [(name, glosses, frames)]; returns (stm path, pose dir)."""
    pose_dir = folder / "poses"
    pose_dir.mkdir(parents=True, exist_ok=True)
    for index, (name, _, frames) in enumerate(samples):
        with open(pose_dir / f"{name}.pkl", "wb") as f:
            pickle.dump(random_clip(frames, index), f)
    stm = folder / "labels.stm"
    write_stm(stm, [s[0] for s in samples], [s[1] for s in samples], "Signer01")
    return str(stm), str(pose_dir)


# ---- flags ----

def test_flags_parse_in_both_spellings_and_belong_to_the_trainer_parser():
    import utils
    args = cslr.parse_args(["--ctc-beam", "5", "--no-share_classifier", "--loss_weights",
                            "SeqCTC=1,Dist=10", "--lr-steps", "3,7", "--skip-bad-samples"])
    assert (args.task, args.head, args.dataset) == ("CSLR", "ctc", "PhoenixDemo")
    assert args.ctc_beam == 5 and not args.share_classifier and args.weight_norm
    assert args.skip_bad_samples
    assert cslr.parse_loss_weights(args.loss_weights) == {"SeqCTC": 1.0, "Dist": 10.0}
    assert args.lr_steps == [3, 7]
    with pytest.raises(ValueError, match="--loss_weights"):
        cslr.parse_loss_weights("SeqCTC:1")
    args = utils.parse_args("fine_tuning.py", ["--task", "CSLR", "--head", "ctc"])
    assert args.head == "ctc" and args.ctc_beam == 1 and args.dataset == "CSL_Daily"


# ---- hand normalisation ----

def hands_unlike_batch(batch=6, frames=20):
    """Parts where the left hand rests and the right hand moves, as in most signing."""
    gen = torch.Generator().manual_seed(0)
    src = {part: torch.rand(batch, frames, joints, 3, generator=gen)
           for part, joints in (("body", 9), ("left", 21), ("right", 21), ("face_all", 18))}
    src["left"] = 0.05 * src["left"] - 0.5
    src["right"] = 3.0 * src["right"] + 1.0
    src["attention_mask"] = torch.ones(batch, frames, dtype=torch.long)
    return src


def train_eval_gap(hands_batch):
    """Largest gap between the training-mode and evaluation-mode pose features of one batch,
    once the BatchNorm running statistics are that batch's own (cumulative average)."""
    torch.manual_seed(0)
    model = cslr.CTCRecognizer(model_args(hands_batch=hands_batch), num_classes=5)
    for module in model.modules():
        if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
            module.momentum = None
    src = hands_unlike_batch()
    with torch.no_grad():
        model.train()
        trained = torch.cat(model.encode_parts(src), -1)
        model.eval()
        evaluated = torch.cat(model.encode_parts(src), -1)
    return ((trained - evaluated).abs().max() / trained.abs().max()).item()


def test_joint_hand_normalisation_makes_evaluation_see_training_statistics():
    joint, apart = train_eval_gap("auto"), train_eval_gap("off")
    assert joint < 0.02  # the recognizer's default: one statistic for both hands
    assert apart > 10 * joint  # Uni-Sign's per-hand batch statistics vs mixed running ones


# ---- label files ----

def test_stm_reader_matches_sclite_reader_and_keeps_signers(tmp_path):
    path = tmp_path / "g.stm"
    path.write_text(";; comment\n" + REAL_STM_LINES)
    entries = cslr.load_gloss_labels(str(path))
    assert [e["name"] for e in entries] == list(read_stm(path))
    assert [e["gloss"] for e in entries] == list(read_stm(path).values())
    assert [e["signer"] for e in entries] == ["Signer04", "signer05"]
    assert entries[0]["pose_file"] == "01April_2010_Thursday_heute_default-2.pkl"
    assert entries[0]["text"] == "WEST WARM WEST BLEIBEN KUEHL"


@pytest.mark.parametrize("text, problem", [
    ("a 1 s 0.0\n", "g.stm:1: expected"),
    ("a 1 s 0.0 1.79769e+308 X\nb 1 s 0.0 1.79769e+308 Y\na 1 s 0.0 1.79769e+308 Z\n",
     "g.stm:3: sample a appears twice")])
def test_stm_reader_errors_name_file_and_line(tmp_path, text, problem):
    (tmp_path / "g.stm").write_text(text)
    with pytest.raises(DataError, match=problem):
        cslr.load_gloss_labels(str(tmp_path / "g.stm"))


@pytest.mark.parametrize("header, row", [
    ("name|video|start|end|speaker|orth|translation",
     "11August_2010_Wednesday_tagesschau-2|x/1/*.png|-1|-1|Signer08|DRUCK TIEF KOMMEN|"
     "tiefer luftdruck"),
    ("id|folder|signer|annotation", "11August_2010_Wednesday_tagesschau-2|x/1/*.png|Signer08|"
                                    "DRUCK TIEF KOMMEN")])
def test_phoenix_corpus_files(tmp_path, header, row):
    path = tmp_path / "PHOENIX-2014-T.dev.corpus.csv"
    path.write_text(f"{header}\n{row}\n")
    [entry] = cslr.load_gloss_labels(str(path))
    assert entry["name"] == "11August_2010_Wednesday_tagesschau-2"
    assert entry["gloss"] == ["DRUCK", "TIEF", "KOMMEN"] and entry["signer"] == "Signer08"


def test_unisign_label_file_with_gloss_lists_matches_s2t_dataset(tmp_path):
    (tmp_path / "poses").mkdir()
    labels = {}
    for index, name in enumerate(["S000001_P0000_T00", "S000002_P0000_T00"]):
        with open(tmp_path / "poses" / f"{name}.pkl", "wb") as f:
            pickle.dump(random_clip(20 + index, index), f)
        labels[name] = {"name": name, "gloss": ["他", "喜欢", "书"], "text": "他喜欢书。",
                        "video_path": f"{name}.mp4"}
    with gzip.open(tmp_path / "labels.dev", "wb") as f:
        pickle.dump(labels, f)
    ours = cslr.GlossDataset(str(tmp_path / "labels.dev"), str(tmp_path / "poses"), "dev",
                             "CSL_Daily")
    theirs = S2T_Dataset(str(tmp_path / "labels.dev"), str(tmp_path / "poses"), "dev",
                         dataset_name="CSL_Daily", task="CSLR")
    for index in range(2):
        (name, parts, text, gloss), expected = ours[index], theirs[index]
        assert (name, text, gloss) == (expected[0], expected[2], expected[3]) == (
            expected[0], "他 喜欢 书", "他 喜欢 书")
        assert all(torch.equal(parts[p], expected[1][p]) for p in parts)


def test_collate_adds_padded_gloss_ids(tmp_path):
    stm, poses = write_set(tmp_path, [("a", ["X", "Y", "Y"], 30), ("b", ["Z"], 25)])
    dataset = cslr.GlossDataset(stm, poses, "train", "PhoenixDemo")
    dataset.vocab = GlossVocab.build(e["gloss"] for e in dataset.entries)
    src, tgt = dataset.collate_fn([dataset[0], dataset[1]])
    assert tgt["gloss_ids"].tolist() == [[1, 2, 2], [3, 0, 0]]
    assert tgt["gloss_lengths"].tolist() == [3, 1]
    assert src["body"].shape[:2] == (2, 30) and tgt["gt_gloss"] == ["X Y Y", "Z"]


def test_gloss_dataset_also_feeds_the_generating_head(tmp_path, tiny_mt5_dir):
    from transformers import T5Tokenizer
    tokenizer = T5Tokenizer.from_pretrained(tiny_mt5_dir, legacy=False)
    stm, poses = write_set(tmp_path, [("a", ["X", "Y"], 20)])
    dataset = cslr.GlossDataset(stm, poses, "dev", "PHOENIX2014", tokenizer=tokenizer)
    src, tgt = dataset.collate_fn([dataset[0]])
    assert tgt["gt_sentence"] == ["X Y"] and tgt["labels"].shape[0] == 1
    assert src["prefix_ids"].shape[0] == 1


# ---- model ----

def test_edge_padding_gives_a_quarter_of_the_frames():
    lengths = torch.tensor([9, 16, 1])
    body = torch.arange(16.0)[None, :, None, None].expand(3, 16, 9, 3).clone()
    for row, n in enumerate(lengths):
        body[row, n:] = body[row, n - 1]
    src = {part: body[:, :, :1].expand(-1, -1, v, -1) if part != "body" else body
           for part, v in (("body", 9), ("left", 21), ("right", 21), ("face_all", 18))}
    src["src_length_batch"] = lengths
    parts, new_lengths = cslr.pad_clip_edges(src)
    assert new_lengths.tolist() == [24, 28, 16]
    first = parts["body"][0, :, 0, 0].tolist()
    assert first[:7] == [0.0] * 7 and first[7:15] == list(range(1, 9)) and first[15:] == [8.0] * 13
    model = cslr.CTCRecognizer(model_args(), num_classes=5)
    assert model.output_lengths(lengths).tolist() == [3, 4, 1]


def test_recognizer_shares_the_translator_encoder_keys(tiny_mt5_dir):
    from models import SignTranslator
    args = model_args(mt5_path=tiny_mt5_dir, dataset="Demo")
    translator = SignTranslator(args)
    recognizer = cslr.CTCRecognizer(args, num_classes=7)
    ours = {k: v for k, v in recognizer.state_dict().items() if not k.startswith("head.")}
    theirs = translator.state_dict()
    assert set(ours) == {k for k in theirs if k.startswith(cslr.ENCODER_PREFIXES)}
    assert all(v.shape == theirs[k].shape for k, v in ours.items())

    fresh = cslr.CTCRecognizer(args, num_classes=7)
    report = cslr.load_pretrained(fresh, theirs, "translator.pth")
    assert report["skipped"]["mt5_model"] > 0 and report["skipped"]["pose_proj"] == 2
    assert report["head_loaded"] == f"0/{sum(k.startswith('head.') for k in fresh.state_dict())}"
    assert torch.equal(fresh.part_para, translator.part_para)
    with pytest.raises(RuntimeError, match="gcn_modules.body"):
        cslr.load_pretrained(fresh, {k: v for k, v in theirs.items()
                                     if not k.startswith("gcn_modules.body")}, "partial.pth")


def test_translator_starts_from_a_recognizer_encoder(tiny_mt5_dir, tmp_path, capsys):
    import fine_tuning
    import utils
    argv = ["--dataset", "Demo", "--mt5_path", tiny_mt5_dir, "--stgcn_channels", "8,16",
            "--hidden_dim", "16", "--temporal_layers", "1", "--ctc_hidden", "32"]
    recognizer = cslr.CTCRecognizer(utils.parse_args("t", argv), num_classes=7)
    with torch.no_grad():
        for value in recognizer.state_dict().values():
            value.add_(1)  # unlike any fresh initialisation, BatchNorm statistics included
    path = tmp_path / "ctc.pth"
    torch.save({"model": recognizer.state_dict()}, path)

    torch.manual_seed(0)
    translator = fine_tuning.build_model(utils.parse_args("t", argv + ["--init_encoder", str(path)]))
    torch.manual_seed(0)
    fresh = fine_tuning.build_model(utils.parse_args("t", argv))
    ours, theirs, fresh = recognizer.state_dict(), translator.state_dict(), fresh.state_dict()
    for key, value in theirs.items():
        expected = ours[key] if key.startswith(cslr.ENCODER_PREFIXES) else fresh[key]
        assert torch.equal(value, expected), key
    encoder_keys = sum(key.startswith(cslr.ENCODER_PREFIXES) for key in theirs)
    assert f"pose encoder from {path}: {{'source': '{path}', 'loaded_keys': {encoder_keys}, " \
           f"'skipped': {{'head': " in capsys.readouterr().out

    wider = cslr.CTCRecognizer(utils.parse_args("t", argv[:4] + ["--stgcn_channels", "8,32",
                                                                 "--hidden_dim", "32"]), 7)
    torch.save({"model": wider.state_dict()}, tmp_path / "wider.pth")
    with pytest.raises(RuntimeError, match="wider.pth has no pose encoder of this shape"):
        fine_tuning.build_model(utils.parse_args(
            "t", argv + ["--init_encoder", str(tmp_path / "wider.pth")]))


def test_init_encoder_conflicts_and_missing_files_stop_the_run(demo_root, tmp_path):
    def run_failing(*extra):
        return subprocess.run([sys.executable, "fine_tuning.py", "--dataset", "Demo",
                               "--data_root", demo_root, "--output_dir", str(tmp_path / "out"),
                               *SMALL_MODEL, *extra], cwd=ROOT, capture_output=True, text=True,
                              timeout=120, env={**os.environ, "DS_ACCELERATOR": "cpu"})
    proc = run_failing("--init_encoder", str(tmp_path / "absent.pth"))
    assert proc.returncode == 1 and "absent.pth does not exist" in proc.stderr
    (tmp_path / "x.pth").write_bytes(b"")
    proc = run_failing("--init_encoder", str(tmp_path / "x.pth"), "--finetune", str(tmp_path / "x.pth"))
    assert proc.returncode == 1 and "--init_encoder and --finetune both set" in proc.stderr


def test_forward_gives_loss_parts_and_logits(tmp_path):
    stm, poses = write_set(tmp_path, [("a", ["X", "Y"], 30), ("b", ["Z"], 21)])
    dataset = cslr.GlossDataset(stm, poses, "train", "PhoenixDemo")
    dataset.vocab = GlossVocab.build(e["gloss"] for e in dataset.entries)
    model = cslr.CTCRecognizer(model_args(), dataset.vocab.num_classes)
    out = model(*dataset.collate_fn([dataset[0], dataset[1]]))
    assert out["feat_len"].tolist() == [8, 6]
    assert out["seq_logits"].shape == (8, 2, 4) and set(out["stats"]) == {
        "seqctc_loss", "convctc_loss", "dist_loss"}
    out["loss"].backward()
    assert model.proj_linear["face_all"].weight.grad.abs().sum() > 0


# ---- clip checks ----

def test_too_short_clip_is_named_and_skipped_only_with_the_flag(tmp_path):
    samples = [("fine", ["A", "B"], 40), ("tooshort", ["A", "B", "C", "D", "E", "F"], 12)]
    stm, poses = write_set(tmp_path, samples)
    dataset = cslr.GlossDataset(stm, poses, "train", "PhoenixDemo")
    vocab = GlossVocab.build(e["gloss"] for e in dataset.entries)
    model = cslr.CTCRecognizer(model_args(), vocab.num_classes)
    with pytest.raises(DataError, match=r"tooshort \(3 CTC frames for 6 labels\)"):
        cslr.check_training_clips(model, dataset, vocab, skip_bad=False)
    cslr.check_training_clips(model, dataset, vocab, skip_bad=True)
    assert [e["name"] for e in dataset.entries] == ["fine"]


def test_unreadable_clip_is_named_and_skipped_with_the_flag(tmp_path):
    stm, poses = write_set(tmp_path, [("ok", ["A"], 20), ("broken", ["B"], 20)])
    with open(os.path.join(poses, "broken.pkl"), "wb") as f:
        f.write(b"not a pickle")
    dataset = cslr.GlossDataset(stm, poses, "train", "PhoenixDemo")
    vocab = GlossVocab.build(e["gloss"] for e in dataset.entries)
    model = cslr.CTCRecognizer(model_args(), vocab.num_classes)
    with pytest.raises(DataError, match="broken.pkl"):
        cslr.check_training_clips(model, dataset, vocab, skip_bad=False)
    cslr.check_training_clips(model, dataset, vocab, skip_bad=True)
    assert [e["name"] for e in dataset.entries] == ["ok"]


# ---- evaluation ----

def test_evaluation_counts_unknown_glosses_and_writes_sclite_files(tmp_path, capsys):
    stm, poses = write_set(tmp_path, [("b", ["X", "NEU", "Y"], 30), ("a", ["NEU", "NEU"], 24)])
    dataset = cslr.GlossDataset(stm, poses, "dev", "PhoenixDemo")
    dataset.vocab = vocab = GlossVocab.build(["X Y Z"])
    loader = torch.utils.data.DataLoader(dataset, batch_size=2, collate_fn=dataset.collate_fn)
    args = types.SimpleNamespace(device=torch.device("cpu"), print_freq=10, ctc_beam=1,
                                 output_dir=str(tmp_path))
    stats = cslr.evaluate(args, cslr.CTCRecognizer(model_args(), vocab.num_classes), loader,
                          vocab, "dev")
    assert stats["unknown_glosses"] == 3
    assert "3 reference glosses are not in the vocabulary" in capsys.readouterr().out
    refs = read_stm(tmp_path / "groundtruth-dev.stm")
    assert list(refs) == ["a", "b"]  # sorted for sclite
    for suffix, key in (("", "wer"), ("-conv", "conv_wer")):
        hyps = read_ctm(tmp_path / f"output-hypothesis-dev{suffix}.ctm")
        assert wer_list(list(refs.values()), [hyps[n] for n in refs])["wer"] == stats[key]


# ---- end to end ----

def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return str(s.getsockname()[1])


def run(cmd, tmp_path, timeout=900):
    env = {**os.environ, "DS_ACCELERATOR": "cpu", "WANDB_MODE": "disabled", "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)
    (tmp_path / "stdout.txt").write_text(proc.stdout + proc.stderr)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


def cslr_args(data_root, out_dir, *extra):
    return ["--dataset", "PhoenixDemo", "--data_root", data_root, "--output_dir", str(out_dir),
            "--batch-size", "4", "--gradient-accumulation-steps", "1", "--lr", "3e-3",
            "--num_workers", "0", "--dtype", "fp32", "--print_freq", "4", *SMALL_MODEL, *extra]


def read_log(out_dir):
    with open(os.path.join(out_dir, "log.txt")) as f:
        return [json.loads(line) for line in f]


@pytest.fixture(scope="session")
def trained_run(phoenix_root, tmp_path_factory):
    """Output folder of a 2-rank ZeRO-2 CTC training run on PhoenixDemo."""
    out = tmp_path_factory.mktemp("cslr_run")
    run(["deepspeed", "--num_gpus", "2", "--master_port", free_port(), "cslr.py",
         *cslr_args(phoenix_root, out / "run", "--epochs", "5", "--zero_stage", "2")], out)
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
    proc = run(["deepspeed", "--num_gpus", "2", "--master_port", free_port(), "fine_tuning.py",
                "--task", "CSLR", "--head", "ctc", "--eval", "--finetune", str(trained_run / "best_checkpoint.pth"),
                *cslr_args(str(data_root), tmp_path / "eval")], tmp_path)
    assert "gloss vocabulary from the checkpoint" in proc.stdout
    with open(tmp_path / "eval" / "eval_metrics.json") as f:
        metrics = json.load(f)
    unknown = sum(g == "SICK" for phase in ("dev", "test") for seq in read_stm(
        os.path.join(phoenix_root, "PhoenixDemo", f"phoenix2014-groundtruth-{phase}.stm")).values()
        for g in seq)
    assert metrics["dev"]["unknown_glosses"] + metrics["test"]["unknown_glosses"] == unknown
    best = next(r for r in read_log(trained_run) if r["epoch"] == saved["epoch"])
    assert metrics["dev"]["wer"] == pytest.approx(best["dev_wer"], abs=1e-9)


def overfit_checkpoint(phoenix_root, folder, clips=4, max_steps=600):
    """A recognizer trained in-process on a few PhoenixDemo clips until greedy decoding gets
    most of their glosses right, saved like the trainer saves it; returns (checkpoint, data_root)
    whose dev and test splits are those clips."""
    demo = os.path.join(phoenix_root, "PhoenixDemo")
    train = os.path.join(demo, "phoenix2014-groundtruth-train.stm")
    entries = cslr.load_gloss_labels(train)[:clips]
    data_root = folder / "data"
    (data_root / "PhoenixDemo").mkdir(parents=True)
    os.symlink(os.path.join(demo, "pose_format"), data_root / "PhoenixDemo" / "pose_format")
    for phase in ("dev", "test"):
        write_stm(data_root / "PhoenixDemo" / f"phoenix2014-groundtruth-{phase}.stm",
                  [e["name"] for e in entries], [e["gloss"] for e in entries], "Signer01")
    stm = str(data_root / "PhoenixDemo" / "phoenix2014-groundtruth-dev.stm")
    dataset = cslr.GlossDataset(stm, os.path.join(demo, "pose_format"), "dev", "PhoenixDemo",
                                max_length=64)
    dataset.vocab = vocab = GlossVocab.build(e["gloss"] for e in entries)
    torch.manual_seed(0)
    model = cslr.CTCRecognizer(model_args(ctc_hidden=256), vocab.num_classes)
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
    from ctc_decode import greedy_decode
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
        run([sys.executable, "cslr.py", "--eval", "--finetune", checkpoint, "--ctc_beam", beam,
             *cslr_args(data_root, out, "--ctc_hidden", "256")], tmp_path)
        with open(out / "eval_metrics.json") as f:
            results[beam] = json.load(f)
    assert results["1"]["dev"]["wer"] < 30  # a model that has learnt something
    for phase in ("dev", "test"):
        assert results["5"][phase]["wer"] <= results["1"][phase]["wer"]
