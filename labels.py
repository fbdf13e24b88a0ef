"""Label files: one reader per format, every entry as {name, text, gloss, pose_file, signer}.

Formats (config.py's registry names one per dataset):

- `unisign_pickle`: Uni-Sign's gzip-pickled dict `name -> {name, gloss, text, video_path}`
  (CSL-Daily, WLASL, How2Sign, OpenASL); the pose file is video_path with `.pkl` for `.mp4`.
- `news_json`: the CSL-News JSON list of `{video, pose, text}`.
- `stm`: sclite STM ground truth, `ID CHANNEL SIGNER START END GLOSS ...` (PHOENIX-2014).
- `corpus_csv`: PHOENIX '|'-separated corpus files, `name|video|start|end|speaker|orth|translation`
  (2014-T) or `id|folder|signer|annotation` (2014); the text is the translation column when
  there is one, else the glosses.

A reader returns (or yields) the entries of a file in order. `read_label_entries` keeps going
past unusable entries (each becomes its DataError, in file
order) so the pre-scan can report them with the pose files' problems; `load_labels` raises the
first. Pose files of STM and corpus entries are `NAME.pkl`.
"""
import csv
import gzip
import json
import os

from keypoints import DataError, require_file, unpickle

DEFAULT_SIGNER = "signer"


def load_labels(path, label_format=None):
    """Every entry of a label file; the first unusable entry raises its DataError."""
    entries = read_label_entries(path, label_format)
    for entry in entries:
        if isinstance(entry, DataError):
            raise entry
    return entries


def read_label_entries(path, label_format=None):
    """Every entry in file order, as its dict or as the DataError saying why it is unusable.
    label_format None: told from the content. A missing or unreadable file raises."""
    return list(iter_label_entries(path, label_format))


def iter_label_entries(path, label_format=None):
    """read_label_entries one entry at a time: a million entries need not all be dicts at
    once (label_cache.py stores them in arrays as they come)."""
    require_file(path, "label file")
    label_format = label_format or detect_format(path)
    if label_format not in READERS:
        raise DataError(f"{path}: unknown label format {label_format!r}; known: "
                        f"{', '.join(READERS)}")
    for entry in READERS[label_format](path):
        yield entry if isinstance(entry, DataError) else checked_entry(path, entry)


# Every character str.splitlines() splits at (SLRT_metrics.py reads prediction files with it),
# and the tab.
LINE_BREAKS = str.maketrans({"\r": " ", "\n": " ", "\t": " ", "\v": " ", "\f": " ",
                             "\x1c": " ", "\x1d": " ", "\x1e": " ", "\x85": " ",
                             "\u2028": " ", "\u2029": " "})


def checked_entry(path, entry):
    """An entry as the prediction files can hold it, or its DataError: a blank text counts as
    none; line breaks and tabs inside a text read as spaces (the files hold one text per line
    after `sample: NAME, prediction: `); a name holding whitespace is refused (it would split
    that line or the fields of the CSLR STM/CTM files), as is a pose path that leaves the pose
    folder (absolute, or climbing out with '..')."""
    name = entry["name"]
    if not isinstance(name, str) or name.split() != [name]:
        return DataError(f"{path}: entry {name!r} has a name that is blank or holds whitespace "
                         "(a line break, tab or space), which the prediction files cannot hold")
    text = entry["text"].translate(LINE_BREAKS) if isinstance(entry["text"], str) else ""
    if not text.strip():
        return DataError(f"{path}: entry {name!r} has no text (it is blank)")
    pose_file = entry["pose_file"]
    normal = os.path.normpath(pose_file)
    if os.path.isabs(pose_file):
        return DataError(f"{path}: entry {name!r} has an absolute pose path {pose_file!r}; "
                         "pose paths are relative to the pose folder and may not leave it")
    if normal == ".." or normal.startswith(".." + os.sep):
        return DataError(f"{path}: entry {name!r} has a pose path {pose_file!r} that leaves "
                         "the pose folder")
    glosses = [gloss.translate(LINE_BREAKS) for gloss in entry["gloss"]]
    return {**entry, "text": text, "gloss": [g for gloss in glosses for g in gloss.split()]}


def detect_format(path):
    """The format of a label file told from its first bytes (for files given without a
    dataset): a JSON list -> news_json; text with a '|' header -> corpus_csv, other text -> stm;
    anything else (gzip, a JSON dict) -> unisign_pickle, whose reader names what it finds."""
    with open(path, "rb") as f:
        head = f.read(4096)
    text = head.lstrip()
    if text[:1] == b"[":
        return "news_json"
    if text[:1] == b"{":
        return "unisign_pickle"
    try:
        first_line = text.split(b"\n", 1)[0].decode("utf-8")
    except UnicodeDecodeError:
        return "unisign_pickle"
    if not first_line.isprintable():
        return "unisign_pickle"
    return "corpus_csv" if "|" in first_line else "stm"


