"""gloss_to_text.py through fine_tuning.main: a `--task G2T` run on a tiny PHOENIX-2014-T-shaped
set (no pose folder at all) trains and evaluates, and a translation run starts its pose encoder
from a CTC checkpoint and its mT5 from the G2T checkpoint, joined by `--mapper mlp`."""
import json
import os
import shutil

import pytest
import torch
from conftest import load_file_module, write_label_file

import fine_tuning
import flags
from config import ConfigError, get_dataset
from gloss_to_text import GlossTextDataset, load_lm_weights
from keypoints import DataError
from pose_encoder import ENCODER_PREFIXES

make_t = load_file_module("script/make_phoenix_t_demo.py")
TINY_MT5 = dict(vocab_size=128, d_model=32, d_ff=64, num_layers=1, num_heads=2, d_kv=16)
POSE_MODEL = ["--stgcn_channels", "8,16", "--hidden_dim", "16", "--temporal_layers", "1",
              "--max_length", "64"]
SHORT = ["--dataset", "PhoenixTDemo", "--batch-size", "4", "--gradient-accumulation-steps", "1",
         "--num_workers", "0", "--seed", "3"]
DECODE = ["--num_beams", "2", "--max_new_tokens", "20"]


@pytest.fixture(scope="module")
def phoenix_t_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    make_t.make_phoenix_t_demo(str(root / "PhoenixTDemo"), seed=1, mt5_kwargs=TINY_MT5,
                               n_train=40, n_dev=6, n_test=6)
    return root


@pytest.fixture(scope="module")
def labels_only_root(phoenix_t_root, tmp_path_factory):
    """The corpus files and mT5 of the set, without its pose folder."""
    root = tmp_path_factory.mktemp("labels_only")
    shutil.copytree(phoenix_t_root / "PhoenixTDemo", root / "PhoenixTDemo",
                    ignore=shutil.ignore_patterns("pose_format"))
    return root


def run(argv):
    return fine_tuning.main(flags.parse_args("fine_tuning.py", argv))


def epochs(output_dir):
    with open(os.path.join(output_dir, "log.txt"), encoding="utf-8") as f:
        return [json.loads(line) for line in f]


@pytest.fixture(scope="module")
def g2t_run(labels_only_root, tmp_path_factory, in_process_trainer):
    out = tmp_path_factory.mktemp("g2t")
    run(["--task", "G2T", *SHORT, *DECODE, "--data_root", str(labels_only_root), "--epochs", "3",
         "--lr", "3e-3", "--output_dir", str(out)])
    return out


def test_g2t_trains_and_evaluates_without_poses(g2t_run):
    records = epochs(g2t_run)
    assert len(records) == 3
    assert records[-1]["train_loss"] < records[0]["train_loss"]
    for phase in ("dev", "test"):
        assert 0 <= records[-1][f"{phase}_bleu4"] <= 100 and f"{phase}_rouge" in records[-1]
        lines = (g2t_run / f"{phase}_tmp_refs.txt").read_text("utf-8").splitlines()
        assert len(lines) == 6 and lines[0].endswith(" .")  # the German sentences, not glosses
    saved = torch.load(g2t_run / "best_checkpoint.pth", weights_only=True)
    assert saved["args"]["task"] == "G2T" and "dev_bleu4" in saved
    assert saved["model"] and all(key.startswith("mt5_model.") for key in saved["model"])


