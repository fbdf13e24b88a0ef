"""Tests for flags: both spellings, one default per flag, and every flag acts or is refused.

The matrix runs every label format x task x head x regulariser x --init_encoder/--pose_positions
through the trainer's own parse and build: each combination either stops at parsing with
`error:` and the reason, or builds the run and trains one step in which the flag is seen acting.
"""
import itertools
import os

import pytest
import torch
from conftest import default_args, write_label_file

import config
import fine_tuning
import flags
import riemannian
import utils
from engine import move_to_device
from labels import load_labels
from models import CTCRecognizer, SignTranslator
from pose_encoder import ENCODER_PREFIXES, PoseEncoder

FORMAT_TASKS = {"unisign_pickle": ("SLT", "ISLR", "CSLR"), "news_json": ("SLT",),
                "stm": ("CSLR",), "corpus_csv": ("SLT", "CSLR")}
TASK_HEADS = [(task, head) for task in config.TASKS for head in ("generate", "ctc")]
REGULARIZERS = ("none", "signcl", "sst", "hyperbolic")
EXTRAS = ("none", "init_encoder", "pose_positions")
REGULARIZER_FLAGS = {"none": [], "signcl": ["--use_signcl"],
                     "sst": ["--use_sst", "--sst_num", "8", "--sst_dim", "8"],
                     "hyperbolic": ["--use_hyperbolic", "--hyp_dim", "8"]}
ENCODER = dict(stgcn_channels=[8, 16], hidden_dim=16, temporal_layers=1)
SMALL = ["--stgcn_channels", "8,16", "--hidden_dim", "16", "--temporal_layers", "1",
         "--max_length", "32", "--batch-size", "2", "--gradient-accumulation-steps", "1",
         "--num_workers", "0", "--dtype", "fp32"]


@pytest.fixture(scope="module")
def matrix_root(demo_root, tmp_path_factory):
    """One small split set per label format over the Demo poses, and an encoder checkpoint."""
    root = tmp_path_factory.mktemp("matrix")
    demo = {phase: load_labels(os.path.join(demo_root, "Demo", f"labels.{phase}"))
            for phase in config.PHASES}
    sizes = {"train": 6, "dev": 2, "test": 2}
    for label_format in FORMAT_TASKS:
        os.makedirs(root / label_format)
        if label_format == "news_json":  # one list; its held-out end is dev and test
            entries = [e for phase in config.PHASES for e in demo[phase][:sizes[phase]]]
            write_label_file(root / label_format / "labels.json", label_format, entries)
            continue
        for phase, size in sizes.items():
            write_label_file(root / label_format / f"labels.{phase}", label_format,
                             demo[phase][:size])
    torch.manual_seed(5)
    encoder = PoseEncoder(default_args(**ENCODER))
    with torch.no_grad():
        for parameter in encoder.parameters():
            parameter.add_(torch.rand_like(parameter))
    torch.save({"model": encoder.state_dict()}, root / "encoder.pth")
    return str(root)


def register_matrix(monkeypatch, matrix_root, demo_root, label_format):
    name = f"Matrix_{label_format}"
    if label_format == "news_json":
        labels = {phase: f"{label_format}/labels.json" for phase in config.PHASES}
    else:
        labels = {phase: f"{label_format}/labels.{phase}" for phase in config.PHASES}
    spec = config.DatasetSpec(labels=labels, label_format=label_format,
                              pose_dir=os.path.join(demo_root, "Demo", "pose_format"),
                              language="English", tasks=FORMAT_TASKS[label_format],
                              held_out=0.4 if label_format == "news_json" else 0.0)
    monkeypatch.setitem(config.DATASETS, name, spec)
    return name


def expected_refusal(label_format, task, head, regularizer, extra):
    """The flag the trainer must refuse for this combination, or None."""
    if task not in FORMAT_TASKS[label_format]:
        return "--task"
    if head == "ctc" and task != "CSLR":
        return "--head ctc"
    if head == "ctc" and regularizer in ("sst", "hyperbolic"):
        return f"--use_{regularizer}"
    if head == "ctc" and extra == "pose_positions":
        return "--pose_positions"
    return None


