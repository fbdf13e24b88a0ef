"""translate.py through its command line, with a checkpoint trained briefly on the Demo set."""
import json
import os
import re
import subprocess
import sys

import pytest
import torch

import model_export
import mt5_layout
import translate
from conftest import foreign_tokenizer_mt5, trainer_predictions
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


def test_batches_equal_the_trainers_evaluation_batches(demo_root):
    demo = os.path.join(demo_root, 'Demo')
    dataset = S2T_Dataset(os.path.join(demo, 'labels.test'), os.path.join(demo, 'pose_format'),
                          'test', 'Demo', max_length=64)
    expected, _ = dataset.collate_fn([dataset[i] for i in range(5)])
    files = [(dataset.entries[i]['name'], dataset.pose_path(i)) for i in range(5)]
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
    assert {'model.safetensors', 'config.json', 'README.md', 'spiece.model', 'tokenizer.json',
            'tokenizer_config.json'} <= set(os.listdir(exported))
    common = [pose_dir, '--batch_size', '3', '--format', 'jsonl']
    stdout, _ = translate_here(capsys, '--checkpoint', out / 'best_checkpoint.pth', *common)
    translate_here(capsys, '--model', exported, *common, '--output', tmp_path / 'out.jsonl')
    records = [json.loads(line) for line in stdout.splitlines()]
    assert len(records) == 64 and all(set(r) == {'name', 'file', 'text'} for r in records)
    assert records == [json.loads(line) for line in open(tmp_path / 'out.jsonl', encoding='utf-8')]
    assert records[0]['name'] == sorted(os.listdir(pose_dir))[0][:-len('.pkl')]


@pytest.fixture(scope='module')
def loud(trained, tmp_path_factory):
    """(checkpoint, demo root): the trained run's flags and file with a freshly built model whose
    pose projection keeps only what differs between clips, louder, so that the clips get
    different tokens (two steps of training give every clip the same text); the Demo mT5's
    output layer is apart from its embedding, with other values."""
    from models import SignTranslator, get_requires_grad_dict
    out, demo_root = trained
    saved = torch.load(out / 'best_checkpoint.pth', weights_only=True)
    torch.manual_seed(0)
    model = SignTranslator(model_export.model_flags(saved['args'])).eval()
    with torch.no_grad():
        common = model.encode_pose(demo_batch(demo_root)).mean((0, 1))
        model.pose_proj.weight.mul_(100)
        model.pose_proj.bias.copy_(-model.pose_proj.weight @ common)
    path = tmp_path_factory.mktemp('loud') / 'loud.pth'
    torch.save({**saved, 'model': get_requires_grad_dict(model)}, path)
    return path, demo_root


def test_export_keeps_the_untied_output_layer_token_for_token(loud, tmp_path, capsys):
    """A checkpoint with mt5-base's layout (lm_head apart from shared, with other values): the
    exported folder stores both, reloads untied, and generates the checkpoint's tokens; mT5 tied
    from its config (the reload this replaces) would not."""
    from safetensors import safe_open
    path, demo_root = loud
    saved = torch.load(path, weights_only=True)['model']
    assert not torch.equal(saved['mt5_model.shared.weight'], saved['mt5_model.lm_head.weight'])
    exported = tmp_path / 'exported'
    translate_here(capsys, '--checkpoint', path, '--export', exported)
    with safe_open(exported / 'model.safetensors', 'pt') as f:
        for key in ('mt5_model.shared.weight', 'mt5_model.lm_head.weight'):
            assert torch.equal(f.get_tensor(key), saved[key]), key
    with open(exported / 'config.json', encoding='utf-8') as f:
        description = json.load(f)
    assert description['flags']['stgcn_channels'] == [8, 16] and description['head'] == 'translator'
    assert description['mt5']['tie_word_embeddings'] is False
    original, _, _ = translate.load_model(translate.parse_args(['--checkpoint', str(path), 'x']))
    reloaded, _, info = model_export.load_exported(str(exported))
    assert info['epoch'] == 0 and not mt5_layout.is_tied(reloaded.mt5_model)
    batch = demo_batch(demo_root)
    expected = original.eval().generate(batch, max_new_tokens=12, num_beams=2)
    assert torch.equal(reloaded.eval().generate(batch, max_new_tokens=12, num_beams=2), expected)
    assert len({tuple(row.tolist()) for row in expected}) > 1  # the clips get different tokens
    mt5_layout.set_tied(reloaded.mt5_model, True)
    tied = reloaded.generate(batch, max_new_tokens=12, num_beams=2)
    assert tied.shape != expected.shape or not torch.equal(tied, expected)
    card = (exported / 'README.md').read_text(encoding='utf-8')
    assert card.startswith('---\n') and 'library_name: signpose' in card
    assert 'dataset: Demo' in card and '| dev_bleu4 |' in card and 'output layer untied' in card
    assert 'translate.py --model exported' in card and '| --stgcn_channels | 8,16 |' in card