def test_translation_starts_from_ctc_encoder_and_g2t_language_model(
        phoenix_t_root, g2t_run, tmp_path, monkeypatch, in_process_trainer):
    ctc = tmp_path / "ctc"
    run(["--task", "CSLR", "--head", "ctc", *SHORT, *POSE_MODEL, "--ctc_hidden", "32",
         "--data_root", str(phoenix_t_root), "--epochs", "1", "--output_dir", str(ctc)])
    at_start = {}
    build = fine_tuning.init_engine

    def spy(args, model, steps, config):
        at_start.update({k: v.detach().clone() for k, v in model.state_dict().items()})
        return build(args, model, steps, config)

    monkeypatch.setattr(fine_tuning, "init_engine", spy)
    slt = tmp_path / "slt"
    run(["--task", "SLT", *SHORT, *POSE_MODEL, *DECODE, "--data_root", str(phoenix_t_root),
         "--epochs", "1", "--mapper", "mlp", "--init_encoder", str(ctc / "best_checkpoint.pth"),
         "--init_lm", str(g2t_run / "best_checkpoint.pth"), "--output_dir", str(slt)])
    encoder = torch.load(ctc / "best_checkpoint.pth", weights_only=True)["model"]
    lm = torch.load(g2t_run / "best_checkpoint.pth", weights_only=True)["model"]
    encoder_keys = [k for k in at_start if k.startswith(ENCODER_PREFIXES)]
    lm_keys = [k for k in at_start if k.startswith("mt5_model.")]
    assert encoder_keys and lm_keys and set(lm_keys) <= set(lm)
    for key in encoder_keys:
        assert torch.equal(at_start[key], encoder[key]), key
    for key in lm_keys:
        assert torch.equal(at_start[key], lm[key]), key
    assert {"pose_proj.0.weight", "pose_proj.2.weight"} <= set(at_start)
    assert "pose_proj.weight" not in at_start
    record = epochs(slt)[0]
    assert torch.isfinite(torch.tensor(record["train_loss"])) and "dev_bleu4" in record
    trained = torch.load(slt / "checkpoint_0.pth", weights_only=True)["model"]
    assert not torch.equal(trained["pose_proj.0.weight"], at_start["pose_proj.0.weight"])
    assert not torch.equal(trained["mt5_model.lm_head.weight"], lm["mt5_model.lm_head.weight"])


def test_init_lm_refuses_a_checkpoint_without_language_model(phoenix_t_root, tmp_path,
                                                            in_process_trainer):
    from models import SignTranslator
    from conftest import default_args
    args = default_args(dataset="PhoenixTDemo", stgcn_channels=[8, 16], hidden_dim=16,
                        temporal_layers=1, mapper="mlp",
                        mt5_path=str(phoenix_t_root / "PhoenixTDemo" / "mt5"))
    model = SignTranslator(args)
    encoder_only = {k: v for k, v in model.state_dict().items() if k.startswith(ENCODER_PREFIXES)}
    with pytest.raises(ConfigError, match="has no language model of this shape"):
        load_lm_weights(model, {"model": encoder_only}, source="ctc.pth")
    before = model.pose_proj[0].weight.clone()
    report = load_lm_weights(model, model.state_dict())
    assert report["loaded_keys"] == sum(k.startswith("mt5_model.") for k in model.state_dict())
    assert torch.equal(model.pose_proj[0].weight, before)


def test_entries_without_glosses_are_named_or_skipped(tmp_path):
    entries = [{"name": "a1", "text": "ein satz .", "gloss": ["EIN", "SATZ"]},
               {"name": "a2", "text": "noch ein satz .", "gloss": []}]
    path = write_label_file(tmp_path / "train.corpus.csv", "corpus_csv", entries)
    spec = get_dataset("PhoenixTDemo")
    with pytest.raises(DataError, match="'a2' has no glosses") as error:
        GlossTextDataset(path, "train", spec).check(skip_bad=False)
    assert path in str(error.value)
    dataset = GlossTextDataset(path, "train", spec)
    assert len(dataset.check(skip_bad=True)) == 1
    assert [dataset[i][:2] for i in range(len(dataset))] == [("a1", "EIN SATZ")]


def test_translate_refuses_a_g2t_checkpoint(g2t_run, phoenix_t_root):
    import translate
    clip = sorted((phoenix_t_root / "PhoenixTDemo" / "pose_format").iterdir())[0]
    args = translate.parse_args(["--checkpoint", str(g2t_run / "best_checkpoint.pth"), str(clip)])
    with pytest.raises(translate.UsageError, match="gloss-to-text model .* --init_lm"):
        translate.load_model(args)


def test_g2t_evaluation_reloads_the_checkpoint_scores(g2t_run, labels_only_root, tmp_path,
                                                      in_process_trainer):
    saved = torch.load(g2t_run / "best_checkpoint.pth", weights_only=True)
    results = run(["--task", "G2T", *SHORT, *DECODE, "--data_root", str(labels_only_root),
                   "--eval", "--finetune", str(g2t_run / "best_checkpoint.pth"),
                   "--output_dir", str(tmp_path / "eval")])
    assert results["dev"]["bleu4"] == pytest.approx(saved["dev_bleu4"])