def train_one_step(args):
    """The trainer's build (paths, pre-scan, targets, model, engine) and one optimizer step."""
    utils.init_distributed(args)
    task, loaders, engine, hyp_optimizer, _ = fine_tuning.build_run(args)
    src, tgt = next(iter(loaders["train"]))
    engine.train()
    out = engine(move_to_device(src, args.device), move_to_device(tgt, args.device))
    riemannian.optimizer_step(engine, out["loss"], hyp_optimizer)
    return engine.module, out


@pytest.mark.parametrize("label_format,task_head,regularizer,extra", list(itertools.product(
    FORMAT_TASKS, TASK_HEADS, REGULARIZERS, EXTRAS)))
def test_every_combination_trains_or_is_refused(matrix_root, demo_root, tmp_path, monkeypatch,
                                                capsys, in_process_trainer, label_format,
                                                task_head, regularizer, extra):
    task, head = task_head
    dataset = register_matrix(monkeypatch, matrix_root, demo_root, label_format)
    argv = ["--dataset", dataset, "--data_root", matrix_root, "--task", task, "--head", head,
            "--output_dir", str(tmp_path), *SMALL, *REGULARIZER_FLAGS[regularizer]]
    argv += ["--ctc_hidden", "16"] if head == "ctc" else [
        "--mt5_path", os.path.join(demo_root, "Demo", "mt5")]
    if task == "CSLR" and head == "generate":  # the Demo tokenizer was trained on sentences
        argv += ["--max_unk_rate", "1"]
    argv += {"none": [], "pose_positions": ["--pose_positions", "sinusoidal"],
             "init_encoder": ["--init_encoder", os.path.join(matrix_root, "encoder.pth")]}[extra]
    refused = expected_refusal(label_format, task, head, regularizer, extra)
    if refused:
        with pytest.raises(SystemExit) as stop:
            flags.parse_args("fine_tuning.py", argv)
        assert stop.value.code == 2
        message = capsys.readouterr().err
        assert "error: " in message and refused in message, message
        return
    model, out = train_one_step(flags.parse_args("fine_tuning.py", argv))
    assert torch.isfinite(out["loss"])
    assert isinstance(model, CTCRecognizer if head == "ctc" else SignTranslator)
    logged = {**out, **out.get("stats", {})}
    for name in ("signcl", "sst", "hyp"):
        acting = regularizer == name or (regularizer == "hyperbolic" and name == "hyp")
        assert (f"{name}_loss" in logged) == acting, (name, sorted(logged))
    if regularizer == "hyperbolic":
        assert float(out["loss"]) != pytest.approx(float(out["ce_loss"]))
    if extra == "pose_positions":
        assert model.pose_positions == "sinusoidal"
    if extra == "init_encoder":
        saved = torch.load(os.path.join(matrix_root, "encoder.pth"), weights_only=True)["model"]
        # one step moved the weights a little from the loaded ones, far less than the +U(0,1)
        # that separates them from a fresh initialisation
        state = model.state_dict()
        weights = [k for k in saved if k.startswith(ENCODER_PREFIXES) and k.endswith("weight")]
        assert weights and all((state[k] - saved[k]).abs().max() < 0.1 for k in weights)


# ----------------------------------------------------------------------------- single rules

def refusal(argv, capsys):
    with pytest.raises(SystemExit) as stop:
        flags.parse_args("fine_tuning.py", argv)
    assert stop.value.code == 2
    return capsys.readouterr().err


