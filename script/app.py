"""A web page that translates sign language clips, their skeleton animated beside the text.

Upload a pose file (.pkl Uni-Sign pickle or MediaPipe .pose) or a video, choose a model, and see
the skeleton move beside its translation (or its glosses, for a CTC recognizer).

    pip install -r requirements-app.txt
    python script/app.py --models out/            # then open http://127.0.0.1:7860
    python script/app.py --models models/ --port 8080 --device cuda

The model list holds the checkpoints (`*.pth` written by fine_tuning.py) and the folders written
by `translate.py --export` found under --models; a path typed in the text box is used instead.
Each model is loaded once (again only when its files change) and translates exactly as
`translate.py` does with the same checkpoint and file. Videos go through translate.py's own
input handling, which extracts their poses in the video environment (`bash
script/setup_video.sh`, docs/video.md); without it the page says so.
"""
import os
import sys
import tempfile
import threading

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
for folder in (ROOT, HERE):
    if folder not in sys.path:
        sys.path.insert(0, folder)

import cli  # noqa: E402
import translate  # noqa: E402
import video_poses  # noqa: E402
from config import ConfigError  # noqa: E402
from keypoints import DataError  # noqa: E402

INSTALL = "pip install -r requirements-app.txt"
VIDEO_EXTENSIONS = ('.mp4', '.mov', '.avi', '.mkv', '.webm', '.m4v')
ANIMATION_FRAMES = 250  # longer clips are shown at this many evenly spaced frames
EXPORTED_MARKERS = (('config.json', 'model.safetensors'), ('translator.json',))  # both formats


class AppError(Exception):
    """A problem the page shows to its user; the message says what to do."""


def find_models(root):
    """[(label, path)]: checkpoints (.pth) and exported folders under `root`, sorted by label
    (the path below root); training states and the insides of exported folders are skipped."""
    found = []
    for folder, subfolders, files in os.walk(root):
        if is_exported(folder):
            found.append(folder)
            subfolders.clear()
            continue
        subfolders[:] = sorted(d for d in subfolders if d != 'training_state')
        found += [os.path.join(folder, f) for f in files if f.endswith('.pth')]
    labels = [os.path.relpath(path, root) if path != root else os.path.basename(path)
              for path in found]
    return sorted(zip(labels, [os.path.abspath(p) for p in found]))


def is_exported(folder):
    return any(all(os.path.isfile(os.path.join(folder, name)) for name in marker)
               for marker in EXPORTED_MARKERS)


class ModelCache:
    """Translators by path, each loaded once (and loaded again when its files change)."""

    def __init__(self, options=()):
        self.options = list(options)  # translate.py flags, such as --device
        self.loaded = {}
        self.lock = threading.Lock()

    def get(self, path):
        if not path:
            raise AppError("choose a model in the list or type the path of a checkpoint (.pth) "
                           "or of a folder written by translate.py --export")
        path = os.path.realpath(os.path.expanduser(path))
        if not os.path.exists(path):
            raise AppError(f"{path}: no such checkpoint file or exported folder")
        with self.lock:
            stamp = files_stamp(path)
            if path not in self.loaded or self.loaded[path][0] != stamp:
                self.loaded.pop(path, None)  # the old model's memory is freed before loading
                self.loaded[path] = (stamp, translate.Translator.load(path, *self.options))
            return self.loaded[path][1]


def files_stamp(path):
    """Modification times and sizes of a checkpoint file or of an exported folder's files."""
    files = [path] if os.path.isfile(path) else sorted(
        os.path.join(path, name) for name in os.listdir(path))
    return tuple((f, os.stat(f).st_mtime_ns, os.stat(f).st_size) for f in files
                 if os.path.isfile(f))


def video_support():
    """Whether translate.py can read videos here: the pose-extraction environment exists."""
    try:
        video_poses.video_python()
    except video_poses.VideoError:
        return False
    return True


def check_upload(path):
    """The uploaded file's kind, 'pose' or 'video', or AppError saying what is accepted."""
    if not path:
        raise AppError("upload a pose file (.pkl or .pose) or a video first")
    lower = path.lower()
    if lower.endswith(translate.POSE_EXTENSIONS):
        return 'pose'
    if lower.endswith(VIDEO_EXTENSIONS):
        if not video_support():
            raise AppError(f"{os.path.basename(path)}: video input needs the video "
                           f"pose-extraction environment, which is not set up: create it with "
                           f"`{video_poses.SETUP}`, or upload the clip's .pkl or .pose file "
                           "instead")
        return 'video'
    raise AppError(f"{os.path.basename(path)}: not a pose file (.pkl, .pose) or a video "
                   f"({', '.join(VIDEO_EXTENSIONS)})")


