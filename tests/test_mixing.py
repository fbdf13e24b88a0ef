"""Mixed corpora: the sampler's quotas and resume, the refusals, and training, evaluation and
pretraining on the Demo set mixed with a CSL-News-shaped set (English word-level, Chinese
char-level scoring) through fine_tuning.main and pretraining.main; translate.py on the mix's
checkpoint, each dataset's clips with its own prompt."""
import glob
import json
import os
import re

import numpy as np
import pytest
from conftest import trainer_predictions

import config
import flags
import translate
from labels import load_labels
from mixing import MixedSampler, quotas

TINY = ["--epochs", "1", "--batch-size", "4", "--gradient-accumulation-steps", "1",
        "--num_workers", "0", "--dtype", "fp32", "--stgcn_channels", "8,16", "--hidden_dim",
        "16", "--temporal_layers", "1", "--max_length", "32", "--num_beams", "1",
        "--max_new_tokens", "4"]


def test_quotas_follow_the_weights_and_add_up():
    assert quotas(40, [30, 10]).tolist() == [30, 10]
    assert quotas(10, [0.7, 0.3]).tolist() == [7, 3]
    assert quotas(7, [1, 1, 1]).tolist() == [3, 2, 2]
    assert quotas(5, [0.5, 0.5]).sum() == 5


def test_the_sampler_draws_each_dataset_by_its_weight():
    default = MixedSampler([30, 10], None, ["A", "B"], 40, 1, 0, batch_size=4, drop_last=True)
    assert default.draw_counts(0) == {"A": 30, "B": 10}
    assert sorted(np.concatenate(default.rank_batches(0)).tolist()) == list(range(40))
    weighted = MixedSampler([30, 10], [0.5, 0.5], ["A", "B"], 40, 1, 0, batch_size=4,
                            drop_last=True)
    for epoch in range(3):
        drawn = np.concatenate(weighted.rank_batches(epoch))
        assert (drawn < 30).sum() == 20 and (drawn >= 30).sum() == 20
        assert len(set(drawn[drawn >= 30].tolist())) == 10  # B's 10 clips, each twice
    assert weighted.rank_batches(0) != weighted.rank_batches(1)


def test_a_restored_sampler_continues_with_the_next_unseen_batch():
    def sampler(weights=(0.7, 0.3)):
        return MixedSampler([30, 10], list(weights), ["A", "B"], 40, 2, 1, batch_size=2,
                            drop_last=True, seed=5, bucket_by_length=True,
                            lengths=list(range(40)))
    first = sampler()
    first.set_epoch(2)
    full = [list(b) for b in first]
    first.set_position(3)
    again = sampler()
    again.load_state_dict(first.state_dict())
    assert [list(b) for b in again] == full[3:]
    with pytest.raises(ValueError, match="weights"):
        sampler((0.5, 0.5)).load_state_dict(first.state_dict())


@pytest.mark.parametrize("argv, message", [
    (["--dataset", "Demo", "--mix_weights", "0.5,0.5"], "--mix_weights: acts on a mix"),
    (["--dataset", "Demo", "--best_dataset", "Demo"], "--best_dataset: acts on a mix"),
    (["--dataset", "Demo+CSL_News", "--mix_weights", "0.7,0.2,0.1"], "gives 3 weights for the 2"),
    (["--dataset", "Demo+CSL_News", "--mix_weights", "0.7,-1"], "positive"),
    (["--dataset", "Demo+WLASL"], "the labels of WLASL support ISLR, not --task SLT"),
    (["--dataset", "Demo+PhoenixTDemo", "--task", "CSLR"], "own gloss vocabulary"),
    (["--dataset", "Demo+Nowhere"], "unknown Nowhere"),
    (["--dataset", "Demo+Demo"], "named twice"),
    (["--dataset", "Demo+CSL_News", "--best_dataset", "WLASL"], "not one of Demo, CSL_News"),
    (["--dataset", "Demo+CSL_News", "--dataset_root", "How2Sign=/x"], "How2Sign is not one of"),
    (["--dataset", "Demo+CSL_News", "--dataset_root", "Demo"], "give NAME=DIR"),
])
def test_flags_and_mixes_that_cannot_act_are_refused(argv, message, capsys):
    with pytest.raises(SystemExit):
        flags.parse_args("fine_tuning.py", argv)
    assert message in capsys.readouterr().err


