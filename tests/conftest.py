"""Shared fixtures: a tiny offline mT5 and a small generated Demo set, built once per session."""
import os
import random
import shutil
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
os.environ.setdefault("WANDB_MODE", "disabled")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

ENGLISH_CORPUS = [
    "the teacher gave a book to the child", "yesterday we saw a red car",
    "my friend likes hot tea", "tomorrow they will not come home",
    "the woman reads a long letter", "i want cold water today",
    "a small dog runs in the park", "you bought three apples",
] * 4


TINY_MT5 = dict(vocab_size=96, d_model=32, d_ff=64, num_layers=1, num_heads=2, d_kv=16)


@pytest.fixture(scope="session")
def tiny_mt5_dir(tmp_path_factory):
    """A tiny mT5 with google/mt5-base's layout: the output layer apart from the embedding."""
    from demo.tiny_mt5 import build_tiny_mt5
    return build_tiny_mt5(str(tmp_path_factory.mktemp("tiny_mt5")), ENGLISH_CORPUS, **TINY_MT5)


@pytest.fixture(scope="session")
def tied_mt5_dir(tmp_path_factory):
    """The same tiny mT5 with the output layer tied to the input embedding."""
    from demo.tiny_mt5 import build_tiny_mt5
    return build_tiny_mt5(str(tmp_path_factory.mktemp("tied_mt5")), ENGLISH_CORPUS, tie=True,
                          **TINY_MT5)


@pytest.fixture(scope="session")
def tiny_lm_dirs(tmp_path_factory):
    """Tiny mBART-50, T5 and ByT5 folders (demo/tiny_lms.py) on the English corpus, by kind."""
    from demo.tiny_lms import KINDS, build_tiny_lm
    shape = dict(vocab_size=96, d_model=32, d_ff=64, num_layers=1, num_heads=2)
    return {kind: build_tiny_lm(kind, str(tmp_path_factory.mktemp(f"tiny_{kind}")),
                                ENGLISH_CORPUS, **shape) for kind in KINDS}


@pytest.fixture(scope="session")
def tiny_cc25_dir(tmp_path_factory):
    """A tiny mBART in mbart-large-cc25's layout (MBartTokenizer), on the English corpus."""
    from demo.tiny_lms import build_tiny_lm
    return build_tiny_lm("mbart", str(tmp_path_factory.mktemp("tiny_cc25")), ENGLISH_CORPUS,
                         vocab_size=96, d_model=32, d_ff=64, num_layers=1, num_heads=2, cc25=True)


@pytest.fixture(scope="session")
def demo_root(tmp_path_factory):
    """A small Demo set (labels, poses, tiny mT5) laid out as config.py expects under data_root."""
    from demo.data import make_demo
    data_root = tmp_path_factory.mktemp("data")
    make_demo(str(data_root / "Demo"), seed=0, n_train=48, n_dev=8, n_test=8,
              mt5_kwargs=dict(d_model=32, d_ff=64, num_layers=1, num_heads=2, d_kv=16))
    return str(data_root)


@pytest.fixture
def data_root(demo_root, tmp_path):
    """A private copy of the Demo labels and poses (the tiny mT5 is shared through a link), for
    tests that damage files."""
    source, copy = os.path.join(demo_root, "Demo"), os.path.join(tmp_path, "data", "Demo")
    shutil.copytree(os.path.join(source, "pose_format"), os.path.join(copy, "pose_format"))
    for phase in ("train", "dev", "test"):
        shutil.copy(os.path.join(source, f"labels.{phase}"), os.path.join(copy, f"labels.{phase}"))
    os.symlink(os.path.join(source, "mt5"), os.path.join(copy, "mt5"))
    return os.path.join(tmp_path, "data")


PROCESS_GROUP_VARIABLES = ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")


