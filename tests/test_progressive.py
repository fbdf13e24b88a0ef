"""progressive.py: the flags of the G2T stage and of the initialised translation act or are
refused at parsing, before any model is built."""
import pytest

import flags


def refused(argv, capsys):
    with pytest.raises(SystemExit) as stop:
        flags.parse_args("fine_tuning.py", argv)
    assert stop.value.code == 2
    return capsys.readouterr().err


@pytest.mark.parametrize("extra, reason", [
    (["--max_length", "64"], "--max_length acts on poses or the pose encoder"),
    (["--pose_root", "x"], "--pose_root acts on poses"),
    (["--stgcn_channels", "8,16", "--hidden_dim", "16"], "--stgcn_channels acts on poses"),
    (["--init_encoder", "ctc.pth"], "--init_encoder acts on poses"),
    (["--mapper", "mlp"], "--mapper acts on poses"),
    (["--pose_positions", "sinusoidal"], "--pose_positions acts on poses"),
    (["--hands_batch", "on"], "--hands_batch acts on poses"),
    (["--embed_once", "off"], "--embed_once: --task G2T computes its loss"),
    (["--init_lm", "g2t.pth"], "continue from a G2T checkpoint with --finetune"),
    (["--use_signcl"], "--use_signcl: its regulariser reads pose features"),
])
def test_g2t_refuses_pose_flags(extra, reason, capsys):
    assert reason in refused(["--task", "G2T", "--dataset", "PhoenixTDemo", *extra], capsys)


def test_g2t_needs_labels_with_glosses_and_sentences(capsys):
    err = refused(["--task", "G2T", "--dataset", "CSL_News"], capsys)
    assert "--task G2T: the labels of --dataset CSL_News support SLT" in err
    for dataset in ("CSL_Daily", "PHOENIX2014T", "PhoenixTDemo", "Demo"):
        assert flags.parse_args("fine_tuning.py", ["--task", "G2T", "--dataset", dataset]).task \
            == "G2T"


def test_translation_flags_refused_where_they_cannot_act(capsys):
    ctc = ["--task", "CSLR", "--head", "ctc", "--dataset", "PhoenixTDemo"]
    err = refused([*ctc, "--mapper", "mlp", "--init_lm", "g.pth"], capsys)
    assert "--mapper acts on mT5" in err and "--init_lm acts on mT5" in err
    err = refused(["--init_lm", "g.pth", "--finetune", "f.pth"], capsys)
    assert "--finetune already loads the whole model" in err
    args = flags.parse_args("fine_tuning.py", ["--mapper", "mlp", "--init_lm", "g.pth",
                                               "--init_encoder", "c.pth"])
    assert (args.mapper, args.init_lm, args.init_encoder) == ("mlp", "g.pth", "c.pth")
    assert flags.parse_args("fine_tuning.py", []).mapper == "linear"