@pytest.mark.parametrize("argv,reason", [
    (["--opt", "sgd", "--adam_kernel", "loop"], "--adam_kernel is an Adam setting; --opt is sgd"),
    (["--offload", "--adam_kernel", "foreach"], "--adam_kernel picks torch's Adam; --offload"),
    (["--online_video", "clip.mp4"], "--online_video: fine_tuning.py does not translate videos; translate.py does"),
    (["--world_size", "4"], "launcher"), (["--dist_url", "tcp://x:1"], "launcher"),
    (["--alpha_reg", "0.1"], "never reads it"), (["--max_eval_samples", "9"], "never reads it"),
    (["--alpha", "0.5"], "add --use_hyperbolic"), (["--signcl_weight", "0.1"], "add --use_signcl"),
    (["--sst_num", "4"], "add --use_sst"), (["--save_one_batch"], "add --use_hyperbolic"),
    (["--ctc_beam", "4"], "needs --task CSLR --head ctc"),
    (["--task", "ISLR", "--head", "ctc"], "--head ctc recognises gloss sequences"),
    (["--task", "CSLR", "--head", "ctc", "--num_beams", "2"], "--num_beams acts on mT5"),
    (["--min-lr", "1e-6", "--sched", "linear"], "no floor"),
    (["--lr_steps", "3,5"], "--sched multistep"),
    (["--sched", "multistep", "--warmup-epochs", "1"], "no warm-up"),
    (["--opt", "sgd", "--opt-eps", "1e-8"], "Adam setting"), (["--momentum", "0.8"], "SGD setting"),
    (["--clip_grad_norm_euclid", "2"], "--manual_grad_clip"),
    (["--wandb_project", "p"], "add --wandb"), (["--save_every_steps", "5"], "--output_dir"),
    (["--num_beams", "1", "--decode_pool", "8"], "greedily"),
    (["--compute_fp32_loss", "--dtype", "fp32"], "float32 already"),
    (["--dataset", "Nowhere"], "--dataset Nowhere: unknown"),
    (["--dataset", "WLASL", "--task", "SLT"], "support ISLR"),
    (["--rgb_support"], "pose-only"),
    (["--overwrite"], "--overwrite writes into the output folder: add --output_dir"),
    (["--overwrite", "--eval", "--output_dir", "x"], "--eval trains none"),
])
def test_flags_that_cannot_act_are_refused_with_the_reason(argv, reason, capsys):
    message = refusal(argv, capsys)
    assert message.startswith("fine_tuning.py: error: ") and reason in message, message


def test_every_reason_is_reported_at_once(capsys):
    message = refusal(["--world_size", "2", "--alpha", "0.5", "--ctc_beam", "3"], capsys)
    assert "--world_size" in message and "--alpha" in message and "--ctc_beam" in message


def test_defaults_and_flags_that_act_parse():
    args = flags.parse_args("t", [])
    assert args.alpha is None and args.min_lr is None and args.online_video is None
    assert flags.parse_args("t", ["--use_hyperbolic", "--alpha", "0.6"]).alpha == 0.6
    assert flags.parse_args("t", ["--sched", "multistep", "--lr_steps", "3,5"]).lr_steps == [3, 5]
    assert flags.parse_args("t", ["--min_lr", "1e-6"]).min_lr == 1e-6
    assert flags.parse_args("t", ["--opt", "sgd", "--momentum", "0.5"]).momentum == 0.5
    ctc = flags.parse_args("t", ["--task", "CSLR", "--head", "ctc", "--use_signcl",
                                 "--ctc_beam", "5"])
    assert ctc.use_signcl and ctc.ctc_beam == 5


def test_explicit_flags_sees_both_spellings_and_no_defaults():
    parser = flags.get_args_parser()
    given = flags.explicit_flags(parser, ["--batch_size", "3", "--min-lr", "1e-6", "--use_sst"])
    assert given == {"batch_size", "min_lr", "use_sst"}
    assert parser.parse_args([]).batch_size == 16  # the defaults are restored