def _keep_errors(parse, path, items):
    """Yields each parsed entry, or its DataError."""
    for key, entry in items:
        try:
            yield parse(path, key, entry)
        except DataError as error:
            yield error


# ----------------------------------------------------------------------------- Uni-Sign, CSL-News

def read_unisign_pickle(path):
    """Uni-Sign's `name -> entry` dict (gzip pickle, or the same dict as JSON)."""
    return _keep_errors(_unisign_entry, path, _read_samples(path, dict).items())


def read_news_json(path):
    """The CSL-News list of `{video, pose, text}`."""
    return _keep_errors(_news_entry, path, enumerate(_read_samples(path, list)))


def _read_samples(path, container):
    """The samples of a gzip pickle or JSON document, which must be a `container`."""
    raw = _read_structured(path)
    if isinstance(raw, container):
        return raw
    if isinstance(raw, (dict, list)):
        wanted, other = (("Uni-Sign's name -> entry dict", "the news_json list") if container is dict
                         else ("the CSL-News list", "the unisign_pickle dict"))
        raise DataError(f"{path}: {other} of samples where {wanted} was expected (check the "
                        "dataset's label_format in config.py)")
    raise DataError(f"{path}: expected a dict or a list of samples, found {type(raw).__name__}")


def _read_structured(path):
    """A gzip pickle or a JSON document."""
    try:
        with open(path, 'rb') as f:
            magic = f.read(2)
            f.seek(0)
            if magic == b'\x1f\x8b':
                with gzip.GzipFile(fileobj=f) as unzipped:
                    return unpickle(unzipped, path)
            return json.loads(f.read().decode('utf-8'))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise DataError(f"{path}: unreadable label file, neither a gzip pickle nor JSON "
                        f"({type(error).__name__}: {error})") from None


def _unisign_entry(path, key, entry):
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
            'pose_file': pose_file, 'signer': DEFAULT_SIGNER}


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
    return {'name': name, 'text': entry['text'], 'gloss': [], 'pose_file': entry['pose'],
            'signer': DEFAULT_SIGNER}


# ----------------------------------------------------------------------------- PHOENIX

def read_stm(path):
    """Entries of an sclite STM file (`ID CHANNEL SIGNER START END GLOSS ...`), in file order."""
    entries, seen = [], set()
    with open(path, encoding="utf-8") as handle:
        for number, line in enumerate(handle, 1):
            fields = line.split()
            if not fields or fields[0].startswith(";;"):
                continue
            if len(fields) < 5:
                raise DataError(f"{path}:{number}: expected `ID 1 SIGNER START END GLOSS ...`, "
                                f"found {line.strip()!r}")
            if fields[0] in seen:
                raise DataError(f"{path}:{number}: sample {fields[0]} appears twice")
            seen.add(fields[0])
            entries.append(gloss_entry(fields[0], fields[5:], fields[2]))
    return entries


def read_corpus_csv(path):
    """Entries of a PHOENIX corpus file: `name|...|speaker|orth|translation` (2014-T) or
    `id|folder|signer|annotation` (2014)."""
    with open(path, encoding="utf-8", newline="") as handle:
        reader = csv.DictReader(handle, delimiter="|", quoting=csv.QUOTE_NONE)
        rows, columns = list(reader), set(reader.fieldnames or ())
    name = next((c for c in ("name", "id") if c in columns), None)
    gloss = next((c for c in ("orth", "annotation") if c in columns), None)
    signer = next((c for c in ("speaker", "signer") if c in columns), None)
    if name is None or gloss is None:
        raise DataError(f"{path}: expected a '|'-separated header with name (or id) and orth "
                        f"(or annotation) columns, found {sorted(columns)}")
    return [gloss_entry(row[name], (row[gloss] or "").split(), row.get(signer) or DEFAULT_SIGNER,
                        row.get("translation")) for row in rows]


def gloss_entry(name, glosses, signer, text=None):
    glosses = list(glosses)
    return {"name": name, "gloss": glosses, "text": " ".join(glosses) if text is None else text,
            "pose_file": name + ".pkl", "signer": signer}


READERS = {"unisign_pickle": read_unisign_pickle, "news_json": read_news_json, "stm": read_stm,
           "corpus_csv": read_corpus_csv}
FORMATS = tuple(READERS)
