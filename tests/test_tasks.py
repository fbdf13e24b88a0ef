"""Tests for tasks.GlossTask (--task CSLR --head ctc): the gloss vocabulary (training split or
--finetune checkpoint) and the targets it gives every split, training clips too short for CTC,
and evaluation through engine.evaluate with its sclite files; and the generating head's
(TextTask) targets on the same gloss labels."""
import os
import types

import pytest
import torch
from conftest import ctc_args, default_args, foreign_tokenizer_mt5, write_gloss_set

import config
import engine
import fine_tuning
from ctc_head import BLANK, GlossVocab
from datasets import DataError, GlossTargets, S2T_Dataset
from models import CTCRecognizer
from SLRT_metrics import read_ctm, read_stm, wer_list
from tasks import GlossTask, TextTask, build_task

PHOENIX_DEMO = config.DATASETS["PhoenixDemo"]


def gloss_split(tmp_path, samples, phase="train", signer="Signer01"):
    stm, poses = write_gloss_set(tmp_path, samples, signer)
    return S2T_Dataset(stm, poses, phase, dataset_name="PhoenixDemo", task="CSLR")


def prepared(args, splits):
    task = build_task(args, PHOENIX_DEMO)
    assert isinstance(task, GlossTask)
    task.prepare(args, splits)
    return task


# ---- vocabulary and targets ----

def test_vocabulary_from_the_training_split_gives_every_split_padded_gloss_ids(tmp_path, capsys):
    train = gloss_split(tmp_path / "train", [("a", ["X", "Y", "Y"], 30), ("b", ["Z"], 25)])
    dev = gloss_split(tmp_path / "dev", [("c", ["Y", "NEU", "X"], 20)], "dev")
    task = prepared(ctc_args(), {"train": train, "dev": dev})
    assert task.vocab.itos == [BLANK, "X", "Y", "Z"]
    assert "gloss vocabulary from the training split: 3 glosses + blank" in capsys.readouterr().out
    src, tgt = train.collate_fn([train[0], train[1]])
    assert tgt["gloss_ids"].tolist() == [[1, 2, 2], [3, 0, 0]]
    assert tgt["gloss_lengths"].tolist() == [3, 1]
    assert src["body"].shape[:2] == (2, 30) and tgt["gt_gloss"] == ["X Y Y", "Z"]
    # glosses the vocabulary lacks are left out of the targets (and counted when scoring)
    _, tgt = dev.collate_fn([dev[0]])
    assert tgt["gloss_ids"].tolist() == [[2, 1]] and tgt["gt_gloss"] == ["Y NEU X"]


def test_vocabulary_of_the_finetune_checkpoint_is_reused(tmp_path, capsys):
    saved = GlossVocab.build([["A", "B"], ["C"]])
    path = tmp_path / "ctc.pth"
    torch.save({"model": {}, "gloss_vocab": saved.state_dict()}, path)
    train = gloss_split(tmp_path / "train", [("a", ["X", "A"], 30)])
    # the checkpoint's vocabulary wins over the training split's, which is told what it lacks
    task = prepared(ctc_args(finetune=str(path)), {"train": train})
    assert task.vocab.itos == saved.itos
    out = capsys.readouterr().out
    assert "gloss vocabulary from the checkpoint: 3 glosses + blank" in out
    assert "train: 1 glosses not in the vocabulary are left out of the targets: X x1" in out
    _, tgt = train.collate_fn([train[0]])
    assert tgt["gloss_ids"].tolist() == [[1]]
    assert task.checkpoint_extras() == {"gloss_vocab": saved.state_dict()}

    # evaluation needs a checkpoint, and one with a vocabulary when there is no training split
    dev = gloss_split(tmp_path / "dev", [("b", ["A"], 20)], "dev")
    with pytest.raises(config.ConfigError, match="--eval with --head ctc needs --finetune"):
        build_task(ctc_args(eval=True), PHOENIX_DEMO)
    torch.save({"model": {}}, tmp_path / "plain.pth")
    with pytest.raises(DataError, match="plain.pth: the checkpoint has no gloss vocabulary"):
        prepared(ctc_args(eval=True, finetune=str(tmp_path / "plain.pth")), {"dev": dev})


def test_gloss_labels_also_feed_the_generating_head(tmp_path, tiny_mt5_dir):
    args = default_args(task="CSLR", head="generate", dataset="PHOENIX2014", mt5_path=tiny_mt5_dir,
                        max_unk_rate=1.0)  # the tiny tokenizer was trained on sentences
    task = build_task(args, config.DATASETS["PHOENIX2014"])
    assert isinstance(task, TextTask)
    stm, poses = write_gloss_set(tmp_path, [("a", ["X", "Y"], 20)])
    dataset = S2T_Dataset(stm, poses, "dev", dataset_name="PHOENIX2014", task="CSLR")
    task.prepare(args, {"dev": dataset})
    src, tgt = dataset.collate_fn([dataset[0]])
    assert tgt["gt_sentence"] == ["X Y"] and tgt["labels"].shape[0] == 1
    assert src["prefix_ids"].shape[0] == 1
    assert "gloss_ids" not in tgt


