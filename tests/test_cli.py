"""cli.py and the command lines built with it: every flag in its dash and underscore spelling,
every numeric flag range-checked at parse time."""
import argparse
import contextlib
import glob
import io
import os
import re
import runpy
import subprocess
import sys

import pytest

import cli

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_spellings_of_one_name():
    assert cli.spellings('--batch-size') == ['--batch-size', '--batch_size']
    assert cli.spellings('--max_length') == ['--max_length', '--max-length']
    assert cli.spellings('--out') == ['--out']


def test_spellings_of_several_names_have_no_repeats():
    assert cli.spellings('--n_dev', '--n-dev', '--dev') == ['--n_dev', '--n-dev', '--dev']


def test_add_flag_accepts_both_spellings_under_one_dest():
    parser = argparse.ArgumentParser()
    cli.add_flag(parser, '--batch-size', type=cli.count, default=8)
    assert parser.parse_args([]).batch_size == 8
    assert parser.parse_args(['--batch-size', '3']).batch_size == 3
    assert parser.parse_args(['--batch_size', '4']).batch_size == 4


def test_add_flag_takes_dest_from_the_first_name():
    parser = argparse.ArgumentParser()
    cli.add_flag(parser, '--max_length', '--frames', type=cli.count)
    for flag in ('--max_length', '--max-length', '--frames'):
        assert parser.parse_args([flag, '5']).max_length == 5


def test_add_flag_keeps_an_explicit_dest():
    parser = argparse.ArgumentParser()
    cli.add_flag(parser, '--no-resume', dest='resume', action='store_false')
    assert parser.parse_args([]).resume
    assert not parser.parse_args(['--no_resume']).resume


def test_add_flag_passes_positionals_and_short_options_through():
    parser = argparse.ArgumentParser()
    cli.add_flag(parser, 'inputs', nargs='*')
    cli.add_flag(parser, '--output-file', '-o')
    args = parser.parse_args(['a', 'b', '-o', 'x'])
    assert args.inputs == ['a', 'b'] and args.output_file == 'x'
    assert parser.parse_args(['--output_file', 'y']).output_file == 'y'


def test_add_flag_in_a_mutually_exclusive_group():
    parser = argparse.ArgumentParser()
    group = parser.add_mutually_exclusive_group(required=True)
    cli.add_flag(group, '--model-dir')
    cli.add_flag(group, '--checkpoint_file')
    assert parser.parse_args(['--model_dir', 'm']).model_dir == 'm'
    assert parser.parse_args(['--checkpoint-file', 'c']).checkpoint_file == 'c'
    with pytest.raises(SystemExit):
        parser.parse_args(['--model-dir', 'm', '--checkpoint_file', 'c'])


def test_int_list():
    assert cli.int_list('64,128,256') == [64, 128, 256]
    assert cli.int_list('64 128 256') == [64, 128, 256]
    assert cli.int_list('8, 16') == [8, 16]
    assert cli.int_list(32) == [32]


def test_translate_flags_in_both_spellings():
    import translate
    dashed = translate.parse_args(['clip.pkl', '--checkpoint', 'c.pth', '--batch-size', '2',
                                   '--max-length', '9', '--stgcn-channels', '8,16',
                                   '--skip-bad-samples', '--device', 'cpu'])
    underscored = translate.parse_args(['clip.pkl', '--checkpoint', 'c.pth', '--batch_size', '2',
                                        '--max_length', '9', '--stgcn_channels', '8,16',
                                        '--skip_bad_samples', '--device', 'cpu'])
    assert vars(dashed) == vars(underscored)
    assert dashed.batch_size == 2 and dashed.max_length == 9
    assert dashed.stgcn_channels == [8, 16] and dashed.skip_bad_samples


def test_translate_checkpoint_and_model_stay_exclusive():
    import translate
    with pytest.raises(SystemExit):
        translate.parse_args(['clip.pkl', '--checkpoint', 'c.pth', '--model', 'm'])
    assert translate.parse_args(['--model', 'm', '--export', 'e']).model == 'm'


def test_slrt_metrics_flags_in_both_spellings():
    import SLRT_metrics
    for flag in ('--merge-same', '--merge_same'):
        args = SLRT_metrics.parse_args(['--refs', 'r.txt', '--hyps', 'h.txt', flag])
        assert args.merge_same and args.refs == 'r.txt' and args.hyps == 'h.txt'
    assert not SLRT_metrics.parse_args(['--refs', 'r', '--hyps', 'h']).merge_same


