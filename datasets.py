"""Pose datasets for sign-language translation: label files, pose pickles, body-part keypoints.

Label files are Uni-Sign's gzip-pickled dicts (CSL-Daily, WLASL, How2Sign, OpenASL) or the
CSL-News JSON list. Pose files are pickled dicts of whole-body (COCO-WholeBody, 133 joints)
keypoints and scores; they are read with a restricted unpickler that only rebuilds plain
containers, numbers, strings and numpy arrays, so a crafted file cannot run code. Every problem
with an input file is reported as a `DataError` naming the file. A pose folder may instead be a
packed pose store (pose_store.py), read the same way.

`load_part_kp` turns a clip into the four part tensors the models consume (body, left, right,
face_all), with the same numbers as Uni-Sign's per-frame implementation but vectorised.
"""
import codecs
import gzip
import json
import os
import pickle
import random

import numpy as np
import torch

PARTS = ('body', 'left', 'right', 'face_all')
PART_JOINTS = {
    'body': np.array([0, *range(3, 11)]),
    'left': np.arange(91, 112),
    'right': np.arange(112, 133),
    'face_all': np.array([*range(23, 40, 2), *range(83, 91), 53]),
}
NUM_KEYPOINTS = 133
SCORE_THRESHOLD = 0.3
PROMPT = "Translate sign language video to {}: "

# load_part_kp gathers every part joint into one array, parts side by side in PARTS order,
# followed by the anchor joint of each relative joint: hands are taken relative to their wrist
# (first joint), the face relative to joint 53 (its last).
_PART_SIZES = [len(PART_JOINTS[part]) for part in PARTS]
_PART_BOUNDS = np.cumsum([0] + _PART_SIZES)
_NUM_PART_JOINTS = int(_PART_BOUNDS[-1])
_NUM_BODY_JOINTS = _PART_SIZES[0]
_ANCHOR_JOINTS = np.repeat([91, 112, 53], _PART_SIZES[1:])
_GATHERED_JOINTS = np.concatenate([*PART_JOINTS.values(), _ANCHOR_JOINTS])


class DataError(ValueError):
    """An unusable label or pose file; the message names the file and the problem."""


# ----------------------------------------------------------------------------- safe unpickling

def _encode_latin1(text, encoding):
    """Pickle protocols 0-2 rebuild bytes with _codecs.encode(text, 'latin1'); nothing else."""
    if encoding not in ('latin1', 'latin-1'):
        raise pickle.UnpicklingError(f"unexpected encoding {encoding!r} for bytes")
    return codecs.encode(text, encoding)


def _allowed_pickle_globals():
    """Maps the (module, name) pairs a pose or label pickle may reference to the real objects."""
    try:
        from numpy._core import multiarray, numeric
    except ImportError:  # numpy < 2
        from numpy.core import multiarray, numeric
    allowed = {('numpy', 'ndarray'): np.ndarray, ('numpy', 'dtype'): np.dtype,
               ('_codecs', 'encode'): _encode_latin1}
    for package in ('numpy._core', 'numpy.core'):  # files written by numpy 2 and numpy 1
        allowed[(f'{package}.multiarray', '_reconstruct')] = multiarray._reconstruct
        allowed[(f'{package}.multiarray', 'scalar')] = multiarray.scalar
        allowed[(f'{package}.numeric', '_frombuffer')] = numeric._frombuffer
    for module in ('builtins', '__builtin__'):
        for builtin in (set, frozenset, complex, bytearray):
            allowed[(module, builtin.__name__)] = builtin
    return allowed


_ALLOWED_GLOBALS = _allowed_pickle_globals()


class _RefusedGlobal(pickle.UnpicklingError):
    pass


class _RestrictedUnpickler(pickle.Unpickler):
    def find_class(self, module, name):
        allowed = _ALLOWED_GLOBALS.get((module, name))
        if allowed is None:
            raise _RefusedGlobal(f"{module}.{name}")
        return allowed