def demo_batch(demo_root, count=6):
    demo = os.path.join(demo_root, 'Demo')
    entries = load_labels(os.path.join(demo, 'labels.test'))[:count]
    files = [(e['name'], os.path.join(demo, 'pose_format', e['pose_file'])) for e in entries]
    (_, _, batch), = translate.read_batches(files, count, 32, None, False, [])
    return batch


def write_version_1(model, flags, info, folder, mt5_dir):
    """A folder as the first export format wrote it: translator.pth, translator.json and mT5's
    config, generation config and tokenizer."""
    import shutil

    import checkpoint
    shutil.copytree(mt5_dir, folder)
    os.remove(folder / 'model.safetensors')
    state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    torch.save({'model': state, 'args': checkpoint.plain_args(flags)}, folder / 'translator.pth')
    stored = {k: v for k, v in checkpoint.plain_args(flags).items() if k != 'mt5_path'}
    (folder / 'translator.json').write_text(json.dumps({'flags': stored, 'info': info}))


def test_translator_loads_once_and_translates_as_the_command_line_prints(loud, capsys):
    path, demo_root = loud
    clips = os.path.join(demo_root, 'Demo', 'pose_format', 'demo_test_*.pkl')
    stdout, stderr = translate_here(capsys, '--checkpoint', path, clips, '--batch_size', '4')
    expected = [tuple(line.split('\t')) for line in stdout.splitlines()]
    assert len(expected) == 8 and len({text for _, text in expected}) > 1
    # progress off a terminal: plain lines on stderr, the first clip and the last
    assert 'translating [1/8]' in stderr and 'translating [8/8]' in stderr
    translator = translate.Translator.load(str(path), '--batch_size', '4')
    assert translator.head == 'translator' and translator([clips]) == expected
    model, first = translator.model, clips.replace('*', expected[0][0][len('demo_test_'):])
    stdout, _ = translate_here(capsys, '--checkpoint', path, first)  # alone in its batch
    assert translator([first]) == [tuple(stdout.rstrip('\n').split('\t'))]
    assert translator.model is model
    with pytest.raises(translate.UsageError, match='absent.pkl: no such file'):
        translator([first.replace(expected[0][0], 'absent')])