# ---- clip checks ----

def test_too_short_clip_is_named_and_skipped_only_with_the_flag(tmp_path):
    samples = [("fine", ["A", "B"], 40), ("tooshort", ["A", "B", "C", "D", "E", "F"], 12)]
    dataset = gloss_split(tmp_path, samples)
    task = prepared(ctc_args(), {"train": dataset})
    model = CTCRecognizer(ctc_args(), task.vocab.num_classes)
    with pytest.raises(DataError, match=r"tooshort \(3 CTC frames for 6 labels\)"):
        task.check_splits(ctc_args(), model, {"train": dataset})
    assert len(dataset) == 2
    task.check_splits(ctc_args(skip_bad_samples=True), model, {"train": dataset})
    assert [e["name"] for e in dataset.entries] == ["fine"]
    assert dataset.skipped == ["tooshort (3 CTC frames for 6 labels)"]


def test_unreadable_clip_is_named_and_skipped_with_the_flag(tmp_path):
    """The trainer's pre-scan (before the task's checks) names unreadable clips of the run."""
    dataset = gloss_split(tmp_path, [("ok", ["A"], 20), ("broken", ["B"], 20)])
    with open(os.path.join(dataset.pose_dir, "broken.pkl"), "wb") as f:
        f.write(b"not a pickle")
    label_path = str(tmp_path / "labels.stm")
    with pytest.raises(DataError, match="broken.pkl"):
        fine_tuning.prescan(ctc_args(num_workers=0), dataset, "train", label_path)
    problems = fine_tuning.prescan(ctc_args(num_workers=0, skip_bad_samples=True), dataset,
                                   "train", label_path)
    assert len(problems) == 1 and "broken.pkl" in problems[0]
    assert [e["name"] for e in dataset.entries] == ["ok"]
    # the remaining clips then pass the CTC checks
    task = prepared(ctc_args(), {"train": dataset})
    task.check_splits(ctc_args(), CTCRecognizer(ctc_args(), task.vocab.num_classes),
                      {"train": dataset})
    assert len(dataset) == 1


# ---- evaluation ----

def test_evaluation_counts_unknown_glosses_and_writes_sclite_files(tmp_path, capsys):
    dataset = gloss_split(tmp_path, [("b", ["X", "NEU", "Y"], 30), ("a", ["NEU", "NEU"], 24)],
                          "dev", signer="Signer07")
    args = ctc_args(device=torch.device("cpu"), print_freq=10, output_dir=str(tmp_path))
    task = build_task(args, PHOENIX_DEMO)
    task.vocab = GlossVocab.build(["X Y Z"])
    dataset.targets = GlossTargets(task.vocab)
    loader = torch.utils.data.DataLoader(dataset, batch_size=2, collate_fn=dataset.collate_fn)
    model = CTCRecognizer(args, task.vocab.num_classes)
    stats = engine.evaluate(args, types.SimpleNamespace(module=model), loader, task, "dev")
    assert stats["unknown_glosses"] == 3
    out = capsys.readouterr().out
    assert "dev: 3 reference glosses are not in the vocabulary and count as errors: NEU x3" in out
    refs = read_stm(tmp_path / "groundtruth-dev.stm")
    assert list(refs) == ["a", "b"]  # sorted for sclite
    assert refs == {"a": ["NEU", "NEU"], "b": ["X", "NEU", "Y"]}
    with open(tmp_path / "groundtruth-dev.stm") as f:
        assert {line.split()[2] for line in f} == {"Signer07"}  # the label file's signers
    for suffix, key in (("", "wer"), ("-conv", "conv_wer")):
        hyps = read_ctm(tmp_path / f"output-hypothesis-dev{suffix}.ctm")
        assert set(hyps) == {"a", "b"}
        assert wer_list(list(refs.values()), [hyps[n] for n in refs])["wer"] == stats[key]
    # Uni-Sign's prediction files, in dataset order
    with open(tmp_path / "dev_tmp_refs.txt") as f:
        assert f.read().splitlines() == ["sample: b, ground-truth: X NEU Y",
                                         "sample: a, ground-truth: NEU NEU"]
    assert (tmp_path / "dev_tmp_pres.txt").exists()


# ---- translation scoring conventions