def _unpickle(fileobj, path):
    """Unpickles with the restricted unpickler, turning every failure into a DataError."""
    try:
        return _RestrictedUnpickler(fileobj).load()
    except _RefusedGlobal as refused:
        raise DataError(f"{path}: refused to unpickle '{refused}' (only containers, numbers, "
                        "strings and numpy arrays are allowed)") from None
    except Exception as error:  # corrupt bytes can surface as almost any exception type
        raise DataError(f"{path}: unreadable pickle ({type(error).__name__}: {error})") from None


def _require_file(path, what):
    if not os.path.isfile(path):
        raise DataError(f"{path}: {what} not found")


# ----------------------------------------------------------------------------- label files

def load_labels(path):
    """Reads a label file into a list of dicts with keys name, text, gloss (list), pose_file.

    Accepts Uni-Sign's gzip-pickled `name -> {name, gloss, text, video_path}` dicts and the
    CSL-News JSON list of `{video, pose, text}`. The first unusable entry raises its DataError.
    """
    entries = read_label_entries(path)
    for entry in entries:
        if isinstance(entry, DataError):
            raise entry
    return entries


def read_label_entries(path):
    """load_labels() that keeps going: every entry in file order, as its dict or as the DataError
    saying why it is unusable. A missing or unreadable file still raises."""
    raw = _read_label_file(path)
    if isinstance(raw, dict):
        parse, items = _label_entry, raw.items()
    elif isinstance(raw, list):
        parse, items = _news_entry, enumerate(raw)
    else:
        raise DataError(f"{path}: expected a dict or a list of samples, found {type(raw).__name__}")
    entries = []
    for key, entry in items:
        try:
            entries.append(parse(path, key, entry))
        except DataError as error:
            entries.append(error)
    return entries


def _read_label_file(path):
    _require_file(path, "label file")
    try:
        with open(path, 'rb') as f:
            magic = f.read(2)
            f.seek(0)
            if magic == b'\x1f\x8b':
                with gzip.GzipFile(fileobj=f) as unzipped:
                    return _unpickle(unzipped, path)
            return json.loads(f.read().decode('utf-8'))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise DataError(f"{path}: unreadable label file, neither a gzip pickle nor JSON "
                        f"({type(error).__name__}: {error})") from None


def _label_entry(path, key, entry):
    if not isinstance(entry, dict):
        raise DataError(f"{path}: entry {key!r} is a {type(entry).__name__}, expected a dict")
    name = entry.get('name', key)
    text = entry.get('text')
    video_path = entry.get('video_path')
    if not isinstance(text, str):
        raise DataError(f"{path}: entry {name!r} has no text")
    if not isinstance(video_path, str):
        raise DataError(f"{path}: entry {name!r} has no video_path")
    pose_file = video_path[:-4] + '.pkl' if video_path.endswith('.mp4') else video_path
    return {'name': str(name), 'text': text, 'gloss': _gloss_list(path, name, entry),
            'pose_file': pose_file}


def _gloss_list(path, name, entry):
    gloss = entry.get('gloss', [])
    if isinstance(gloss, str):  # WLASL, How2Sign and OpenASL store '' for "no gloss"
        return gloss.split()
    if isinstance(gloss, (list, tuple)) and all(isinstance(g, str) for g in gloss):
        return list(gloss)
    raise DataError(f"{path}: entry {name!r} has a gloss that is not a list of strings")


def _news_entry(path, index, entry):
    if not isinstance(entry, dict):
        raise DataError(f"{path}: entry #{index} is a {type(entry).__name__}, expected a dict")
    name = entry.get('video', f'#{index}')
    for key in ('video', 'pose', 'text'):
        if not isinstance(entry.get(key), str):
            raise DataError(f"{path}: entry {name!r} has no {key}")
    return {'name': name, 'text': entry['text'], 'gloss': [], 'pose_file': entry['pose']}


# ----------------------------------------------------------------------------- pose files