@pytest.fixture(scope="module")
def news_root(tmp_path_factory):
    """A small CSL-News-shaped set in its own root (40 clips: 39 train, 1 held out)."""
    from demo.news import make_news
    root = str(tmp_path_factory.mktemp("news"))
    make_news(root, n=40, seed=0)
    return root


def mix_args(demo_root, news_root, out, *extra, script="fine_tuning.py"):
    return ["--dataset", "Demo+CSL_News", "--data_root", demo_root, "--dataset_root",
            f"CSL_News={news_root}", "--mt5_path", os.path.join(demo_root, "Demo", "mt5"),
            "--output_dir", str(out), *TINY, *extra]


def test_the_mix_needs_one_mt5_folder(demo_root, news_root, tmp_path, in_process_trainer):
    import fine_tuning
    argv = mix_args(demo_root, news_root, tmp_path / "run")
    at = argv.index("--mt5_path")
    args = flags.parse_args("fine_tuning.py", argv[:at] + argv[at + 2:])
    with pytest.raises(config.ConfigError, match="different mT5 folders"):
        fine_tuning.main(args)


def log_records(out):
    return [json.loads(line) for line in open(out / "log.txt")]


def test_training_on_a_mix_scores_each_dataset_at_its_level(demo_root, news_root, tmp_path,
                                                            in_process_trainer, capsys):
    import fine_tuning
    from SLRT_metrics import normalize_for_scoring, translation_performance
    out = tmp_path / "run"
    args = flags.parse_args("fine_tuning.py", mix_args(
        demo_root, news_root, out, "--mix_weights", "0.75,0.25", "--best_dataset", "CSL_News"))
    fine_tuning.main(args)
    printed = capsys.readouterr().out
    draws = re.search(r"epoch 0 draws: Demo (\d+) \S+, CSL_News (\d+)", printed)
    assert (int(draws[1]), int(draws[2])) == (63, 21)  # 84 of the 48 + 39 clips, 3:1
    assert "Demo word-level, CSL_News char-level" in printed
    record = log_records(out)[-1]
    for phase in ("dev", "test"):
        for name in ("Demo", "CSL_News"):
            assert f"{phase}_{name}/bleu4" in record and f"{phase}_{name}/rouge" in record
    assert record["best_dev_CSL_News/bleu4"] == record["dev_CSL_News/bleu4"]
    assert "dev_bleu4" not in record
    lines = {name: open(out / f"test_{name}_tmp_pres.txt").read().splitlines()
             for name in ("Demo", "CSL_News")}
    assert len(lines["Demo"]) == 8 and len(lines["CSL_News"]) == 1

    def rescored(name, level):
        read = [open(out / f"test_{name}_tmp_{kind}.txt").read().splitlines()
                for kind in ("pres", "refs")]
        hyps, refs = ([line.split(": ", 2)[-1] for line in rows] for rows in read)
        refs, hyps = normalize_for_scoring(refs, hyps, level)
        return translation_performance(refs, hyps)[0]["bleu4"]
    assert rescored("Demo", "word") == pytest.approx(record["test_Demo/bleu4"])
    assert rescored("CSL_News", "char") == pytest.approx(record["test_CSL_News/bleu4"])
    assert os.path.isdir(out / "mixed" / "CSL_News")  # its own pre-scan cache