@pytest.fixture(scope="module")
def in_process_trainer():
    """For tests that run the trainer inside pytest. The process group of the first such run
    stays for the session (DeepSpeed keeps its groups); the variables describing it are removed
    afterwards, so that launched subprocesses start groups of their own, and the print wrapper
    of utils.silence_other_ranks is undone."""
    import builtins
    import socket
    saved = {key: os.environ.get(key) for key in PROCESS_GROUP_VARIABLES}
    printer = builtins.print
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = str(s.getsockname()[1])
    os.environ.update(RANK="0", LOCAL_RANK="0", WORLD_SIZE="1", MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=port)
    yield
    builtins.print = printer
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


def trainer_predictions(out, phase="test"):
    """[(clip name, prediction)] of the trainer's {phase}_tmp_pres.txt in the folder `out`."""
    import re
    pattern = re.compile(r"sample: (.*?), prediction: (.*)")
    with open(os.path.join(out, f"{phase}_tmp_pres.txt"), encoding="utf-8") as f:
        return [pattern.fullmatch(line.rstrip("\n")).groups() for line in f]


def default_args(**overrides):
    """The trainer's flags at their defaults (one place defines them), with `overrides`."""
    import flags
    args = flags.get_args_parser().parse_args([])
    vars(args).update(overrides)
    return args


# The deepspeed launcher of this interpreter: a run without its environment's bin/ on PATH
# still finds it.
DEEPSPEED = [sys.executable, "-m", "deepspeed.launcher.runner"]


def write_label_file(path, label_format, entries):
    """Writes entries ({'name', 'text', 'gloss' list}) as a label file of `label_format`
    (labels.py's formats); every pose file is NAME.pkl. Returns the path."""
    import csv
    import gzip
    import json
    import pickle
    path = str(path)
    if label_format == "unisign_pickle":
        with gzip.open(path, "wb") as f:
            pickle.dump({e["name"]: {"name": e["name"], "text": e["text"], "gloss": e["gloss"],
                                     "video_path": e["name"] + ".mp4"} for e in entries}, f)
    elif label_format == "news_json":
        with open(path, "w", encoding="utf-8") as f:
            json.dump([{"video": e["name"] + ".mp4", "pose": e["name"] + ".pkl", "text": e["text"]}
                       for e in entries], f, ensure_ascii=False)
    elif label_format == "stm":
        with open(path, "w", encoding="utf-8") as f:
            f.writelines(f"{e['name']} 1 signer 0.0 1.79769e+308 {' '.join(e['gloss'])}\n"
                         for e in entries)
    elif label_format == "corpus_csv":
        with open(path, "w", encoding="utf-8", newline="") as f:
            writer = csv.writer(f, delimiter="|", quoting=csv.QUOTE_NONE, escapechar="\\")
            writer.writerow(["name", "video", "start", "end", "speaker", "orth", "translation"])
            writer.writerows([e["name"], e["name"] + "/1/*.png", -1, -1, "signer",
                              " ".join(e["gloss"]), e["text"]] for e in entries)
    else:
        raise ValueError(label_format)
    return path


# ---- gloss recognition (CTC head): used by test_labels, test_ctc_recognizer, test_tasks and
# test_ctc_training.

CTC_MODEL = dict(stgcn_channels=[8, 16], hidden_dim=16, temporal_layers=1, ctc_hidden=32,
                 max_length=64)


def ctc_args(**overrides):
    """default_args of a small `--task CSLR --head ctc --dataset PhoenixDemo` run."""
    return default_args(**{"task": "CSLR", "head": "ctc", "dataset": "PhoenixDemo", **CTC_MODEL,
                           **overrides})


def random_clip(frames, seed=0):
    """A pose pickle's dict: `frames` frames of uniform random COCO-WholeBody keypoints."""
    import numpy as np
    rng = np.random.default_rng(seed)
    keypoints = rng.uniform(100, 300, (frames, 1, 133, 2)).astype(np.float32)
    return {"keypoints": keypoints, "scores": np.full((frames, 1, 133), 0.9, np.float32)}


