"""script/app.py, the web demo: its model list and cache without gradio, then the page served on
a free local port, driven through its HTTP API (gradio_client) and in headless Chromium
(playwright), against what translate.py prints for the same file and checkpoint."""
import os
import shutil
import sys

import pytest
import torch
from PIL import Image

import checkpoint
import model_export
import translate
from conftest import default_args, free_port, load_file_module

os.environ['GRADIO_ANALYTICS_ENABLED'] = 'False'
app = load_file_module('script/app.py')
CHROMIUM = shutil.which('chromium') or shutil.which('chromium-browser')
NO_GRADIO = "the web demo needs gradio: pip install -r requirements-app.txt"


def demo_clips(demo_root, count=3):
    folder = os.path.join(demo_root, 'Demo', 'pose_format')
    return [os.path.join(folder, name) for name in sorted(os.listdir(folder))[:count]]


@pytest.fixture(scope='module')
def models(demo_root, tmp_path_factory):
    """(models folder, checkpoint, exported folder): a small translator over the Demo mT5 saved as
    fine_tuning.py saves one, its pose projection made to keep only what differs between clips,
    louder, so that clips get different texts; and its folder exported by translate.py."""
    from models import SignTranslator, get_requires_grad_dict
    root = tmp_path_factory.mktemp('models')
    args = default_args(dataset='Demo', mt5_path=os.path.join(demo_root, 'Demo', 'mt5'),
                        stgcn_channels=[8, 16], hidden_dim=16, temporal_layers=1, max_length=32,
                        num_beams=2, max_new_tokens=8)
    clips = translate.collect_inputs(demo_clips(demo_root, 8))
    (_, _, batch), = translate.read_batches(clips, 8, 32, None, False, [])
    torch.manual_seed(0)
    model = SignTranslator(args).eval()
    with torch.no_grad():
        common = model.encode_pose(batch).mean((0, 1))
        model.pose_proj.weight.mul_(100)
        model.pose_proj.bias.copy_(-model.pose_proj.weight @ common)
    (root / 'run' / 'training_state').mkdir(parents=True)
    path = root / 'run' / 'best_checkpoint.pth'
    torch.save({'model': get_requires_grad_dict(model), 'args': checkpoint.plain_args(args),
                'epoch': 1}, path)
    exported = root / 'exported'
    translate.main(['--checkpoint', str(path), '--export', str(exported)])
    return str(root), str(path), str(exported)


def printed(capsys, checkpoint_path, pose_file):
    """The text translate.py's command line prints for one file."""
    capsys.readouterr()
    translate.main(['--checkpoint', checkpoint_path, pose_file, '--device', 'cpu'])
    name, text = capsys.readouterr().out.rstrip('\n').split('\t')
    assert name == os.path.splitext(os.path.basename(pose_file))[0]
    return text


def test_model_list_holds_checkpoints_and_exported_folders(tmp_path):
    for name in ('a/best_checkpoint.pth', 'a/checkpoint_3.pth', 'a/training_state/x.pth',
                 'b/config.json', 'b/model.safetensors', 'b/inner.pth', 'c/translator.json',
                 'c/translator.pth', 'd/config.json', 'notes.txt'):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text('x')
    found = app.find_models(str(tmp_path))
    assert [label for label, _ in found] == ['a/best_checkpoint.pth', 'a/checkpoint_3.pth',
                                             'b', 'c']
    assert all(os.path.isabs(path) and path.endswith(label) for label, path in found)


def test_each_model_loads_once_and_again_when_its_file_changes(models, demo_root, capsys):
    _, path, exported = models
    cache = app.ModelCache(['--device', 'cpu'])
    first = cache.get(path)
    assert cache.get(path) is first and cache.get(os.path.relpath(path)) is first
    assert cache.get(exported) is not first and cache.get(exported) is cache.get(exported)
    stamp = os.stat(path).st_mtime_ns + 10**9
    os.utime(path, ns=(stamp, stamp))
    assert cache.get(path) is not first
    clip = demo_clips(demo_root, 1)[0]
    assert first([clip]) == cache.get(exported)([clip]) == \
        [(os.path.basename(clip)[:-4], printed(capsys, path, clip))]


def test_problems_of_the_model_or_the_file_are_said(models, demo_root, tmp_path, monkeypatch):
    _, path, _ = models
    cache, clip = app.ModelCache(['--device', 'cpu']), demo_clips(demo_root, 1)[0]
    with pytest.raises(app.AppError, match='choose a model'):
        app.run_clip(cache, '', clip, str(tmp_path))
    with pytest.raises(app.AppError, match='absent.pth: no such checkpoint'):
        app.run_clip(cache, str(tmp_path / 'absent.pth'), clip, str(tmp_path))
    with pytest.raises(app.AppError, match=r'notes.txt: not a pose file \(.pkl, .pose\) or a vid'):
        app.run_clip(cache, path, str(tmp_path / 'notes.txt'), str(tmp_path))
    broken = tmp_path / 'broken.pkl'
    broken.write_bytes(b'not a pickle')
    with pytest.raises(app.AppError, match='broken.pkl'):
        app.run_clip(cache, path, str(broken), str(tmp_path))
    video = tmp_path / 'clip.mp4'
    video.write_bytes(b'')
    monkeypatch.setattr(app, 'video_support', lambda: False)
    with pytest.raises(app.AppError, match='clip.mp4: video input needs the video pose-extr'):
        app.run_clip(cache, path, str(video), str(tmp_path))
    monkeypatch.setattr(app, 'video_support', lambda: True)
    assert app.check_upload(str(video)) == 'video'  # handed to translate.py's own inputs