def test_each_clip_keeps_its_datasets_prompt(demo_root, news_root, tmp_path):
    import argparse
    import mixing
    from conftest import default_args
    from models import load_tokenizer
    args = default_args(dataset="Demo+CSL_News", data_root=demo_root, max_length=32,
                        dataset_root=[f"CSL_News={news_root}"],
                        mt5_path=os.path.join(demo_root, "Demo", "mt5"), output_dir=None)
    paths = mixing.resolve_paths(args)
    assert paths["datasets"]["CSL_News"]["pose_dirs"]["train"].startswith(news_root)
    assert paths["datasets"]["Demo"]["labels"]["train"].startswith(demo_root)

    def build(own, spec, own_paths, phases):
        from datasets import build_dataset
        return {p: build_dataset(own, spec, own_paths, p) for p in phases}
    task = argparse.Namespace(needs_poses=True)
    splits = mixing.build_splits(args, None, paths, task, build)
    train = splits["train"]
    assert train.sizes() == [48, 39]
    tokenizer = load_tokenizer(args.mt5_path)
    train.targets = mixing.MixedTextTargets(tokenizer, 50)
    _, tgt = train.collate_fn([train[0], train[60]])
    assert tgt["dataset"] == ["Demo", "CSL_News"]
    assert tgt["prompt"] == [config.get_dataset("Demo").prompt,
                             config.get_dataset("CSL_News").prompt]
    src, _ = train.collate_fn([train[0], train[60]])
    prompts = tokenizer.batch_decode(src["prefix_ids"], skip_special_tokens=True)
    assert [p.strip() for p in prompts] == [p.strip() for p in tgt["prompt"]]


def test_pretraining_on_a_mix(demo_root, news_root, tmp_path, in_process_trainer, capsys,
                              monkeypatch):
    import pretraining
    import utils
    monkeypatch.setattr(utils, "close_distributed", lambda: None)  # the session's group stays
    out = tmp_path / "pre"
    argv = mix_args(demo_root, news_root, out, "--quick_break", "6")
    argv[argv.index("Demo+CSL_News")] = "CSL_News+Demo"
    pretraining.main(argv)
    assert re.search(r"epoch 0 draws: CSL_News 38 \S+, Demo 46", capsys.readouterr().out)
    record = log_records(out)[-1]
    assert "best_dev_CSL_News/bleu4" in record and "test_Demo/bleu4" in record
    assert record["train_steps"] == 6


def test_a_mix_resumed_mid_epoch_trains_on_as_the_uninterrupted_run(demo_root, news_root,
                                                                    tmp_path, in_process_trainer):
    """A mid-epoch training state of a weighted mix continues with the same draws: the resumed
    run's step losses are those of the run that was never stopped."""
    import shutil
    import fine_tuning

    def run(out):
        fine_tuning.main(flags.parse_args("fine_tuning.py", mix_args(
            demo_root, news_root, out, "--mix_weights", "0.4,0.6", "--save_every_steps", "4",
            "--keep_last", "10", "--print_freq", "1", "--seed", "3")))

    def losses(out):
        return {r["step"]: r["loss"] for r in map(json.loads, open(out / "log_steps.txt"))}
    whole, resumed = tmp_path / "whole", tmp_path / "resumed"
    run(whole)
    shutil.copytree(whole, resumed)
    (resumed / "training_state" / "latest").write_text("epoch0-step8")
    shutil.rmtree(resumed / "training_state" / "epoch0")
    os.remove(resumed / "log_steps.txt")
    run(resumed)
    after = losses(resumed)
    assert sorted(after) == list(range(8, 21))
    assert after == pytest.approx({step: loss for step, loss in losses(whole).items()
                                   if step >= 8}, rel=1e-6)