def run_clip(cache, model_path, upload, animation_dir):
    """(animation GIF path or None, text, note saying what the text is) for one uploaded file;
    AppError for a problem of the model or the file."""
    check_upload(upload)
    try:
        translator = cache.get(model_path)
        skipped = []
        results = list(translator.results(translate.collect_inputs([upload]), skipped))
    except (translate.UsageError, ConfigError, DataError) as error:
        raise AppError(str(error)) from None
    if not results:
        raise AppError(f"{os.path.basename(upload)}: no clip could be read"
                       + (f" ({skipped[0]})" if skipped else ""))
    name, pose_path, text = results[0]
    kind = "Glosses (CTC recognizer)" if translator.head == 'ctc' else "Translation"
    note = f"{kind} of `{name}` by `{model_path}`"
    gif = animation(pose_path, name, animation_dir)
    if gif is None:
        note += " (no skeleton: translate.py kept no pose file of this video)"
    return gif, text, note


def animation(pose_path, name, folder):
    """A GIF of the clip's whole signer, or None when its pose file is not at hand (a video
    whose poses translate.py extracted without keeping them)."""
    import render_pose
    if not pose_path.lower().endswith(translate.POSE_EXTENSIONS):
        return None
    handle, out = tempfile.mkstemp(suffix='.gif', prefix=f"{name}_", dir=folder)
    os.close(handle)
    render_pose.animate(render_pose.load_parts(pose_path), out, max_frames=ANIMATION_FRAMES)
    return out


def import_gradio():
    os.environ.setdefault('GRADIO_ANALYTICS_ENABLED', 'False')
    try:
        import gradio
    except ImportError:
        raise SystemExit(f"app.py: error: the web demo needs gradio, which is not installed: "
                         f"{INSTALL}") from None
    return gradio


def build_demo(models_root=None, options=()):
    """The page (a gradio Blocks) over the models found under `models_root`; `options` are
    translate.py flags given to every model."""
    gr = import_gradio()
    cache = ModelCache(options)
    animations = tempfile.TemporaryDirectory(prefix='signpose_app_')  # removed at exit
    shown = []  # the last GIF, which gradio has copied to its own cache by the next request
    choices = find_models(models_root) if models_root else []

    def on_translate(upload, chosen, typed):
        while shown:
            os.remove(shown.pop())
        try:
            gif, text, note = run_clip(cache, (typed or '').strip() or chosen, upload,
                                       animations.name)
        except AppError as error:
            raise gr.Error(str(error), print_exception=False) from None
        shown.extend([gif] if gif else [])
        return gif, text, note

    with gr.Blocks(title="signpose: sign language translation", delete_cache=(3600, 3600)) as demo:
        gr.Markdown("## signpose: sign language translation\nUpload a pose file (.pkl, .pose) "
                    "or a video, choose a model, then press Translate.")
        with gr.Row():
            with gr.Column():
                upload = gr.File(label="pose file or video", type='filepath', elem_id='upload',
                                 file_types=[*translate.POSE_EXTENSIONS, *VIDEO_EXTENSIONS])
                chosen = gr.Dropdown(choices=choices, value=choices[0][1] if choices else None,
                                     label=f"model found under {models_root}" if models_root
                                     else "model", elem_id='model')
                typed = gr.Textbox(label="or the path of a checkpoint (.pth) or exported folder",
                                   elem_id='model_path')
                button = gr.Button("Translate", variant='primary', elem_id='translate')
            with gr.Column():
                skeleton = gr.Image(label="skeleton", type='filepath', format='gif',
                                    elem_id='skeleton')
                result = gr.Textbox(label="translation (glosses for a CTC recognizer)", lines=3,
                                    elem_id='result', buttons=['copy'])
                note = gr.Markdown(elem_id='note')
        # One request at a time: the models share the cache, and the last GIF is removed.
        button.click(on_translate, [upload, chosen, typed], [skeleton, result, note],
                     api_name='translate', concurrency_limit=1)
    demo.animations = animations  # kept while the page is
    return demo


def parse_args(argv=None):
    p = cli.ArgumentParser(description=__doc__.splitlines()[0])
    cli.add_flag(p, '--models', help='folder searched for checkpoints (.pth) and exported folders')
    cli.add_flag(p, '--host', default='127.0.0.1',
                 help='address to serve on (0.0.0.0: every network interface)')
    cli.add_flag(p, '--port', type=cli.int_range(1, 65535), default=7860, help='port to serve on')
    cli.add_flag(p, '--device', help="translate.py's --device (default: cuda when available)")
    args = p.parse_args(argv)
    if args.models and not os.path.isdir(args.models):
        p.error(f"--models {args.models}: no such folder")
    return args


def main(argv=None):
    args = parse_args(argv)
    os.environ.setdefault('TOKENIZERS_PARALLELISM', 'false')
    demo = build_demo(args.models, ['--device', args.device] if args.device else [])
    demo.launch(server_name=args.host, server_port=args.port)


if __name__ == '__main__':
    main()
