"""Central configuration: the path roots and the dataset registry.

Defaults follow Uni-Sign's layout (labels under ./data, poses under ./dataset, mT5 under
./pretrained_weight/mt5-base). Override with flags (--mt5_path, --data_root, --pose_root) or
environment variables (MT5_PATH, SIGN_DATA_ROOT, SIGN_POSE_ROOT).

Every dataset is one `DatasetSpec` in DATASETS: its label files and their format, its pose
folders, how dev and test are formed when it ships none, the language of its text (the prompt
names it) and how that text is scored, and the tasks its labels support. The trainer, the data
checker and the scorer read behaviour from here only; adding a corpus is adding an entry (or
calling `register_dataset`), see docs/datasets.md, "Adding a dataset".
"""
import dataclasses
import os
from typing import Optional

from labels import FORMATS as LABEL_FORMATS
from phoenix_wer import VARIANTS as OFFICIAL_WER_VARIANTS

mt5_path = os.environ.get("MT5_PATH", "./pretrained_weight/mt5-base")
data_root = os.environ.get("SIGN_DATA_ROOT", "./data")
pose_root = os.environ.get("SIGN_POSE_ROOT", "./dataset")

PHASES = ("train", "dev", "test")
TASKS = ("SLT", "ISLR", "CSLR")
PROMPT = "Translate sign language video to {}: "


class ConfigError(ValueError):
    """A configured path is missing, a dataset is unknown or a flag cannot act."""


@dataclasses.dataclass(frozen=True)
class DatasetSpec:
    """One dataset.

    labels: label file per phase, relative to the data root; a phase mapped to None is absent
        (a missing dev split is replaced by test, which then selects the best checkpoint).
    label_format: one of LABEL_FORMATS (labels.py reads each).
    pose_dir: pose folder, a template over {data_root}, {pose_root} and {phase}.
    language: language of the text targets; the prompt is PROMPT with it.
    text_scoring: 'char' (each character a token, as Chinese is scored) or 'word'; gloss
        sequences are always scored per word.
    tasks: the tasks its labels support (SLT needs sentences, CSLR gloss sequences, ISLR one
        gloss or word per clip).
    held_out: for a corpus shipped as one label list (every phase names the same file): the
        fraction at its end used as dev and test, the rest is train (CSL-News: 0.01).
    mt5_path: a template for a model folder that comes with the dataset (the generated Demo).
    official_wer: the official gloss rewriting its published WERs are computed after
        (phoenix_wer.VARIANTS: 'phoenix2014', 'phoenix2014t'); CSLR then also logs official_wer.
    """
    labels: dict
    label_format: str
    pose_dir: str
    language: str
    text_scoring: str = "word"
    tasks: tuple = ("SLT",)
    held_out: float = 0.0
    mt5_path: Optional[str] = None
    official_wer: Optional[str] = None

    def __post_init__(self):
        problems = []
        if self.label_format not in LABEL_FORMATS:
            problems.append(f"label_format {self.label_format!r} is not one of {LABEL_FORMATS}")
        if self.text_scoring not in ("char", "word"):
            problems.append(f"text_scoring {self.text_scoring!r} is not 'char' or 'word'")
        if set(self.labels) != set(PHASES) or not self.labels.get("train") \
                or not self.labels.get("test"):
            problems.append(f"labels must map {PHASES} to files (dev may be None)")
        if not set(self.tasks) <= set(TASKS) or not self.tasks:
            problems.append(f"tasks {self.tasks} must be among {TASKS}")
        if self.official_wer not in (None, *OFFICIAL_WER_VARIANTS):
            problems.append(f"official_wer {self.official_wer!r} is not one of "
                            f"{OFFICIAL_WER_VARIANTS}")
        if not 0 <= self.held_out < 1:
            problems.append(f"held_out {self.held_out} must be in [0, 1)")
        if problems:
            raise ConfigError("dataset spec: " + "; ".join(problems))

    @property
    def prompt(self):
        return PROMPT.format(self.language)

    def supports(self, task):
        """Whether the labels support `task`; G2T (gloss to text) needs glosses and sentences."""
        if task == "G2T":
            return {"SLT", "CSLR"} <= set(self.tasks)
        return task in self.tasks

    def scoring_level(self, task):
        """How predictions of `task` are tokenised for scoring: 'char' or 'word'."""
        return self.text_scoring if task in ("SLT", "ISLR", "G2T") else "word"


def _per_phase(template):
    return {phase: template.format(phase=phase) for phase in PHASES}