def test_phoenix_2014t_translation_is_scored_per_word_as_the_literature_does():
    """The corpus's lower-case, pre-tokenised German is scored as written: sacrebleu's corpus
    BLEU with its default 13a tokenisation, case kept (GFSLT-VLP's and SignCL's scoring)."""
    from sacrebleu.metrics import BLEU
    task = TextTask(default_args(dataset="PHOENIX2014T", task="SLT"),
                    config.get_dataset("PHOENIX2014T"))
    refs = ["und nun die wettervorhersage für morgen freitag den zwölften august .",
            "im süden und südwesten regnet es ."]
    hyps = ["und nun die wettervorhersage für morgen .", "Im süden regnet es ."]
    stats = task.score([("a", hyps[0], refs[0]), ("b", hyps[1], refs[1])], "test")
    assert stats["bleu4"] == pytest.approx(BLEU().corpus_score(hyps, [refs]).score)
    assert stats["bleu1"] == pytest.approx(BLEU(max_ngram_order=1).corpus_score(hyps, [refs]).score)
    lowered = task.score([("a", hyps[0], refs[0]), ("b", hyps[1].lower(), refs[1])], "test")
    assert lowered["bleu4"] > stats["bleu4"]  # "Im" is not "im": case counts
    assert task.normalized([("a", hyps[0], refs[0])]) == (["a"], [hyps[0]], [refs[0]])
    assert "rouge" in stats


def test_phoenix_recognition_logs_raw_and_official_wer():
    """On PHOENIX sets evaluation logs the raw WER (VAC's python scoring) and the WER after the
    official gloss rewriting; elsewhere only the raw one."""
    refs = ["REGEN NORD", "SONNE WARM"]
    hyps = ["loc-REGEN NORD __EMOTION__", "SONNE-PLUSPLUS WARM"]
    text = TextTask(default_args(dataset="PHOENIX2014", task="CSLR"),
                    config.get_dataset("PHOENIX2014"))
    stats = text.score([("a", hyps[0], refs[0]), ("b", hyps[1], refs[1])], "dev")
    assert stats["wer"] == pytest.approx(wer_list(refs, hyps)["wer"]) and stats["wer"] > 0
    assert stats["official_wer"] == 0.0
    plain = TextTask(default_args(dataset="CSL_Daily", task="CSLR"),
                     config.get_dataset("CSL_Daily"))
    assert "official_wer" not in plain.score([("a", hyps[0], refs[0])], "dev")


# ---- tokenizer coverage ----

def test_unknown_rate_counts_unk_tokens(tiny_mt5_dir):
    from models import load_tokenizer
    from tasks import unknown_rate
    tokenizer = load_tokenizer(tiny_mt5_dir)
    assert unknown_rate(tokenizer, ["the teacher gave a book to the child"]) == 0.0
    assert unknown_rate(tokenizer, ["ÄÖÜ ß 漢字"]) >= 0.5
    assert unknown_rate(tokenizer, []) == 0.0


def test_tokenizer_that_does_not_cover_the_targets_stops_before_training(
        tmp_path, tiny_mt5_dir, capsys):
    """Gloss strings in capitals under a tokenizer trained on lower-case English: most of their
    tokens are <unk>; the run stops naming the folder and the rate, unless --max_unk_rate
    allows it."""
    import flags
    from tasks import unknown_rate
    stm, poses = write_gloss_set(tmp_path, [("a", ["ÄRZTIN", "ÜBEN"], 20),
                                            ("b", ["ÖL", "ÄRZTIN"], 20)])
    dataset = S2T_Dataset(stm, poses, "train", dataset_name="PHOENIX2014", task="CSLR")
    argv = ["--dataset", "PHOENIX2014", "--task", "CSLR", "--mt5_path", tiny_mt5_dir]
    args = flags.parse_args("fine_tuning.py", argv)
    task = build_task(args, config.DATASETS["PHOENIX2014"])
    with pytest.raises(config.ConfigError) as info:
        task.prepare(args, {"train": dataset})
    rate = unknown_rate(task.tokenizer, dataset.target_texts())
    assert f"the tokenizer in {tiny_mt5_dir} maps {rate:.1%}" in str(info.value)
    assert "--max_unk_rate 0.05" in str(info.value)
    args = flags.parse_args("fine_tuning.py", argv + ["--max_unk_rate", "1"])
    task.prepare(args, {"train": dataset})
    assert dataset.targets is not None