def test_first_format_folders_still_load_and_export_again(loud, tmp_path, capsys):
    path, demo_root = loud
    pkl = os.path.join(demo_root, 'Demo', 'pose_format')
    model, flags, info = translate.load_model(translate.parse_args(['--checkpoint', str(path),
                                                                    'x']))
    old = tmp_path / 'old'
    write_version_1(model, flags, info, old, os.path.join(demo_root, 'Demo', 'mt5'))
    expected, _ = translate_here(capsys, '--checkpoint', path, pkl)
    assert len(set(line.split('\t')[1] for line in expected.splitlines())) > 1
    assert translate_here(capsys, '--model', old, pkl)[0] == expected
    translate_here(capsys, '--model', old, '--export', tmp_path / 'new')
    assert translate_here(capsys, '--model', tmp_path / 'new', pkl)[0] == expected
    assert 'translator.pth' not in os.listdir(tmp_path / 'new')
    translate_here(capsys, '--model', old, '--export', old)  # in place
    assert not {'translator.pth', 'translator.json'} & set(os.listdir(old))
    assert translate_here(capsys, '--model', old, pkl)[0] == expected


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

    with pytest.raises(translate.UsageError, match=re.escape(
            '--dataset CSL_Daily cannot act on --checkpoint') + '.*stores its dataset \\(Demo\\)'):
        translate_here(capsys, '--checkpoint', out / 'best_checkpoint.pth', '--dataset',
                       'CSL_Daily', pkl)

    exported = tmp_path / 'exported'
    translate_here(capsys, '--checkpoint', out / 'best_checkpoint.pth', '--export', exported)
    config_json = (exported / 'config.json').read_text()
    (exported / 'config.json').write_text('{"flags": ')
    proc = run('translate.py', '--model', str(exported), pkl)
    assert proc.returncode == 1 and 'Traceback' not in proc.stderr
    assert f'translate.py: error: {exported}/config.json cannot be read' in proc.stderr
    (exported / 'config.json').write_text(json.dumps({**json.loads(config_json), 'version': 9}))
    with pytest.raises(translate.ConfigError, match='an export of version 9; this code reads '
                                                    'versions up to 2'):
        translate_here(capsys, '--model', exported, pkl)
    (exported / 'config.json').write_text(json.dumps({'d_model': 3}))  # an mT5 folder's
    with pytest.raises(translate.ConfigError, match='is not the config of a folder written by'):
        translate_here(capsys, '--model', exported, pkl)
    (exported / 'config.json').write_text(config_json)
    (exported / 'model.safetensors').write_bytes(b'\0' * 40)
    with pytest.raises(translate.ConfigError, match=re.escape(
            f'{exported}/model.safetensors cannot be read')):
        translate_here(capsys, '--model', exported, pkl)
    with pytest.raises(translate.UsageError, match='--hidden_dim cannot act on --model'):
        translate_here(capsys, '--model', exported, '--hidden_dim', '16', pkl)
    with pytest.raises(translate.UsageError, match='--ctc_beam cannot act: .* is a translator'):
        translate_here(capsys, '--checkpoint', out / 'best_checkpoint.pth', '--ctc_beam', '2',
                       pkl)

    old = tmp_path / 'old'
    old.mkdir()
    (old / 'translator.json').write_text('{"flags": ')
    with pytest.raises(translate.ConfigError, match=re.escape(
            f'--model {old}/translator.json cannot be read')):
        translate_here(capsys, '--model', old, pkl)


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


@pytest.fixture(scope='module')
def ctc_checkpoint(tmp_path_factory):
    """(checkpoint, pose folder): a CTC recognizer with random weights (its linear classifier
    made to tell frames apart and never pick the blank), saved as fine_tuning.py saves one
    (flags, gloss vocabulary, epoch, dev WER), and random clips of varied lengths."""
    import pickle

    import checkpoint
    from conftest import ctc_args, random_clip
    from ctc_head import GlossVocab
    from models import CTCRecognizer, get_requires_grad_dict
    folder = tmp_path_factory.mktemp('ctc')
    vocab = GlossVocab([f'G{i}' for i in range(12)])
    args = ctc_args(mt5_path=None, weight_norm=False)
    poses = folder / 'poses'
    poses.mkdir()
    for index in range(7):
        with open(poses / f'clip{index}.pkl', 'wb') as f:
            pickle.dump(random_clip(24 + 9 * index, seed=index), f)
    clips = translate.collect_inputs([str(poses)])
    (_, _, batch), = translate.read_batches(clips, len(clips), args.max_length, None, False, [])
    torch.manual_seed(0)
    model = CTCRecognizer(args, vocab.num_classes).eval()
    classifier = model.head.classifier
    with torch.no_grad():  # only what differs between frames and clips picks the gloss
        inputs = []
        hook = classifier.register_forward_hook(lambda _, args, __: inputs.append(args[0]))
        model(batch)
        hook.remove()
        classifier.weight.mul_(100)
        classifier.bias.copy_(-classifier.weight @ inputs[-1].flatten(0, -2).mean(0))
        classifier.bias[0] = -1e3  # never the blank
    path = folder / 'best_checkpoint.pth'
    torch.save({'model': get_requires_grad_dict(model), 'args': checkpoint.plain_args(args),
                'gloss_vocab': vocab.state_dict(), 'epoch': 2, 'dev_wer': 87.5}, path)
    return path, poses


