"""script/plot_run.py and script/render_pose.py through their command lines: valid PNGs of a
sensible size with something drawn."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from datasets import read_pose
from mediapipe_pose import wholebody_to_holistic, write_pose

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run_script(*args):
    env = {**os.environ, 'OMP_NUM_THREADS': '1', 'MPLBACKEND': 'Agg'}
    return subprocess.run([sys.executable, *args], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=300)


def check_png(path, min_size):
    with open(path, 'rb') as f:
        assert f.read(8) == b'\x89PNG\r\n\x1a\n'
    image = np.asarray(Image.open(path).convert('L'))
    height, width = image.shape
    assert width >= min_size[0] and height >= min_size[1], image.shape
    assert width <= 4000 and height <= 4000
    assert (image < 200).mean() > 0.01  # lines and text, not a blank canvas
    return width, height


def write_lines(path, records):
    path.write_text(''.join(json.dumps(r) + '\n' for r in records))


def test_plot_run_draws_every_logged_quantity(tmp_path):
    run = tmp_path / 'run'
    run.mkdir()
    epochs = []
    for epoch in range(3):
        record = {'train_loss': 3 - epoch, 'train_ce_loss': 2.5 - epoch, 'train_lr': 1e-3,
                  'train_steps': 5, 'epoch': epoch, 'best_dev_bleu4': 10.0 * epoch}
        record.update({f'dev_bleu{n}': 10.0 * epoch + n for n in range(1, 5)})
        record.update({'dev_rouge': 20.0 + epoch, 'test_bleu4': 9.0 * epoch, 'test_rouge': 19.0,
                       'dev_wer': 50.0 - epoch, 'dev_top1_acc_pi': 0.1 * epoch})
        epochs.append(record)
    write_lines(run / 'log.txt', epochs)
    write_lines(run / 'log_steps.txt', [
        {'epoch': e, 'step': s, 'loss': 3 - e - s / 10, 'ce_loss': 2.9 - e, 'lr': 1e-3,
         'hyp_curvature': 0.5 + 0.01 * s} for e in range(3) for s in range(5)])
    proc = run_script('script/plot_run.py', str(run))
    assert proc.returncode == 0, proc.stderr
    width, height = check_png(run / 'curves.png', (800, 500))
    # loss, lr, bleu, rouge, wer, top-1, hyp_curvature: 7 panels on a 3-column grid, 3 rows
    assert width > height

    other = tmp_path / 'other'
    other.mkdir()
    write_lines(other / 'log.txt', epochs[:2])
    proc = run_script('script/plot_run.py', str(run), str(other), '--out', str(tmp_path / 'cmp.png'))
    assert proc.returncode == 0, proc.stderr
    check_png(tmp_path / 'cmp.png', (800, 500))

    proc = run_script('script/plot_run.py', str(tmp_path / 'nowhere'))
    assert proc.returncode != 0 and 'nowhere' in proc.stderr and 'log.txt' in proc.stderr


@pytest.mark.parametrize('extension', ['pkl', 'pose'])
def test_render_pose_draws_a_strip_of_frames(demo_root, tmp_path, extension):
    clip_path = os.path.join(demo_root, 'Demo', 'pose_format', 'demo_test_00001.pkl')
    if extension == 'pose':
        clip = read_pose(clip_path)
        clip_path = str(tmp_path / 'clip.pose')
        write_pose(wholebody_to_holistic(clip['keypoints'][:, 0], clip['scores'][:, 0], 900, 900,
                                         25.0), clip_path)
    out = tmp_path / 'strip.png'
    proc = run_script('script/render_pose.py', clip_path, '--out', str(out), '--frames', '6')
    assert proc.returncode == 0, proc.stderr
    width, height = check_png(out, (500, 500))
    assert 0.8 < width / height < 1.6  # 6 frame columns by 5 rows (whole signer + 4 parts)

    proc = run_script('script/render_pose.py', str(tmp_path / 'absent.pkl'), '--out', str(out))
    assert proc.returncode != 0 and 'absent.pkl: pose file not found' in proc.stderr


def test_render_pose_animates_the_whole_signer_as_a_gif(demo_root, tmp_path):
    clip_path = os.path.join(demo_root, 'Demo', 'pose_format', 'demo_test_00001.pkl')
    count = len(read_pose(clip_path)['scores'])
    out = tmp_path / 'clip.gif'
    proc = run_script('script/render_pose.py', clip_path, '--out', str(out), '--fps', '10')
    assert proc.returncode == 0, proc.stderr
    with Image.open(out) as gif:
        assert gif.format == 'GIF' and gif.n_frames == count and gif.info['loop'] == 0
        assert gif.info['duration'] == 100  # 10 fps
        first = np.asarray(gif.convert('L'))
        gif.seek(count - 1)
        last = np.asarray(gif.convert('L'))
    assert (first < 128).sum() > 50  # bones drawn on white
    assert not np.array_equal(first, last)  # the signer moves
    proc = run_script('script/render_pose.py', clip_path, '--out', str(out), '--frames', '5')
    with Image.open(out) as gif:  # 5 frames spread over the clip's duration at 25 fps
        assert gif.n_frames == 5 and abs(gif.info['duration'] - 1000 * count / 25 / 5) <= 10


@pytest.mark.parametrize("content, problem", [
    (b"not an archive", "is not a readable .npz of dump_batch"),
    ("empty.npz", "holds no embeddings"),
])
def test_plot_poincare_names_an_input_that_is_no_dump(tmp_path, content, problem):
    path = tmp_path / "batch.npz"
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        np.savez(path, unrelated=np.zeros(3))
    proc = subprocess.run([sys.executable, os.path.join(ROOT, "script", "plot_poincare.py"),
                           "--input", str(path), "--out", str(tmp_path / "disk.png")],
                          capture_output=True, text=True, cwd=ROOT)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert proc.stderr.strip().startswith(f"plot_poincare.py: error: --input {path} {problem}")