def test_a_video_goes_to_translate_py_inputs_where_they_read_videos(models, demo_root, tmp_path,
                                                                   monkeypatch):
    """With the video extra, the page hands the video's path to translate.py's input handling
    as the command line does, and animates the pose file that comes back."""
    _, path, _ = models
    clip = demo_clips(demo_root, 1)[0]
    video = str(tmp_path / 'signing.mp4')
    given = []

    def collect_inputs(items):
        given.append(items)
        return [('signing', clip)]

    monkeypatch.setattr(app, 'video_support', lambda: True)
    monkeypatch.setattr(translate, 'collect_inputs', collect_inputs)
    gif, text, note = app.run_clip(app.ModelCache(['--device', 'cpu']), path, video,
                                   str(tmp_path))
    assert given == [[video]] and note.startswith('Translation of `signing`') and text
    with Image.open(gif) as image:
        assert image.n_frames == len(translate.read_pose(clip)['scores'])


def test_a_ctc_recognizer_gives_glosses_as_translate_py_prints_them(demo_root, tmp_path, capsys):
    from conftest import ctc_args
    from ctc_head import GlossVocab
    from models import CTCRecognizer, get_requires_grad_dict
    vocab = GlossVocab([f'G{i}' for i in range(12)])
    args = ctc_args(mt5_path=None, weight_norm=False)
    torch.manual_seed(0)
    model = CTCRecognizer(args, vocab.num_classes)
    with torch.no_grad():
        model.head.classifier.bias[0] = -1e3  # never the blank: some glosses come out
    path = str(tmp_path / 'ctc.pth')
    torch.save({'model': get_requires_grad_dict(model), 'args': checkpoint.plain_args(args),
                'gloss_vocab': vocab.state_dict()}, path)
    clip = demo_clips(demo_root, 1)[0]
    gif, text, note = app.run_clip(app.ModelCache(['--device', 'cpu']), path, clip,
                                   str(tmp_path))
    assert text == printed(capsys, path, clip) and text.startswith('G')
    assert note.startswith('Glosses (CTC recognizer) of `demo_dev_00000`')
    assert os.path.dirname(gif) == str(tmp_path)


def test_command_line_refuses_a_missing_folder_and_a_bad_port(tmp_path, capsys):
    with pytest.raises(SystemExit):
        app.parse_args(['--models', str(tmp_path / 'nowhere')])
    assert 'nowhere: no such folder' in capsys.readouterr().err
    with pytest.raises(SystemExit):
        app.parse_args(['--port', '0'])
    assert 'error: argument --port' in capsys.readouterr().err
    args = app.parse_args(['--models', str(tmp_path), '--port', '8080', '--device', 'cpu'])
    assert (args.models, args.port, args.host, args.device) == (str(tmp_path), 8080,
                                                                '127.0.0.1', 'cpu')


def test_missing_gradio_names_the_install_command(monkeypatch):
    import builtins
    real_import = builtins.__import__

    def without_gradio(name, *args, **kwargs):
        if name == 'gradio':
            raise ImportError(name)
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, '__import__', without_gradio)
    with pytest.raises(SystemExit, match='pip install -r requirements-app.txt'):
        app.build_demo()


@pytest.fixture(scope='module')
def served(models):
    """(address, page): the page served in this process on a free local port."""
    pytest.importorskip('gradio', reason=NO_GRADIO)
    root = models[0]
    demo = app.build_demo(root, ['--device', 'cpu'])
    port = int(free_port())
    demo.launch(server_name='127.0.0.1', server_port=port, prevent_thread_lock=True, quiet=True)
    yield f'http://127.0.0.1:{port}/', demo
    demo.close()