def test_a_tokenizer_foreign_to_the_training_texts_stops_the_trainer(
        demo_root, tmp_path, capsys, in_process_trainer):
    """The Demo mT5 with a Greek tokenizer: half the English targets' tokens are <unk>. The
    trainer stops with one error line naming the folder and the rate before building the model
    (with --eval, measured on the dev references); --max_unk_rate 1 lets the same run train."""
    import flags
    mt5 = foreign_tokenizer_mt5(os.path.join(demo_root, "Demo", "mt5"), tmp_path / "greek_mt5")

    def argv(out, *extra):
        return ["--dataset", "Demo", "--data_root", demo_root, "--mt5_path", mt5,
                "--output_dir", str(tmp_path / out), "--batch-size", "4", "--num_workers", "0",
                "--dtype", "fp32", "--epochs", "1", "--quick_break", "2", "--stgcn_channels",
                "8,16", "--hidden_dim", "16", "--temporal_layers", "1", "--max_length", "32",
                "--num_beams", "1", "--max_new_tokens", "4", *extra]

    capsys.readouterr()
    with pytest.raises(SystemExit) as stop:
        fine_tuning.run_command_line(fine_tuning.main, flags.parse_args("fine_tuning.py",
                                                                        argv("refused")))
    message = str(stop.value.code)
    assert message.startswith(f"error: the tokenizer in {mt5} maps ")
    assert "of the training targets' tokens to <unk> (--max_unk_rate 0.05)" in message
    assert "\n" not in message and "parameters:" not in capsys.readouterr().out
    with pytest.raises(SystemExit) as stop:  # --eval: the references it would be scored on
        fine_tuning.run_command_line(fine_tuning.main, flags.parse_args(
            "fine_tuning.py", argv("evaluated", "--eval")))
    assert str(stop.value.code).startswith(f"error: the tokenizer in {mt5} maps ")
    assert "of the dev references' tokens to <unk>" in str(stop.value.code)
    # main, not run_command_line: that closes the process group the session's runs share.
    os.makedirs(tmp_path / "allowed")
    fine_tuning.main(flags.parse_args("fine_tuning.py", argv("allowed", "--max_unk_rate", "1")))
    assert "parameters:" in capsys.readouterr().out
    assert os.path.isfile(tmp_path / "allowed" / "checkpoint_0.pth")


def test_max_unk_rate_is_refused_with_the_ctc_head(capsys):
    import flags
    with pytest.raises(SystemExit):
        flags.parse_args("fine_tuning.py", ["--task", "CSLR", "--head", "ctc",
                                            "--max_unk_rate", "0.5"])
    assert "--max_unk_rate acts on mT5" in capsys.readouterr().err


def test_a_line_break_in_a_prediction_keeps_one_line_per_clip(tmp_path):
    task = TextTask(default_args(dataset="How2Sign", task="SLT"), config.DATASETS["How2Sign"])
    rows = [("clip0", "the cat\nsat down", "the cat sat down"), ("clip1", "a dog", "a dog")]
    task.write(str(tmp_path), "test", rows, None)
    lines = (tmp_path / "test_tmp_pres.txt").read_text(encoding="utf-8").splitlines()
    assert lines == ["sample: clip0, prediction: the cat sat down", "sample: clip1, prediction: a dog"]
    assert task.score(rows, "test")["bleu4"] == pytest.approx(100.0)


def test_prediction_files_of_a_run_rescore_to_its_own_scores(data_root, tmp_path, monkeypatch,
                                                             in_process_trainer):
    """References with line breaks of every kind str.splitlines() knows: the run writes one
    line per clip, and SLRT_metrics.py scores its files to the figures the run logged."""
    import gzip
    import pickle
    import flags
    import SLRT_metrics
    from test_fine_tuning import read_log, train_args
    monkeypatch.setattr(fine_tuning.utils, "close_distributed", lambda: None)
    breaks = ["\n", "\r\n", "\x1e", "\u2028", "\x0b"]
    for phase in ("dev", "test"):
        path = os.path.join(data_root, "Demo", f"labels.{phase}")
        with gzip.open(path, "rb") as f:
            labels = pickle.load(f)
        for entry, line_break in zip(labels.values(), breaks):
            words = entry["text"].split()
            entry["text"] = " ".join(words[:2]) + line_break + " ".join(words[2:])
        with gzip.open(path, "wb") as f:
            pickle.dump(labels, f)
    out = tmp_path / "run"
    fine_tuning.run_command_line(fine_tuning.main, flags.parse_args("fine_tuning.py", train_args(
        data_root, out, "--epochs", "1", "--quick_break", "1")))
    logged = read_log(out)[-1]
    for phase in ("dev", "test"):
        refs, hyps = out / f"{phase}_tmp_refs.txt", out / f"{phase}_tmp_pres.txt"
        assert len(refs.read_text(encoding="utf-8").splitlines()) == 8
        assert len(hyps.read_text(encoding="utf-8").splitlines()) == 8
        rescored = SLRT_metrics.main(["--refs", str(refs), "--hyps", str(hyps)])
        for metric in ("bleu1", "bleu4", "rouge"):
            assert rescored[metric] == pytest.approx(logged[f"{phase}_{metric}"], abs=1e-9)