def test_min_lr_floors_the_cosine_schedule():
    args = flags.parse_args("t", ["--epochs", "1", "--min-lr", "0.25", "--lr", "1.0",
                                  "--gradient-accumulation-steps", "1"])
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    scheduler = utils.create_scheduler(args, optimizer, steps_per_epoch=10)
    for _ in range(10):
        optimizer.step()
        scheduler.step()
    assert optimizer.param_groups[0]["lr"] == pytest.approx(0.25)


def test_multistep_schedule_for_any_head():
    args = flags.parse_args("t", ["--epochs", "4", "--sched", "multistep", "--lr_steps", "1,3",
                                  "--gradient-accumulation-steps", "1"])
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    scheduler = utils.create_scheduler(args, optimizer, steps_per_epoch=2)
    rates = []
    for _ in range(8):
        rates.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    assert rates == pytest.approx([1, 1, .2, .2, .2, .2, .04, .04])


def test_compute_fp32_loss_acts_under_half_precision(tiny_mt5_dir):
    args = default_args(mt5_path=tiny_mt5_dir, dataset="How2Sign", compute_fp32_loss=True,
                        **ENCODER)
    model = SignTranslator(args).to(torch.bfloat16)
    src = {part: torch.rand(2, 6, joints, 3, dtype=torch.bfloat16)
           for part, joints in {"body": 9, "left": 21, "right": 21, "face_all": 18}.items()}
    src["attention_mask"] = torch.ones(2, 6, dtype=torch.long)
    out = model(src, {"gt_sentence": ["a b", "c"]})
    assert out["loss"].dtype == torch.float32
    model.compute_fp32_loss = False
    assert model(src, {"gt_sentence": ["a b", "c"]})["loss"].dtype == torch.bfloat16


def test_every_parser_flag_is_read_somewhere():
    """No flag is parsed and never read: each dest appears in the code outside its definition."""
    import glob
    import re
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    code = "\n".join(open(p, encoding="utf-8").read() for p in glob.glob(os.path.join(root, "*.py")))
    unread = [action.dest for action in flags.get_args_parser()._actions
              if action.dest != "help" and not re.search(
                  rf"(?<![-\w])[\"']?{action.dest}\b", code)
              and action.dest not in flags.NEVER_READ]
    assert not unread, unread


@pytest.mark.parametrize("argv,reason", [
    (["--opt-betas", "0.9"], "--opt-betas takes two values"),
    (["--epochs", "2", "--warmup-epochs", "3"], "longer than --epochs 2"),
    (["--lr", "1e-4", "--min-lr", "1e-3"], "--min-lr 0.001 must be below --lr 0.0001"),
    (["--task", "CSLR", "--head", "ctc", "--max_length", "15"], "at least 16 frames"),
])
def test_values_that_cannot_work_together_are_refused(argv, reason, capsys):
    message = refusal(argv, capsys)
    assert message.startswith("fine_tuning.py: error: ") and reason in message, message


def test_values_at_their_limits_parse():
    args = flags.parse_args("t", ["--epochs", "2", "--warmup-epochs", "2", "--opt-betas", "0",
                                  "0.99", "--task", "CSLR", "--head", "ctc", "--max_length", "16"])
    assert args.opt_betas == [0.0, 0.99] and args.max_length == flags.CTC_MIN_FRAMES


@pytest.mark.parametrize("argv, reason", [
    (["--offload", "--zero_stage", "0"], "--zero_stage 0 has no ZeRO optimizer"),
    (["--offload", "--opt", "sgd"], "--opt sgd has no CPU version"),
    (["--gradient_checkpointing", "--eval"], "--eval trains none"),
])
def test_deepspeed_options_are_refused_where_they_cannot_act(argv, reason, capsys):
    with pytest.raises(SystemExit):
        flags.parse_args("fine_tuning.py", argv)
    err = capsys.readouterr().err
    assert f"error: {argv[0]}" in err and reason in err


def test_offload_is_accepted_from_zero_stage_1():
    for stage in ("1", "2", "3"):
        assert flags.parse_args("fine_tuning.py", ["--offload", "--zero_stage", stage]).offload