def read_pose(path, fps=None):
    """Reads and validates a pose pickle, or a pose-format `.pose` file (by extension).

    Returns 'keypoints' (T, 1, 133, 2) and 'scores' (T, 1, 133) as float32 (the first person
    of each frame, as Uni-Sign uses), plus 'start'/'end' when the file restricts the clip.
    `.pose` files (MediaPipe Holistic or COCO-WholeBody) are mapped by mediapipe_pose.py and
    resampled to `fps` frames per second when it is given; pickles carry no frame rate and are
    returned as stored.
    """
    if os.fspath(path).endswith('.pose'):
        import mediapipe_pose  # imported here: it builds on this module
        return mediapipe_pose.read_pose_file(path, fps=fps)
    _require_file(path, "pose file")
    try:
        with open(path, 'rb') as f:
            pose = _unpickle(f, path)
    except OSError as error:
        raise DataError(f"{path}: unreadable pose file ({error})") from None
    if not isinstance(pose, dict):
        raise DataError(f"{path}: pose file holds a {type(pose).__name__}, expected a dict")
    missing = [key for key in ('keypoints', 'scores') if key not in pose]
    if missing:
        raise DataError(f"{path}: pose file lacks {', '.join(map(repr, missing))}")
    keypoints = _frames_array(pose['keypoints'], path, 'keypoints', (NUM_KEYPOINTS, 2))
    scores = _frames_array(pose['scores'], path, 'scores', (NUM_KEYPOINTS,))
    if len(keypoints) != len(scores):
        raise DataError(f"{path}: {len(keypoints)} frames of keypoints but {len(scores)} of scores")
    if len(keypoints) == 0:
        raise DataError(f"{path}: zero-length clip")
    for key, values in (('keypoints', keypoints), ('scores', scores)):
        finite = np.isfinite(values).reshape(len(values), -1).all(axis=1)
        if not finite.all():
            raise DataError(f"{path}: {key} contain NaN or Inf (first at frame "
                            f"{int(np.argmin(finite))})")
    clip = {'keypoints': keypoints, 'scores': scores}
    clip.update(_clip_window(pose, len(keypoints), path))
    return clip


def _frames_array(value, path, key, joint_shape):
    """Stacks per-frame arrays (N, *joint_shape) or checks a (T, N, *joint_shape) array."""
    expected = f"(T, N, {', '.join(map(str, joint_shape))})"
    if isinstance(value, (list, tuple)):
        frames = []
        for index, frame in enumerate(value):
            if not isinstance(frame, np.ndarray) or frame.shape[1:] != joint_shape \
                    or len(frame) == 0:
                shape = getattr(frame, 'shape', type(frame).__name__)
                raise DataError(f"{path}: {key} frame {index} has shape {shape}, expected "
                                f"(N, {', '.join(map(str, joint_shape))}) with N >= 1 people")
            frames.append(frame[:1])
        array = np.stack(frames) if frames else np.zeros((0, 1) + joint_shape)
    elif isinstance(value, np.ndarray):
        if value.ndim != 2 + len(joint_shape) or value.shape[2:] != joint_shape \
                or value.shape[1] == 0:
            raise DataError(f"{path}: {key} has shape {value.shape}, expected {expected} with a "
                            "person axis N >= 1")
        array = value[:, :1]
    else:
        raise DataError(f"{path}: {key} is a {type(value).__name__}, expected an array {expected}")
    if array.dtype.kind not in 'fiu':
        raise DataError(f"{path}: {key} has non-numeric dtype {array.dtype}")
    return np.ascontiguousarray(array, dtype=np.float32)


def _clip_window(pose, num_frames, path):
    if 'start' not in pose and 'end' not in pose:
        return {}
    if 'start' not in pose or 'end' not in pose:
        raise DataError(f"{path}: pose file has only one of 'start' and 'end'")
    start, end = pose['start'], pose['end']
    if not all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) for v in (start, end)):
        raise DataError(f"{path}: 'start'/'end' must be integers, got {start!r}/{end!r}")
    if not 0 <= start < end <= num_frames:
        raise DataError(f"{path}: invalid clip window start={start} end={end} for a "
                        f"{num_frames}-frame file (need 0 <= start < end <= frames)")
    return {'start': int(start), 'end': int(end)}


def clip_span(pose):
    """Returns (first frame, number of frames) of the clip a read_pose() dict describes."""
    if 'start' in pose:
        return pose['start'], pose['end'] - pose['start']
    return 0, len(pose['scores'])


