"""translate.py through its command line, with a checkpoint trained briefly on the Demo set."""
import json
import os
import re
import subprocess
import sys

import pytest
import torch

import translate
from conftest import foreign_tokenizer_mt5
from datasets import S2T_Dataset, load_labels, read_pose
from mediapipe_pose import wholebody_to_holistic, write_pose

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ENV = {**os.environ, 'DS_ACCELERATOR': 'cpu', 'WANDB_MODE': 'disabled', 'OMP_NUM_THREADS': '1'}
BEAMS, BATCH = '2', '4'


def run(*cmd, timeout=300):
    return subprocess.run([sys.executable, *cmd], cwd=ROOT, env=ENV, capture_output=True,
                          text=True, timeout=timeout)


@pytest.fixture(scope='module')
def trained(demo_root, tmp_path_factory):
    """(output dir, demo root): two training steps, then the trainer's own dev/test evaluation."""
    out = tmp_path_factory.mktemp('translate') / 'run'
    proc = run('fine_tuning.py', '--dataset', 'Demo', '--data_root', demo_root,
               '--output_dir', str(out), '--batch-size', BATCH, '--gradient-accumulation-steps',
               '1', '--lr', '3e-3', '--epochs', '1', '--quick_break', '2', '--num_workers', '0',
               '--dtype', 'fp32', '--stgcn_channels', '8,16', '--hidden_dim', '16',
               '--temporal_layers', '1', '--max_length', '32', '--num_beams', BEAMS,
               '--max_new_tokens', '12', timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return out, demo_root


def trainer_predictions(out, phase='test'):
    pattern = re.compile(r'sample: (.*?), prediction: (.*)')
    with open(out / f'{phase}_tmp_pres.txt', encoding='utf-8') as f:
        return [pattern.fullmatch(line.rstrip('\n')).groups() for line in f]


def test_batches_equal_the_trainers_evaluation_batches(demo_root):
    demo = os.path.join(demo_root, 'Demo')
    dataset = S2T_Dataset(os.path.join(demo, 'labels.test'), os.path.join(demo, 'pose_format'),
                          'test', 'Demo', max_length=64)
    expected, _ = dataset.collate_fn([dataset[i] for i in range(5)])
    files = [(e['name'], dataset.pose_path(i)) for i, e in enumerate(dataset.entries[:5])]
    (names, _, batch), = translate.read_batches(files, 5, 64, None, False, [])
    assert names == expected['name_batch']
    for key in ('body', 'left', 'right', 'face_all', 'attention_mask'):
        assert torch.equal(batch[key], expected[key]), key
    assert len(set(batch['attention_mask'].sum(1).tolist())) > 1  # padded clips


def test_files_in_label_order_reproduce_the_trainers_predictions(trained, tmp_path):
    out, demo_root = trained
    demo = os.path.join(demo_root, 'Demo')
    entries = load_labels(os.path.join(demo, 'labels.test'))
    files = [os.path.join(demo, 'pose_format', e['pose_file']) for e in entries]
    proc = run('translate.py', '--checkpoint', str(out / 'best_checkpoint.pth'), *files,
               '--num_beams', BEAMS, '--batch_size', BATCH)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = [line.split('\t') for line in proc.stdout.splitlines()]
    expected = trainer_predictions(out)
    assert [name for name, _ in rows] == [name for name, _ in expected]
    assert [text for _, text in rows] == [' '.join(text.split()) for _, text in expected]
    assert 'translated 8 of 8 clips' in proc.stderr
    # Batch by batch (no pooled beam search) writes the same lines; so does a pool of 2 rows.
    for pool in ('0', '2'):
        again = run('translate.py', '--checkpoint', str(out / 'best_checkpoint.pth'), *files,
                    '--num_beams', BEAMS, '--batch_size', BATCH, '--decode_pool', pool)
        assert again.returncode == 0 and again.stdout == proc.stdout, again.stderr[-3000:]


def translate_here(capsys, *argv):
    """translate.main in this process (the CLI's own function), returning (stdout, stderr)."""
    capsys.readouterr()
    translate.main([str(a) for a in argv])
    captured = capsys.readouterr()
    return captured.out, captured.err


def test_exported_folder_translates_alone_as_jsonl(trained, tmp_path, capsys):
    out, demo_root = trained
    pose_dir = os.path.join(demo_root, 'Demo', 'pose_format')
    exported = tmp_path / 'exported'
    translate_here(capsys, '--checkpoint', out / 'best_checkpoint.pth', '--export', exported)
    assert {'translator.pth', 'translator.json', 'config.json', 'spiece.model'} <= set(
        os.listdir(exported))
    common = [pose_dir, '--batch_size', '3', '--format', 'jsonl']
    stdout, _ = translate_here(capsys, '--checkpoint', out / 'best_checkpoint.pth', *common)
    translate_here(capsys, '--model', exported, *common, '--output', tmp_path / 'out.jsonl')
    records = [json.loads(line) for line in stdout.splitlines()]
    assert len(records) == 64 and all(set(r) == {'name', 'file', 'text'} for r in records)
    assert records == [json.loads(line) for line in open(tmp_path / 'out.jsonl', encoding='utf-8')]
    assert records[0]['name'] == sorted(os.listdir(pose_dir))[0][:-len('.pkl')]


def test_pose_file_translates_like_its_pickle_and_bad_files_are_named(trained, tmp_path, capsys):
    out, demo_root = trained
    pkl = os.path.join(demo_root, 'Demo', 'pose_format', 'demo_test_00000.pkl')
    clip = read_pose(pkl)
    write_pose(wholebody_to_holistic(clip['keypoints'][:, 0], clip['scores'][:, 0], 800, 800,
                                     25.0), tmp_path / 'demo_test_00000.pose')
    (tmp_path / 'broken.pkl').write_bytes(b'not a pickle')
    checkpoint = ['--checkpoint', out / 'best_checkpoint.pth', '--batch_size', '1']

    stdout, _ = translate_here(capsys, *checkpoint, tmp_path / 'demo_test_00000.pose', pkl)
    (pose_name, pose_text), (pkl_name, pkl_text) = [l.split('\t') for l in stdout.splitlines()]
    assert pose_name == pkl_name == 'demo_test_00000' and pose_text == pkl_text

    with pytest.raises(translate.UsageError, match=r'broken\.pkl: unreadable pickle'):
        translate_here(capsys, *checkpoint, tmp_path)
    stdout, stderr = translate_here(capsys, *checkpoint, tmp_path, '--skip_bad_samples')
    assert [l.split('\t')[0] for l in stdout.splitlines()] == ['demo_test_00000']
    assert 'translated 1 of 2 clips, skipped 1 bad files' in stderr
    with pytest.raises(translate.UsageError, match=r'no_mt5.*--mt5_path'):
        translate_here(capsys, '--checkpoint', out / 'best_checkpoint.pth', '--mt5_path',
                       tmp_path / 'no_mt5', pkl)

    proc = run('translate.py', *map(str, checkpoint), str(tmp_path / 'missing.pkl'))
    assert proc.returncode != 0
    assert 'translate.py: error: ' in proc.stderr and 'missing.pkl: no such file' in proc.stderr


def test_damaged_checkpoints_and_exported_folders_are_named(trained, tmp_path, capsys):
    out, demo_root = trained
    pkl = os.path.join(demo_root, 'Demo', 'pose_format', 'demo_test_00000.pkl')
    with pytest.raises(translate.UsageError, match=re.escape(
            f'--checkpoint {out} is a folder, not a weight file')):
        translate_here(capsys, '--checkpoint', out, pkl)
    no_weights = tmp_path / 'epoch.pth'
    torch.save({'epoch': 3, 'args': {}}, no_weights)
    with pytest.raises(translate.ConfigError, match=re.escape(
            f'checkpoint {no_weights} holds no model weights')):
        translate_here(capsys, '--checkpoint', no_weights, '--mt5_path',
                       os.path.join(demo_root, 'Demo', 'mt5'), pkl)

    exported = tmp_path / 'exported'
    translate_here(capsys, '--checkpoint', out / 'best_checkpoint.pth', '--export', exported)
    (exported / 'translator.json').write_text('{"flags": ')
    with pytest.raises(translate.UsageError, match=re.escape(
            f'--model {exported}/translator.json cannot be read')):
        translate_here(capsys, '--model', exported, pkl)
    translate_here(capsys, '--checkpoint', out / 'best_checkpoint.pth', '--export', exported)
    (exported / 'config.json').write_text('{"d_model": 3')
    proc = run('translate.py', '--model', str(exported), pkl)
    assert proc.returncode == 1 and 'Traceback' not in proc.stderr
    assert f'translate.py: error: {exported}/config.json cannot be read as JSON' in proc.stderr


def test_a_tokenizer_that_cannot_read_the_prompt_stops_with_the_folder_named(trained, tmp_path,
                                                                             capsys):
    """--mt5_path to the Demo mT5 with a Greek tokenizer: the English prompt is mostly <unk>, so
    translate.py names the folder and the rate instead of translating from <unk>; --max_unk_rate 1
    lets it translate."""
    out, demo_root = trained
    mt5 = foreign_tokenizer_mt5(os.path.join(demo_root, 'Demo', 'mt5'), tmp_path / 'greek_mt5')
    pkl = os.path.join(demo_root, 'Demo', 'pose_format', 'demo_test_00000.pkl')
    proc = run('translate.py', '--checkpoint', str(out / 'best_checkpoint.pth'), '--mt5_path',
               mt5, pkl)
    assert proc.returncode == 1 and proc.stdout == ''
    error = proc.stderr.strip().splitlines()[-1]
    assert error.startswith(f'translate.py: error: the tokenizer in {mt5} maps ')
    assert "of the prompt' tokens to <unk> (--max_unk_rate 0.05)" in error
    assert 'Traceback' not in proc.stderr
    stdout, _ = translate_here(capsys, '--checkpoint', out / 'best_checkpoint.pth', '--mt5_path',
                               mt5, '--max_unk_rate', '1', pkl)
    assert stdout.startswith('demo_test_00000\t') and len(stdout.splitlines()) == 1


def test_a_tokenizer_larger_than_the_model_vocabulary_is_refused(trained, tmp_path):
    """A spiece.model with more pieces than the model has embeddings would feed ids past them."""
    import io
    import random
    import shutil

    import sentencepiece as spm
    out, demo_root = trained
    mt5 = tmp_path / 'wide_mt5'
    shutil.copytree(os.path.join(demo_root, 'Demo', 'mt5'), mt5)
    (mt5 / 'tokenizer.json').unlink(missing_ok=True)
    rng = random.Random(0)
    words = [''.join(rng.choice('abcdefghijklmnopqrstuvwxyz') for _ in range(rng.randint(2, 7)))
             for _ in range(3000)]
    sentences = [' '.join(words[i:i + 10]) for i in range(0, len(words), 10)]
    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(sentences), model_writer=model, vocab_size=600,
        model_type='unigram', pad_id=0, eos_id=1, unk_id=2, bos_id=-1, hard_vocab_limit=False,
        minloglevel=2)
    (mt5 / 'spiece.model').write_bytes(model.getvalue())
    pkl = os.path.join(demo_root, 'Demo', 'pose_format', 'demo_test_00000.pkl')
    proc = run('translate.py', '--checkpoint', str(out / 'best_checkpoint.pth'), '--mt5_path',
               str(mt5), pkl)
    assert proc.returncode == 1 and 'Traceback' not in proc.stderr
    assert re.search(rf'translate.py: error: the tokenizer in {re.escape(str(mt5))} has \d+ tokens '
                     r'but the mT5 model .*config.json has vocab_size \d+', proc.stderr)