def test_http_api_translates_like_translate_py(served, models, demo_root, capsys, tmp_path):
    from gradio_client import Client, handle_file
    _, path, exported = models
    address, demo = served
    client = Client(address, verbose=False)
    clips = demo_clips(demo_root, 2)
    texts = []
    for clip in clips:
        gif, text, note = client.predict(handle_file(clip), path, '', api_name='/translate')
        assert text == printed(capsys, path, clip)
        assert note == f"Translation of `{os.path.basename(clip)[:-4]}` by `{path}`"
        texts.append(text)
        with Image.open(gif) as image:
            assert image.format == 'GIF'
            assert image.n_frames == len(translate.read_pose(clip)['scores'])
    assert texts[0] != texts[1]
    assert len(os.listdir(demo.animations.name)) == 1  # the GIFs shown before are removed
    # The same clip as a MediaPipe .pose file.
    from mediapipe_pose import wholebody_to_holistic, write_pose
    clip = translate.read_pose(clips[0])
    pose_file = str(tmp_path / 'clip.pose')
    write_pose(wholebody_to_holistic(clip['keypoints'][:, 0], clip['scores'][:, 0], 900, 900,
                                     25.0), pose_file)
    _, text, _ = client.predict(handle_file(pose_file), path, '', api_name='/translate')
    assert text == printed(capsys, path, pose_file)
    # The typed path wins over the list's choice; the exported folder translates the same.
    _, text, _ = client.predict(handle_file(clips[0]), path, exported, api_name='/translate')
    assert text == texts[0]
    with pytest.raises(Exception, match='no such checkpoint file or exported folder'):
        client.predict(handle_file(clips[0]), path, exported + '_absent', api_name='/translate')


@pytest.mark.skipif(CHROMIUM is None, reason="headless Chromium is not installed "
                                               "(apt-get install chromium)")
@pytest.mark.parametrize('kind', ['pose file', 'video'])
def test_browser_uploads_a_file_and_shows_the_translation(served, models, demo_root, capsys,
                                                          tmp_path, request, monkeypatch, kind):
    sync_api = pytest.importorskip(
        'playwright.sync_api', reason="the browser test needs playwright: pip install playwright")
    clip = demo_clips(demo_root, 3)[2]
    if kind == 'video':
        monkeypatch.setenv('SIGN_VIDEO_CACHE', str(tmp_path / 'cache'))
        clip = request.getfixturevalue('person_video')
        translate.collect_inputs([clip])  # the pose file the page will find in the cache
        cached, = os.listdir(tmp_path / 'cache' / 'mediapipe')
        expected = printed(capsys, models[1], str(tmp_path / 'cache' / 'mediapipe' / cached))
    else:
        expected = printed(capsys, models[1], clip)
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch_persistent_context(
            str(tmp_path / 'profile'), executable_path=CHROMIUM, headless=True, args=[
                '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
                '--disable-background-networking', '--disable-component-update',
                '--disable-sync'], timeout=180_000)
        browser.set_default_timeout(180_000)  # a loaded machine is slow; nothing is timed
        try:
            page = browser.new_page()
            page.goto(served[0])
            page.locator('#upload input[type=file]').set_input_files(clip)
            page.get_by_text(os.path.basename(clip)).wait_for()
            page.locator('#translate').click()
            sync_api.expect(page.locator('#result textarea')).to_have_value(expected,
                                                                            timeout=300_000)
            sync_api.expect(page.locator('#skeleton img')).to_have_count(1)
        finally:
            browser.close()


def test_an_uploaded_video_is_translated_and_its_skeleton_animated(models, person_video,
                                                                   tmp_path, capsys,
                                                                   monkeypatch):
    """A video goes through translate.py's input handling (the pose extraction) and comes back
    as a translation and the animation of the poses extracted from it."""
    monkeypatch.setenv('SIGN_VIDEO_CACHE', str(tmp_path / 'cache'))
    _, path, _ = models
    upload = tmp_path / 'signing.mp4'
    shutil.copy(person_video, upload)
    gif, text, note = app.run_clip(app.ModelCache(['--device', 'cpu']), path, str(upload),
                                   str(tmp_path))
    assert note == f"Translation of `signing` by `{path}`" and text
    cached, = os.listdir(tmp_path / 'cache' / 'mediapipe')
    assert text == printed(capsys, path, str(tmp_path / 'cache' / 'mediapipe' / cached))
    with Image.open(gif) as image:
        assert image.n_frames == 15  # 12 frames of the person, 3 black ones
    garbage = tmp_path / 'garbage.webm'
    garbage.write_bytes(os.urandom(3000))
    with pytest.raises(app.AppError, match='garbage.webm: unreadable video'):
        app.run_clip(app.ModelCache(['--device', 'cpu']), path, str(garbage), str(tmp_path))


def test_video_support_follows_the_video_environment(tmp_path, monkeypatch):
    """Videos are accepted where the pose-extraction python exists (SIGN_VIDEO_PYTHON or
    .venv-video), and refused naming the setup command where it does not."""
    monkeypatch.setenv('SIGN_VIDEO_PYTHON', str(tmp_path / 'absent' / 'python'))
    assert not app.video_support()
    with pytest.raises(app.AppError, match='not set up: create it with `bash script/setup_vid'):
        app.check_upload(str(tmp_path / 'clip.mp4'))
    monkeypatch.setenv('SIGN_VIDEO_PYTHON', sys.executable)
    assert app.video_support() and app.check_upload(str(tmp_path / 'clip.mp4')) == 'video'