def test_mediapipe_pose_flags_in_both_spellings():
    import mediapipe_pose
    base = ['--input', 'a.pkl', '--out', 'o', '--to', 'pose']
    dashed = mediapipe_pose.parse_args(base + ['--pickle-units', 'frame', '--source-fps', '30'])
    underscored = mediapipe_pose.parse_args(base + ['--pickle_units', 'frame',
                                                    '--source_fps', '30'])
    assert vars(dashed) == vars(underscored)
    assert dashed.pickle_units == 'frame' and dashed.source_fps == 30.0


SCRIPT_FLAGS = [
    ('plot_run.py', ['folders', '--out']),
    ('plot_poincare.py', ['--input', '--out', '--projection']),
    ('render_pose.py', ['pose_file', '--out', '--frames', '--fps']),
    ('make_phoenix_demo.py', ['--n_train', '--n-train', '--n_test', '--n-test']),
    ('make_fingerspelling_demo.py', ['--n_dev', '--n-dev', '--lexicon', '--score']),
]


@pytest.mark.parametrize('script, flags', SCRIPT_FLAGS, ids=[s for s, _ in SCRIPT_FLAGS])
def test_script_help_lists_both_spellings(script, flags):
    env = {**os.environ, 'OMP_NUM_THREADS': '1', 'MPLBACKEND': 'Agg'}
    proc = subprocess.run([sys.executable, os.path.join('script', script), '--help'], cwd=ROOT,
                          env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    for flag in flags:
        assert flag in proc.stdout, (flag, proc.stdout)


# ----------------------------------------------------------------------------- help layout

def help_parser():
    parser = cli.ArgumentParser(prog='tool.py')
    group = parser.add_argument_group('sizes')
    cli.add_flag(group, '--batch-size', type=cli.count, default=8, help='clips per batch')
    cli.add_flag(group, '--widths', type=cli.count_list, default=[8, 16], help='layer widths')
    cli.add_flag(group, '--lr', type=cli.positive, default=1e-3, help='learning rate')
    cli.add_flag(group, '--out_dir', default=None, help='where to write')
    cli.add_flag(group, '--name', default='', help='a name')
    cli.add_flag(group, '--fast', action='store_true', help='go fast')
    cli.add_flag(group, '--n_dev', '--dev', type=cli.count, default=3, help='dev clips')
    cli.add_flag(group, '--share_head', action=argparse.BooleanOptionalAction, default=True,
                 help='one head')
    cli.add_flag(group, '--beams', type=cli.count, help='width (default: the checkpoint\'s)')
    return parser


def test_help_lists_one_spelling_with_its_default():
    text = help_parser().format_help()
    assert 'sizes:' in text
    assert '--batch-size N' in text and '--batch_size' not in text
    assert 'clips per batch (default: 8)' in text
    assert 'layer widths (default: 8,16)' in text and 'learning rate (default: 0.001)' in text
    assert '--n_dev N, --dev N' in text and '--n-dev' not in text
    assert '--share_head, --no-share_head' in text and 'share-head' not in text
    assert 'one head (default: on)' in text
    assert "width (default: the checkpoint's)" in text
    assert 'default: None' not in text and 'default: False' not in text
    assert 'default: )' not in text


def test_hidden_spellings_still_parse():
    parser = help_parser()
    for argv in (['--batch_size', '3'], ['--batch-size', '3']):
        assert parser.parse_args(argv).batch_size == 3
    assert parser.parse_args(['--n-dev', '4']).n_dev == 4
    assert parser.parse_args(['--no-share-head']).share_head is False


def entry_point_parser(entry_point, monkeypatch):
    """The parser an entry point builds for `--help`, caught as it parses."""
    caught = []

    def catch(self, args=None, namespace=None):
        caught.append(self)
        raise SystemExit(0)
    monkeypatch.setattr(argparse.ArgumentParser, 'parse_args', catch)
    monkeypatch.setattr(sys, 'argv', [entry_point])
    with pytest.raises(SystemExit):
        runpy.run_path(os.path.join(ROOT, entry_point), run_name='__main__')
    return caught[0]


HELP_ENTRY_POINTS = ['fine_tuning.py', 'pretraining.py', 'translate.py', 'script/check_data.py',
                     'script/pack_poses.py']


@pytest.mark.parametrize('entry_point', HELP_ENTRY_POINTS)
def test_entry_point_help_is_grouped_and_complete(entry_point, monkeypatch):
    """Every flag has a help text and sits under a topic heading; each is listed in one
    spelling; the other spelling still parses to the same dest; no '(default: None)'."""
    parser = entry_point_parser(entry_point, monkeypatch)
    text = parser.format_help()
    assert 'default: None' not in text and 'default: False' not in text
    groups = [g for g in parser._action_groups if g.title not in ('options', 'positional arguments')]
    assert len(groups) >= 2, entry_point
    for action in parser._actions:
        if not action.option_strings or action.dest == 'help':
            continue
        assert action.help, f'{entry_point}: {action.option_strings[0]} has no help'
        assert any(action in g._group_actions for g in groups), action.option_strings[0]
        for option in getattr(action, 'hidden_spellings', ()):
            assert not listed(option, text), option
            assert parser._option_string_actions[option] is action
        assert listed(action.option_strings[0], text), action.option_strings[0]


def listed(option, text):
    """Whether `option` heads a line of the help's flag list."""
    return re.search(rf'^  (\S+( [A-Z_.,]+)?, )*{re.escape(option)}( |,|$)', text, re.M) is not None


def test_trainer_help_shows_stage1_defaults_for_pretraining(monkeypatch):
    text = entry_point_parser('pretraining.py', monkeypatch).format_help()
    assert 'peak learning rate (default: 0.0003)' in text
    assert 'registered dataset:' in text and '(default: CSL_News)' in text


# ----------------------------------------------------------------------------- ranged types

@pytest.mark.parametrize('kind, text, value', [
    (cli.count, '3', 3), (cli.non_negative_int, '0', 0), (cli.seed, '4294967295', 2**32 - 1),
    (cli.positive, '1e-4', 1e-4), (cli.non_negative, '0', 0.0), (cli.fraction, '0.999', 0.999),
    (cli.finite, '-2.5', -2.5), (cli.odd_count, '5', 5), (cli.count_list, '8,16', [8, 16]),
])
def test_ranged_types_accept_values_in_range(kind, text, value):
    assert kind(text) == value


@pytest.mark.parametrize('kind, text, expected', [
    (cli.count, '0', 'an integer >= 1'), (cli.count, '-3', 'an integer >= 1'),
    (cli.count, '2.5', "got '2.5'"), (cli.count, 'many', "got 'many'"),
    (cli.non_negative_int, '-1', '>= 0'), (cli.seed, '-1', '>= 0'), (cli.seed, '4294967296', '<='),
    (cli.positive, '0', '> 0'), (cli.positive, '-1e-3', '> 0'), (cli.positive, 'nan', 'finite'),
    (cli.positive, 'inf', 'finite'), (cli.non_negative, '-0.1', '>= 0'),
    (cli.fraction, '1', '< 1'), (cli.fraction, '-0.1', '>= 0'), (cli.finite, '-inf', 'finite'),
    (cli.odd_count, '4', 'odd'), (cli.count_list, '8,0', '>= 1'), (cli.count_list, '', '>= 1'),
    (cli.count_list, '8,x', 'integers'),
])
def test_ranged_types_refuse_values_out_of_range(kind, text, expected):
    with pytest.raises(argparse.ArgumentTypeError, match=expected):
        kind(text)


def test_add_flag_refuses_a_bare_numeric_type():
    parser = argparse.ArgumentParser()
    for bare in (int, float):
        with pytest.raises(TypeError, match='ranged type'):
            cli.add_flag(parser, '--size', type=bare)
    cli.add_flag(parser, '--stage', type=int, choices=[0, 1, 2])  # choices bound it already


def test_parser_error_is_one_line_naming_the_flag(capsys):
    parser = cli.ArgumentParser(prog='tool.py')
    cli.add_flag(parser, '--batch-size', type=cli.count, default=8)
    with pytest.raises(SystemExit) as stop:
        parser.parse_args(['--batch_size', '0'])
    assert stop.value.code == 2
    err = capsys.readouterr().err
    assert err.strip().splitlines() == [
        'tool.py: error: argument --batch-size/--batch_size: expected an integer >= 1, got 0 '
        '(see --help)']


def command_lines():
    """Every file of the product that runs as a command (it has a __main__ block)."""
    found = []
    for folder in ('', 'script', 'bench', 'demo'):
        for path in sorted(glob.glob(os.path.join(ROOT, folder, '*.py'))):
            with open(path, encoding='utf-8') as f:
                if "__name__ == '__main__'" in f.read().replace('"', "'"):
                    found.append(os.path.relpath(path, ROOT))
    return found


ENTRY_POINTS = command_lines()


@pytest.mark.parametrize('entry_point', ENTRY_POINTS)
def test_every_numeric_flag_of_every_command_line_is_ranged(entry_point, monkeypatch):
    """Runs the command line's --help and records every option it registers: none may take a
    bare int or float (those accept 0, negatives, nan and inf without a word)."""
    numeric = []
    original = argparse._ActionsContainer.add_argument

    def recording(self, *names, **kwargs):
        if kwargs.get('type') in (int, float) and 'choices' not in kwargs:
            numeric.append(names[0])
        return original(self, *names, **kwargs)
    monkeypatch.setattr(argparse._ActionsContainer, 'add_argument', recording)
    monkeypatch.setattr(sys, 'argv', [entry_point, '--help'])
    monkeypatch.setenv('MPLBACKEND', 'Agg')
    with pytest.raises(SystemExit) as stop, contextlib.redirect_stdout(io.StringIO()) as shown:
        if entry_point.startswith('demo/'):  # run as python -m demo.NAME
            runpy.run_module(entry_point[:-3].replace('/', '.'), run_name='__main__')
        else:
            runpy.run_path(os.path.join(ROOT, entry_point), run_name='__main__')
    assert stop.value.code in (0, None) and 'usage' in shown.getvalue(), entry_point
    assert numeric == [], f'{entry_point}: unranged numeric flags {numeric}'


TRAINER_BAD_VALUES = [
    ('--batch-size', '0'), ('--batch_size', '-2'), ('--gradient-accumulation-steps', '0'),
    ('--epochs', '0'), ('--lr', 'nan'), ('--lr', '0'), ('--lr', '-1e-3'), ('--lr', 'inf'),
    ('--min-lr', '-1'), ('--warmup-epochs', '-1'), ('--weight-decay', 'nan'),
    ('--gradient-clipping', '-1'), ('--clip-grad', 'inf'), ('--opt-eps', '0'),
    ('--opt-betas', '1.5'), ('--momentum', '1'), ('--label_smoothing', '1'),
    ('--max_length', '0'), ('--max_tgt_len', '1'), ('--max_new_tokens', '0'),
    ('--num_beams', '0'), ('--decode_pool', '-1'), ('--num_workers', '-1'), ('--seed', '-1'),
    ('--print_freq', '0'), ('--eval_every', '0'), ('--keep_last', '-1'),
    ('--save_every_steps', '-5'), ('--quick_break', '-1'), ('--max_nonfinite', '-1'),
    ('--hidden_dim', '0'), ('--stgcn_channels', '0,32'), ('--temporal_layers', '0'),
    ('--temporal_kernel', '4'), ('--pose_fps', '0'), ('--ctc_hidden', '0'), ('--ctc_beam', '0'),
    ('--lr_steps', '0,5'), ('--signcl_weight', '-1'), ('--signcl_pos_samples', '3'),
    ('--sst_temperature', '0'), ('--sst_num', '0'), ('--hyp_dim', '1'), ('--init_c', '0'),
    ('--hyp_lr', 'nan'), ('--alpha', 'nan'), ('--label_smoothing_hyp', '1'),
    ('--clip_grad_norm_hyp', '0'), ('--world_size', '0'),
]


@pytest.mark.parametrize('flag, value', TRAINER_BAD_VALUES)
def test_trainer_refuses_out_of_range_values_naming_the_flag(flag, value, capsys):
    import flags
    with pytest.raises(SystemExit) as stop:
        flags.parse_args('fine_tuning.py', [flag, value])
    err = capsys.readouterr().err
    assert stop.value.code == 2
    assert err.startswith('fine_tuning.py: error: argument ') and flag in err, err
    assert len(err.strip().splitlines()) == 1, err


@pytest.mark.parametrize('argv', [
    ['clip.pkl', '--checkpoint', 'c.pth', '--batch_size', '0'],
    ['clip.pkl', '--checkpoint', 'c.pth', '--num_beams', '0'],
    ['clip.pkl', '--checkpoint', 'c.pth', '--fps', 'nan'],
    ['clip.pkl', '--checkpoint', 'c.pth', '--max_length', '-1'],
    ['clip.pkl', '--checkpoint', 'c.pth', '--temporal_kernel', '2'],
])
def test_translate_refuses_out_of_range_values(argv, capsys):
    import translate
    with pytest.raises(SystemExit) as stop:
        translate.parse_args(argv)
    assert stop.value.code == 2 and 'error: argument ' + argv[3] in capsys.readouterr().err


def test_out_of_range_value_stops_the_trainer_before_anything_is_read(tmp_path):
    """Through the real command line: one error line, exit status 2, no traceback."""
    env = {**os.environ, 'DS_ACCELERATOR': 'cpu', 'WANDB_MODE': 'disabled'}
    proc = subprocess.run([sys.executable, 'fine_tuning.py', '--dataset', 'Demo',
                           '--data_root', str(tmp_path / 'missing'), '--lr', 'nan'],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2
    assert 'Traceback' not in proc.stderr and 'missing' not in proc.stderr
    assert 'error: argument --lr: expected a finite number > 0, got nan' in proc.stderr
