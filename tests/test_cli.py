"""cli.py and the command lines built with it: every flag in its dash and underscore spelling."""
import argparse
import os
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
    cli.add_flag(parser, '--batch-size', type=int, default=8)
    assert parser.parse_args([]).batch_size == 8
    assert parser.parse_args(['--batch-size', '3']).batch_size == 3
    assert parser.parse_args(['--batch_size', '4']).batch_size == 4


def test_add_flag_takes_dest_from_the_first_name():
    parser = argparse.ArgumentParser()
    cli.add_flag(parser, '--max_length', '--frames', type=int)
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
    ('pack_poses.py', ['--pose_dir', '--pose-dir', '--verify_only', '--verify-only']),
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