DATASETS = {
    "CSL_Daily": DatasetSpec(
        labels=_per_phase("CSL_Daily/labels.{phase}"), label_format="unisign_pickle",
        pose_dir="{pose_root}/CSL_Daily/pose_format", language="Chinese", text_scoring="char",
        tasks=("SLT", "CSLR")),
    "CSL_News": DatasetSpec(
        labels={phase: "CSL_News/CSL_News_Labels.json" for phase in PHASES},
        label_format="news_json", pose_dir="{pose_root}/CSL_News/pose_format",
        language="Chinese", text_scoring="char", held_out=0.01),
    "WLASL": DatasetSpec(
        labels=_per_phase("WLASL/labels-2000.{phase}"), label_format="unisign_pickle",
        pose_dir="{pose_root}/WLASL/pose_format/{phase}", language="English", tasks=("ISLR",)),
    "How2Sign": DatasetSpec(
        labels={"train": "How2Sign/labels.train", "dev": None, "test": "How2Sign/labels.test"},
        label_format="unisign_pickle", pose_dir="{pose_root}/How2Sign/pose_format/{phase}",
        language="English"),
    "OpenASL": DatasetSpec(
        labels=_per_phase("OpenASL/labels.{phase}"), label_format="unisign_pickle",
        pose_dir="{pose_root}/OpenASL/pose_format/{phase}", language="English"),
    "PHOENIX2014": DatasetSpec(
        labels=_per_phase("phoenix2014/phoenix2014-groundtruth-{phase}.stm"), label_format="stm",
        pose_dir="{pose_root}/phoenix2014/pose_format", language="German", tasks=("CSLR",),
        official_wer="phoenix2014"),
    # PHOENIX-2014-T ships no training STM: its corpus files carry glosses and translations.
    "PHOENIX2014T": DatasetSpec(
        labels=_per_phase("phoenix2014T/PHOENIX-2014-T.{phase}.corpus.csv"),
        label_format="corpus_csv", pose_dir="{pose_root}/phoenix2014T/pose_format",
        language="German", tasks=("SLT", "CSLR"), official_wer="phoenix2014t"),
    # Generated, download-free sets: script/make_phoenix_demo.py, script/make_phoenix_t_demo.py
    # and python -m demo.data.
    "PhoenixDemo": DatasetSpec(
        labels=_per_phase("PhoenixDemo/phoenix2014-groundtruth-{phase}.stm"), label_format="stm",
        pose_dir="{data_root}/PhoenixDemo/pose_format", language="German", tasks=("CSLR",),
        official_wer="phoenix2014"),
    "PhoenixTDemo": DatasetSpec(
        labels=_per_phase("PhoenixTDemo/PHOENIX-2014-T.{phase}.corpus.csv"),
        label_format="corpus_csv", pose_dir="{data_root}/PhoenixTDemo/pose_format",
        language="German", tasks=("SLT", "CSLR"), mt5_path="{data_root}/PhoenixTDemo/mt5",
        official_wer="phoenix2014t"),
    "Demo": DatasetSpec(
        labels=_per_phase("Demo/labels.{phase}"), label_format="unisign_pickle",
        pose_dir="{data_root}/Demo/pose_format", language="English", tasks=("SLT", "CSLR"),
        mt5_path="{data_root}/Demo/mt5"),
}


def register_dataset(name, **fields):
    """Adds (or replaces) a dataset; `fields` are DatasetSpec's. Returns the spec."""
    DATASETS[name] = DatasetSpec(**fields)
    return DATASETS[name]


def get_dataset(name):
    if name not in DATASETS:
        raise ConfigError(f"unknown dataset '{name}'; known: {', '.join(DATASETS)} "
                          "(add one in config.py's DATASETS)")
    return DATASETS[name]


def dataset_language(dataset):
    """Target language the prompt names for a registered dataset."""
    return get_dataset(dataset).language


def resolve_paths(dataset, data_root_dir=None, pose_root_dir=None, mt5_dir=None):
    """Returns {'mt5_path', 'labels': {phase: path|None}, 'pose_dirs': {phase: path}}."""
    spec = get_dataset(dataset)
    roots = {"data_root": data_root_dir or data_root, "pose_root": pose_root_dir or pose_root}
    labels = {phase: (os.path.join(roots["data_root"], rel) if rel else None)
              for phase, rel in spec.labels.items()}
    pose_dirs = {phase: spec.pose_dir.format(phase=phase, **roots) for phase in PHASES}
    if mt5_dir is None:
        mt5_dir = spec.mt5_path.format(**roots) if spec.mt5_path else mt5_path
    return {"mt5_path": mt5_dir, "labels": labels, "pose_dirs": pose_dirs}


def validate_paths(paths, phases, need_mt5=True, need_poses=True):
    """Raises ConfigError naming every missing path the run needs, before anything is built
    (pose folders only with need_poses)."""
    missing = []
    if need_mt5 and not os.path.isdir(paths["mt5_path"]):
        missing.append(f"mT5 directory {paths['mt5_path']} (set --mt5_path or MT5_PATH)")
    for phase in phases:
        label = paths["labels"].get(phase)
        if label is not None and not os.path.isfile(label):
            missing.append(f"{phase} label file {label} (set --data_root or SIGN_DATA_ROOT)")
        if need_poses and label is not None and not os.path.isdir(paths["pose_dirs"][phase]):
            missing.append(f"{phase} pose directory {paths['pose_dirs'][phase]} "
                           "(set --pose_root or SIGN_POSE_ROOT)")
    if missing:
        raise ConfigError("missing paths:\n  " + "\n  ".join(missing))