def test_ctc_recognizer_writes_glosses_and_exports(ctc_checkpoint, tmp_path, capsys):
    path, poses = ctc_checkpoint
    expected, stderr = translate_here(capsys, '--checkpoint', path, poses, '--batch_size', '3')
    rows = [line.split('\t') for line in expected.splitlines()]
    assert [name for name, _ in rows] == [f'clip{i}' for i in range(7)]
    assert 'translated 7 of 7 clips' in stderr
    glosses = [text.split() for _, text in rows]
    assert all(g.startswith('G') for line in glosses for g in line)
    assert len({tuple(line) for line in glosses}) > 1 and any(glosses)
    exported = tmp_path / 'ctc_export'
    translate_here(capsys, '--checkpoint', path, '--export', exported)
    assert {'model.safetensors', 'config.json', 'README.md'} <= set(os.listdir(exported))
    assert not {'spiece.model', 'tokenizer.json'} & set(os.listdir(exported))
    with open(exported / 'config.json', encoding='utf-8') as f:
        description = json.load(f)
    assert description['head'] == 'ctc' and description['info']['gloss_vocab']['itos'][1] == 'G0'
    card = (exported / 'README.md').read_text(encoding='utf-8')
    assert 'CTC gloss recognizer' in card and '| dev_wer | 87.5 |' in card
    assert translate_here(capsys, '--model', exported, poses, '--batch_size', '3')[0] == expected
    beam, _ = translate_here(capsys, '--model', exported, poses, '--batch_size', '3',
                             '--ctc_beam', '4')
    assert [l.split('\t')[0] for l in beam.splitlines()] == [name for name, _ in rows]
    for flag in ('--num_beams', '--decode_pool'):
        with pytest.raises(translate.UsageError, match=f'{flag} cannot act: .* CTC recognizer'):
            translate_here(capsys, '--model', exported, poses, flag, '2')


def test_a_video_is_extracted_then_translated_in_one_command(ctc_checkpoint, person_video,
                                                             tmp_path, capsys, monkeypatch):
    """Videos go through the pose extraction (the video environment) and translate as their
    extracted poses do; a video that gives no poses is named, or skipped when asked."""
    path, _ = ctc_checkpoint
    monkeypatch.setenv('SIGN_VIDEO_CACHE', str(tmp_path / 'cache'))
    kept = tmp_path / 'kept'
    out, err = translate_here(capsys, '--checkpoint', path, person_video, '--keep_poses', kept)
    name, glosses = out.rstrip('\n').split('\t')
    assert name == 'person' and glosses.split() and 'translated 1 of 1 clips' in err
    assert 'person.mp4: 3 of 15 frames' in err  # the black frames, counted
    assert read_pose(str(kept / 'person.pkl'))['keypoints'].shape == (15, 1, 133, 2)
    assert translate_here(capsys, '--checkpoint', path, kept / 'person.pkl')[0] == out
    # without --keep_poses: the cache, keyed by the content; a second run finds it there
    assert translate_here(capsys, '--checkpoint', path, person_video)[0] == out
    cached, = os.listdir(tmp_path / 'cache' / 'mediapipe')
    _, err = translate_here(capsys, '--checkpoint', path, person_video)
    assert '1 done before' in err
    garbage = tmp_path / 'garbage.mov'
    garbage.write_bytes(os.urandom(5000))
    with pytest.raises(translate.UsageError, match='garbage.mov: unreadable video.*--skip_bad'):
        translate_here(capsys, '--checkpoint', path, person_video, garbage)
    out2, err = translate_here(capsys, '--checkpoint', path, garbage, person_video,
                               '--skip_bad_samples', '--video_workers', '2')
    assert out2 == out and 'translated 1 of 2 clips, skipped 1 bad files' in err


def test_video_flags_without_a_video_and_a_missing_video_environment_stop(ctc_checkpoint,
                                                                         tmp_path, capsys,
                                                                         monkeypatch):
    path, poses = ctc_checkpoint
    for flag, value in (('--pose_estimator', 'rtmpose'), ('--video_workers', '2'),
                        ('--keep_poses', str(tmp_path / 'kept'))):
        with pytest.raises(translate.UsageError, match=f'{flag} cannot act: no input is a video'):
            translate_here(capsys, '--checkpoint', path, poses, flag, value)
    video = tmp_path / 'clip.mp4'
    video.write_bytes(b'x')
    monkeypatch.setenv('SIGN_VIDEO_PYTHON', str(tmp_path / 'absent' / 'python'))
    with pytest.raises(translate.UsageError, match='create it with `bash script/setup_video.sh`'):
        translate_here(capsys, '--checkpoint', path, video)