@pytest.fixture(scope="module")
def mixed(demo_root, news_root, tmp_path_factory, in_process_trainer):
    """Output dir of one tiny epoch on the mix Demo+CSL_News (English and Chinese prompts), with
    the trainer's per-dataset test predictions."""
    import fine_tuning
    out = tmp_path_factory.mktemp("mixed") / "run"
    fine_tuning.main(flags.parse_args("fine_tuning.py", mix_args(
        demo_root, news_root, out, "--max_new_tokens", "8", "--lr", "3e-3")))
    return out


def mix_test_clips(out, name, root):
    """([(pose file's name, trainer's prediction)], pose files) of a dataset's test split in
    the mix."""
    spec = config.get_dataset(name)
    entries = {e["name"]: e["pose_file"] for e in load_labels(
        os.path.join(root, spec.labels["test"]), spec.label_format)}
    files = [os.path.join(root, name, "pose_format", entries[clip])
             for clip, _ in trainer_predictions(out, f"test_{name}")]
    expected = [(os.path.splitext(os.path.basename(path))[0], " ".join(text.split()))
                for path, (_, text) in zip(files, trainer_predictions(out, f"test_{name}"))]
    return expected, files


def unspaced(rows):
    """Rows with the spaces of their text removed: the trainer writes the predictions of a
    character-scored dataset (CSL-News) one character apart."""
    return [(clip, "".join(text.split())) for clip, text in rows]


def translated(capsys, *argv):
    translate.main([*argv, "--num_beams", "1", "--batch_size", "4", "--device", "cpu"])
    printed = capsys.readouterr()
    return [tuple(line.split("\t")) for line in printed.out.splitlines()], printed.err


def test_a_mix_checkpoint_translates_each_dataset_with_its_prompt(mixed, demo_root, news_root,
                                                                 tmp_path, capsys):
    """--dataset NAME gives the clips the prompt of their dataset in the mix, as the trainer
    did: translate.py writes the trainer's test predictions of each dataset (from the checkpoint
    and from its exported folder); by default the first dataset's, said on stderr."""
    checkpoint = str(mixed / "best_checkpoint.pth")
    demo, demo_files = mix_test_clips(mixed, "Demo", demo_root)
    news, news_files = mix_test_clips(mixed, "CSL_News", news_root)
    capsys.readouterr()
    rows, err = translated(capsys, "--checkpoint", checkpoint, *demo_files)
    assert rows == demo
    assert "translating clips of Demo (the mix's first dataset" in err
    assert "'Translate sign language video to English: '" in err
    export = tmp_path / "exported"
    rows, err = translated(capsys, "--checkpoint", checkpoint, *news_files, "--dataset",
                           "CSL_News", "--export", str(export))
    assert unspaced(rows) == unspaced(news)
    assert "translating clips of CSL_News (--dataset" in err and "to Chinese: " in err
    assert translated(capsys, "--model", str(export), *news_files, "--dataset", "CSL_News")[0] \
        == rows
    chinese = translate.Translator.load(checkpoint, "--dataset", "CSL_News", "--device", "cpu")
    assert chinese.model.prompt == "Translate sign language video to Chinese: "
    assert translate.Translator.load(str(export), "--device", "cpu").model.prompt == \
        "Translate sign language video to English: "


@pytest.mark.parametrize("source", ["--checkpoint", "--model"])
def test_a_dataset_outside_the_mix_is_refused_naming_the_choices(mixed, demo_root, tmp_path,
                                                                  source):
    clip = sorted(glob.glob(os.path.join(demo_root, "Demo", "pose_format", "*.pkl")))[0]
    checkpoint = str(mixed / "best_checkpoint.pth")
    path = checkpoint
    if source == "--model":
        path = str(tmp_path / "exported")
        translate.main(["--checkpoint", checkpoint, "--export", path, "--device", "cpu"])
    with pytest.raises(translate.UsageError, match=re.escape(
            "--dataset How2Sign is not a dataset of the mix the model was trained on "
            "(Demo+CSL_News); choose one of Demo, CSL_News")):
        translate.main([source, path, clip, "--dataset", "How2Sign", "--device", "cpu"])