def write_gloss_set(folder, samples, signer="Signer01"):
    """An STM file and pose files for [(name, glosses, frames)] in `folder`; returns (STM path,
    pose folder)."""
    import pickle
    from SLRT_metrics import write_stm
    pose_dir = folder / "poses"
    pose_dir.mkdir(parents=True, exist_ok=True)
    for index, (name, _, frames) in enumerate(samples):
        with open(pose_dir / f"{name}.pkl", "wb") as f:
            pickle.dump(random_clip(frames, index), f)
    stm = folder / "labels.stm"
    write_stm(stm, [s[0] for s in samples], [s[1] for s in samples], signer)
    return str(stm), str(pose_dir)


# ---- pose and label files for the pose layer's and the datasets' tests

def make_pose(num_frames, seed=0, low_fraction=0.1):
    """A pose pickle's dict with random keypoints, about `low_fraction` of scores below 0.3."""
    import numpy as np
    rng = np.random.default_rng(seed)
    keypoints = rng.uniform(0.2, 0.8, (num_frames, 1, 133, 2)).astype(np.float32)
    scores = rng.uniform(0.35, 1.0, (num_frames, 1, 133)).astype(np.float32)
    low = rng.random(scores.shape) < low_fraction
    scores[low] = rng.uniform(0.0, 0.3, int(low.sum()))
    return {'keypoints': keypoints, 'scores': scores}


def write_pickle(path, obj):
    import pickle
    with open(path, 'wb') as f:
        pickle.dump(obj, f)
    return str(path)


def write_labels(path, entries):
    """A Uni-Sign label file (gzip pickle of name -> entry)."""
    import gzip
    import pickle
    with gzip.open(path, 'wb') as f:
        pickle.dump({entry['name']: entry for entry in entries}, f)
    return str(path)


def label(name, text, gloss=()):
    return {'name': name, 'gloss': list(gloss), 'text': text, 'video_path': f'{name}.mp4'}


def make_split(tmp_path, lengths, texts=None, glosses=None):
    """A Uni-Sign label file and pose pickles for clips of the given lengths."""
    pose_dir = tmp_path / 'poses'
    pose_dir.mkdir(exist_ok=True)
    entries = []
    for index, length in enumerate(lengths):
        name = f'clip{index}'
        write_pickle(pose_dir / f'{name}.pkl', make_pose(length, seed=index))
        text = texts[index] if texts else f'sentence {index}'
        entries.append(label(name, text, glosses[index] if glosses else ['G', str(index)]))
    return write_labels(tmp_path / 'labels', entries), str(pose_dir)


def load_file_module(relative_path):
    """A script of script/ or bench/ (not importable by name) loaded as a module."""
    import importlib.util
    name = os.path.splitext(os.path.basename(relative_path))[0]
    spec = importlib.util.spec_from_file_location(name, os.path.join(ROOT, relative_path))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def free_port():
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return str(s.getsockname()[1])


def run_command(cmd, tmp_path, timeout=600):
    """Runs a command from the repository root on CPU ranks without W&B, outside the process
    group of in-process trainings; its output is kept in tmp_path/stdout.txt."""
    import subprocess
    env = {**{k: v for k, v in os.environ.items() if k not in PROCESS_GROUP_VARIABLES},
           "DS_ACCELERATOR": "cpu", "WANDB_MODE": "disabled", "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)
    (tmp_path / "stdout.txt").write_text(proc.stdout + proc.stderr)
    return proc


# Greek only: under a tokenizer trained on it, English words (targets and prompt) are <unk>.
GREEK_SENTENCES = ["ο δάσκαλος γράφει στον πίνακα", "το παιδί διαβάζει ένα βιβλίο",
                   "η μητέρα μαγειρεύει ψωμί και φαγητό", "ξένος ζητά νερό ψηφίζει χθες"]


def foreign_tokenizer_mt5(source, folder):
    """A copy of the mT5 folder `source` whose tokenizer is a spiece.model trained on Greek only
    (mT5's special ids kept, fewer tokens than the model's embeddings; no tokenizer.json)."""
    import io
    import shutil

    import sentencepiece as spm
    shutil.copytree(source, folder)
    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(GREEK_SENTENCES * 10), model_writer=model, vocab_size=48,
        model_type="unigram", character_coverage=1.0, pad_id=0, eos_id=1, unk_id=2, bos_id=-1,
        hard_vocab_limit=False, minloglevel=2)
    (folder / "spiece.model").write_bytes(model.getvalue())
    (folder / "tokenizer.json").unlink(missing_ok=True)
    return str(folder)