def sample_frame_indices(duration, max_length, train, rng=None, start=0):
    """Absolute frame indices of a clip of `duration` frames beginning at `start`.

    Clips longer than max_length keep a sorted random subset when training (as Uni-Sign) and
    an evenly spaced, deterministic subset otherwise. rng defaults to the `random` module.
    """
    if duration <= max_length:
        picked = np.arange(duration)
    elif train:
        picked = np.array(sorted((rng or random).sample(range(duration), k=max_length)))
    else:
        # the spacing exceeds one frame here, so rounding never produces duplicates
        picked = np.unique(np.round(np.linspace(0, duration - 1, max_length)))
    return picked.astype(np.int64) + start


# ----------------------------------------------------------------------------- part keypoints

def _first_person(frames):
    """(T, 1+, J, ...) array, or a list of per-frame (1+, J, ...) arrays -> (T, J, ...)."""
    if isinstance(frames, (list, tuple)):
        if all(len(frame) == 1 for frame in frames):  # the usual case, and the fastest
            return np.concatenate(frames)
        return np.stack([frame[0] for frame in frames])
    return np.asarray(frames)[:, 0]


def _crop_scale_body(body, threshold):
    """Uni-Sign's crop_scale on channel planes (3, T, V), in place.

    Maps x and y by the square box around the clip's confident joints into [-1, 1] and
    returns the box side, or 0 when fewer than 4 joints are confident or the box is empty.
    """
    confident = body[2] > threshold
    xs, ys = body[0][confident], body[1][confident]
    if len(xs) < 4:
        return 0
    x_low, x_high, y_low, y_high = xs.min(), xs.max(), ys.min(), ys.max()
    scale = max(x_high - x_low, y_high - y_low)
    if scale == 0:
        return 0
    for plane, low, high in ((body[0], x_low, x_high), (body[1], y_low, y_high)):
        plane -= (low + high - scale) / 2
        plane /= scale
        plane -= 0.5
        plane *= 2
    return scale


def _part_planes(keypoints, scores):
    """Gathers the part joints into channel planes (x, y, score) of shape (3, T, 69)."""
    dtype = np.result_type(keypoints, scores)  # the precision Uni-Sign computes in
    if dtype.kind != 'f':
        dtype = np.dtype(np.float64)
    gathered = np.take(keypoints, _GATHERED_JOINTS, axis=1)
    relative = gathered[:, _NUM_BODY_JOINTS:_NUM_PART_JOINTS] - gathered[:, _NUM_PART_JOINTS:]
    planes = np.empty((3, len(keypoints), _NUM_PART_JOINTS), dtype)
    planes[:2, :, :_NUM_BODY_JOINTS] = gathered[:, :_NUM_BODY_JOINTS].transpose(2, 0, 1)
    planes[:2, :, _NUM_BODY_JOINTS:] = relative.transpose(2, 0, 1)
    planes[2] = np.take(scores, _GATHERED_JOINTS[:_NUM_PART_JOINTS], axis=1)
    return planes


def load_part_kp(skeletons, confs, force_ok=False):
    """Splits a clip into part tensors {part: float32 (T, V, 3)} with channels x, y, score.

    skeletons/confs: lists of per-frame arrays (1, 133, 2)/(1, 133) as Uni-Sign passes them,
    or stacked (T, 1, 133, 2)/(T, 1, 133). The body is normalised into [-1, 1] by the clip's
    bounding square of confident body joints; hands and face are taken relative to their
    anchor joint and divided by the same side; joints scoring <= 0.3 are zeroed, and
    everything is zero when the square is undefined. The numbers match Uni-Sign's per-frame
    version operation for operation; force_ok is accepted and, as there, has no effect.
    """
    keypoints, scores = _first_person(skeletons), _first_person(confs)
    planes = _part_planes(keypoints, scores)
    scale = _crop_scale_body(planes[:, :, :_NUM_BODY_JOINTS], SCORE_THRESHOLD)
    if scale == 0:
        planes[:] = 0
    else:
        planes[:2, :, _NUM_BODY_JOINTS:] /= scale
        # As in Uni-Sign, the score channel is clipped too, and masking uses the clipped score.
        np.clip(planes, -1, 1, out=planes)
        unreliable = planes[2] <= SCORE_THRESHOLD
        for plane in planes:
            plane[unreliable] = 0
    planes = planes.astype(np.float32, copy=False)
    return {part: torch.from_numpy(np.ascontiguousarray(planes[:, :, low:high].transpose(1, 2, 0)))
            for part, low, high in zip(PARTS, _PART_BOUNDS[:-1], _PART_BOUNDS[1:])}


# ----------------------------------------------------------------------------- dataset

def _news_split(entries, phase):
    """CSL-News ships one label list; like Uni-Sign, its last 1% is held out for evaluation."""
    boundary = int(len(entries) * 0.99)
    return entries[:boundary] if phase == 'train' else entries[boundary:]


def pad_repeat_last(clips, lengths):
    """Stacks clips (T_i, ...) into (B, max T, ...), padding each with copies of its last frame."""
    flat = torch.cat(clips, dim=0)
    first_rows = torch.cumsum(lengths, 0) - lengths
    steps = torch.arange(int(lengths.max()))
    rows = first_rows[:, None] + torch.minimum(steps[None, :], lengths[:, None] - 1)
    return flat[rows]


def open_packed_store(pose_dir, packed_dir=None):
    """The PackedPoseStore in packed_dir, or in pose_dir if it holds one; otherwise None."""
    import pose_store  # imported here because pose_store builds on this module
    if packed_dir is None and not pose_store.is_packed_store(pose_dir):
        return None
    return pose_store.PackedPoseStore(pose_dir if packed_dir is None else packed_dir)


class S2T_Dataset(torch.utils.data.Dataset):
    """Pose clips with their sentence (or gloss string, for task CSLR) for one split.

    Items are (name, {part: (T, V, 3)}, text, gloss string); collate_fn builds the padded
    batch. Training clips longer than max_length get a random sorted subset of frames, other
    phases an evenly spaced one. The random subset is drawn from a generator seeded by
    (seed, epoch, index), so it does not depend on workers and a resumed run draws the same
    frames; the trainer calls set_epoch() before each epoch's DataLoader iterator starts.
    Clips come from a packed pose store (pose_store.py) when pose_dir holds one or packed_dir
    names one; an entry's clip is its pose_file without extension. An unusable label entry
    stops construction, or with defer_label_errors is left out and its message kept in
    `label_problems` for validate_samples to report with the pose files' problems.
    """
    pose_fps = None  # `.pose` inputs are resampled to this rate when set

    def __init__(self, label_path, pose_dir, phase, dataset_name='CSL_Daily', max_length=256,
                 tokenizer=None, task='SLT', max_tgt_len=50, seed=0, packed_dir=None,
                 defer_label_errors=False, pose_fps=None):
        entries = read_label_entries(label_path) if defer_label_errors else load_labels(label_path)
        self.store = open_packed_store(pose_dir, packed_dir)
        if 'CSL_News' in dataset_name:  # split first, so a bad entry does not move the boundary
            entries = _news_split(entries, phase)
        self.entries = [entry for entry in entries if not isinstance(entry, DataError)]
        self.label_problems = [str(entry) for entry in entries if isinstance(entry, DataError)]
        self.pose_dir = pose_dir
        self.phase = phase
        self.dataset_name = dataset_name
        self.lang = 'Chinese' if 'CSL' in dataset_name else 'English'
        self.max_length = max_length
        self.tokenizer = tokenizer
        self.task = task
        self.max_tgt_len = max_tgt_len
        self.seed = seed
        self.epoch = 0
        self._durations = {}
        self.pose_fps = pose_fps

    def __len__(self):
        return len(self.entries)

    def __str__(self):
        return f'#total {len(self)}'

    def pose_path(self, index):
        return os.path.join(self.pose_dir, self.entries[index]['pose_file'])

    def set_epoch(self, epoch):
        self.epoch = epoch

    def _sampling_rng(self, index):
        return random.Random(f"{self.seed}-{self.epoch}-{index}")

    def read_clip(self, index):
        """read_pose() of an entry's pose file; also remembers the clip's duration."""
        if self.store is not None:
            pose = self.store.read(self.clip_name(index))
        else:
            pose = read_pose(self.pose_path(index), fps=self.pose_fps)
        self._durations[index] = clip_span(pose)[1]
        return pose

    def clip_name(self, index):
        import pose_store
        return pose_store.clip_name(self.entries[index]['pose_file'])

    def __getitem__(self, index):
        entry = self.entries[index]
        pose = self.read_clip(index)
        start, duration = clip_span(pose)
        frames = sample_frame_indices(duration, self.max_length, self.phase == 'train',
                                      self._sampling_rng(index), start)
        parts = load_part_kp(pose['keypoints'][frames], pose['scores'][frames])
        gloss = ' '.join(entry['gloss'])
        text = gloss if self.task == 'CSLR' else entry['text']
        return entry['name'], parts, text, gloss

    def lengths(self):
        """Clip lengths after sampling; reads (once) the pose files not yet seen."""
        for index in range(len(self)):
            if index in self._durations:
                continue
            if self.store is not None:  # the store's index knows every duration
                self._durations[index] = self.store.span(self.clip_name(index))[1]
            else:
                self.read_clip(index)
        return [min(self._durations[i], self.max_length) for i in range(len(self))]

    def keep(self, indices):
        """Restricts the dataset to the given entry indices (in that order)."""
        durations = self._durations
        self._durations = {new: durations[old] for new, old in enumerate(indices)
                           if old in durations}
        self.entries = [self.entries[i] for i in indices]

    def collate_fn(self, batch):
        names, clips, texts, glosses = zip(*batch)
        lengths = torch.tensor([len(clip['body']) for clip in clips], dtype=torch.long)
        src_input = {part: pad_repeat_last([clip[part] for clip in clips], lengths)
                     for part in PARTS}
        steps = torch.arange(src_input['body'].shape[1])
        src_input['attention_mask'] = (steps[None, :] < lengths[:, None]).long()
        src_input['name_batch'] = list(names)
        src_input['src_length_batch'] = lengths
        tgt_input = {'gt_sentence': list(texts), 'gt_gloss': list(glosses)}
        if self.tokenizer is not None:
            self._add_token_ids(src_input, tgt_input)
        return src_input, tgt_input

    def _add_token_ids(self, src_input, tgt_input):
        sentences = tgt_input['gt_sentence']
        prefix = self.tokenizer([PROMPT.format(self.lang)] * len(sentences), padding='longest',
                                truncation=True, return_tensors='pt')
        src_input['prefix_ids'] = prefix['input_ids'].long()
        src_input['prefix_mask'] = prefix['attention_mask'].long()
        target = self.tokenizer(sentences, padding='longest', truncation=True,
                                max_length=self.max_tgt_len, return_tensors='pt')
        labels = target['input_ids'].long()
        labels[labels == self.tokenizer.pad_token_id] = -100
        tgt_input['labels'] = labels


def validate_samples(dataset, skip_bad=False, workers=0, findings=None):
    """Checks every sample of `dataset` once; returns (ok indices, problem messages).

    Pose files are read and checked by sample_checks.scan_samples (in `workers` processes), or
    `findings`, the (durations, problems) of a scan done already, is used (the trainers gather
    one over ranks). Problems are the deferred label-entry ones, then the pose files' in dataset
    order. With problems and skip_bad False this raises a DataError quoting the first few and
    counting each kind; with skip_bad True the bad entries are dropped (see S2T_Dataset.keep).
    """
    import sample_checks  # imported here because sample_checks builds on this module
    durations, pose_problems = findings or sample_checks.scan_samples(dataset, workers=workers)
    label_problems = getattr(dataset, 'label_problems', [])
    problems = label_problems + [pose_problems[i] for i in sorted(pose_problems)]
    ok_indices = [i for i in range(len(dataset)) if i not in pose_problems]
    if problems and not skip_bad:
        raise DataError(sample_checks.describe_problems(
            problems, len(dataset) + len(label_problems)))
    dataset._durations.update(durations)
    if pose_problems:
        dataset.keep(ok_indices)
    dataset.label_problems = []
    return ok_indices, problems