def reference_signcl(x, margin, max_distance=32.0, pos_samples=2, neg_samples=10 ** 6,
                     skip_empty=False):
    """SignCL.py's computation written out: for each anchor i in 1..T-3, positives drawn from
    {i - 1, i + 1} and negatives from the frames j in 2..T-3 with j < i - margin or j > i + margin,
    both with random.sample and shared by the batch; the batch means of softplus(d_pos - D) and
    softplus(D - d_neg) are summed over anchors and divided by B * (T - 4). With pos_samples=2 and
    neg_samples at least the number of negatives every pair is taken: the deterministic mode."""
    import torch.nn.functional as F
    batch, frames, _ = x.shape
    total = x.new_zeros(())
    for i in range(1, frames - 2):
        positives = random.sample([i - 1, i + 1], k=min(2, pos_samples))
        negatives = [j for j in range(2, frames - 2) if j < i - margin or j > i + margin]
        if skip_empty and not negatives:
            continue
        negatives = random.sample(negatives, k=min(len(negatives), neg_samples))
        anchor = x[:, i].unsqueeze(1)
        pos_dist = (anchor - x[:, positives]).abs().sum(-1)
        neg_dist = (anchor - x[:, negatives]).abs().sum(-1)
        total = total + F.softplus(pos_dist - max_distance).mean() \
            + F.softplus(max_distance - neg_dist).mean()
    return total / (batch * (frames - 4))


NO_VIDEO_ENV = ("the video pose-extraction environment is absent: bash script/setup_video.sh "
                "(or set SIGN_VIDEO_PYTHON)")
# Writes a video of a real photograph (matplotlib's Grace Hopper sample), shifted a little each
# frame, followed by black frames; run by the video environment's python (PyAV from pose-format).
PERSON_VIDEO = """
import sys, av, numpy as np
from PIL import Image
image, out, frames, blank = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
picture = np.asarray(Image.open(image).convert('RGB'))
height, width = picture.shape[0] // 2 * 2, picture.shape[1] // 2 * 2
container = av.open(out, 'w')
stream = container.add_stream('mpeg4', rate=25)
stream.width, stream.height, stream.pix_fmt = width, height, 'yuv420p'
for i in range(frames + blank):
    frame = np.roll(picture[:height, :width], 3 * i, axis=1) if i < frames else \\
        np.zeros((height, width, 3), np.uint8)
    for packet in stream.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(frame),
                                                           format='rgb24')):
        container.mux(packet)
for packet in stream.encode():
    container.mux(packet)
container.close()
"""


def video_env_python():
    """The video environment's python, or a skip saying how to create it."""
    import video_poses
    try:
        return video_poses.video_python()
    except video_poses.VideoError:
        pytest.skip(NO_VIDEO_ENV)


def write_person_video(path, frames=12, blank=0, python=None):
    """A short video of a real person (and `blank` black frames after), written by `python`
    (default: the video environment's, skipping when that environment is absent)."""
    import subprocess
    from matplotlib import cbook
    image = cbook.get_sample_data("grace_hopper.jpg", asfileobj=False)
    subprocess.run([python or video_env_python(), "-c", PERSON_VIDEO, str(image), str(path),
                    str(frames), str(blank)], check=True)
    return str(path)


@pytest.fixture(scope="session")
def person_video(tmp_path_factory):
    """12 frames of a real person then 3 black ones, as an .mp4 (see write_person_video)."""
    return write_person_video(tmp_path_factory.mktemp("video") / "person.mp4", 12, 3)
