"""Central path configuration: the mT5 directory and, per dataset, label files and pose folders.

Defaults follow Uni-Sign's layout (labels under ./data, poses under ./dataset, mT5 under
./pretrained_weight/mt5-base). Override with flags (--mt5_path, --data_root, --pose_root) or
environment variables (MT5_PATH, SIGN_DATA_ROOT, SIGN_POSE_ROOT). The generated `Demo` set keeps
labels, poses and its tiny mT5 together under <data_root>/Demo; the generated `PhoenixDemo`
(script/make_phoenix_demo.py) keeps STM files and poses under <data_root>/PhoenixDemo.
"""
import os

mt5_path = os.environ.get("MT5_PATH", "./pretrained_weight/mt5-base")
data_root = os.environ.get("SIGN_DATA_ROOT", "./data")
pose_root = os.environ.get("SIGN_POSE_ROOT", "./dataset")

# Label files are relative to data_root; pose folders are templates over {data_root},
# {pose_root} and {phase}. A phase mapped to None does not exist for that dataset.
DATASETS = {
    "CSL_Daily": {
        "labels": {"train": "CSL_Daily/labels.train", "dev": "CSL_Daily/labels.dev",
                   "test": "CSL_Daily/labels.test"},
        "pose_dir": "{pose_root}/CSL_Daily/pose_format",
    },
    "CSL_News": {
        "labels": {"train": "CSL_News/CSL_News_Labels.json", "dev": "CSL_News/CSL_News_Labels.json",
                   "test": "CSL_News/CSL_News_Labels.json"},
        "pose_dir": "{pose_root}/CSL_News/pose_format",
    },
    "WLASL": {
        "labels": {"train": "WLASL/labels-2000.train", "dev": "WLASL/labels-2000.dev",
                   "test": "WLASL/labels-2000.test"},
        "pose_dir": "{pose_root}/WLASL/pose_format/{phase}",
    },
    "How2Sign": {
        "labels": {"train": "How2Sign/labels.train", "dev": None, "test": "How2Sign/labels.test"},
        "pose_dir": "{pose_root}/How2Sign/pose_format/{phase}",
    },
    "OpenASL": {
        "labels": {"train": "OpenASL/labels.train", "dev": "OpenASL/labels.dev",
                   "test": "OpenASL/labels.test"},
        "pose_dir": "{pose_root}/OpenASL/pose_format/{phase}",
    },
    # Continuous recognition (--task CSLR --head ctc): sclite STM ground truth, or for
    # PHOENIX-2014-T, which ships no training STM, the official pipe-separated corpus files.
    "PHOENIX2014": {
        "labels": {phase: f"phoenix2014/phoenix2014-groundtruth-{phase}.stm"
                   for phase in ("train", "dev", "test")},
        "pose_dir": "{pose_root}/phoenix2014/pose_format",
    },
    "PHOENIX2014T": {
        "labels": {phase: f"phoenix2014T/PHOENIX-2014-T.{phase}.corpus.csv"
                   for phase in ("train", "dev", "test")},
        "pose_dir": "{pose_root}/phoenix2014T/pose_format",
    },
    "PhoenixDemo": {
        "labels": {phase: f"PhoenixDemo/phoenix2014-groundtruth-{phase}.stm"
                   for phase in ("train", "dev", "test")},
        "pose_dir": "{data_root}/PhoenixDemo/pose_format",
    },
    "Demo": {
        "labels": {"train": "Demo/labels.train", "dev": "Demo/labels.dev", "test": "Demo/labels.test"},
        "pose_dir": "{data_root}/Demo/pose_format",
        "mt5_path": "{data_root}/Demo/mt5",
    },
}

PHASES = ("train", "dev", "test")


class ConfigError(ValueError):
    """A configured path is missing or a dataset name is unknown."""


def dataset_language(dataset):
    """Target language named in the prompt: Chinese for the CSL sets, English otherwise."""
    return "Chinese" if "CSL" in dataset else "English"


def resolve_paths(dataset, data_root_dir=None, pose_root_dir=None, mt5_dir=None):
    """Returns {'mt5_path', 'labels': {phase: path|None}, 'pose_dirs': {phase: path}}."""
    if dataset not in DATASETS:
        raise ConfigError(f"unknown dataset '{dataset}'; known: {', '.join(DATASETS)}")
    spec = DATASETS[dataset]
    roots = {"data_root": data_root_dir or data_root, "pose_root": pose_root_dir or pose_root}
    labels = {phase: (os.path.join(roots["data_root"], rel) if rel else None)
              for phase, rel in spec["labels"].items()}
    pose_dirs = {phase: spec["pose_dir"].format(phase=phase, **roots) for phase in PHASES}
    if mt5_dir is None:
        mt5_dir = spec["mt5_path"].format(**roots) if "mt5_path" in spec else mt5_path
    return {"mt5_path": mt5_dir, "labels": labels, "pose_dirs": pose_dirs}


def validate_paths(paths, phases, need_mt5=True):
    """Raises ConfigError naming every missing path the run needs, before anything is built."""
    missing = []
    if need_mt5 and not os.path.isdir(paths["mt5_path"]):
        missing.append(f"mT5 directory {paths['mt5_path']} (set --mt5_path or MT5_PATH)")
    for phase in phases:
        label = paths["labels"].get(phase)
        if label is not None and not os.path.isfile(label):
            missing.append(f"{phase} label file {label} (set --data_root or SIGN_DATA_ROOT)")
        if label is not None and not os.path.isdir(paths["pose_dirs"][phase]):
            missing.append(f"{phase} pose directory {paths['pose_dirs'][phase]} "
                           "(set --pose_root or SIGN_POSE_ROOT)")
    if missing:
        raise ConfigError("missing paths:\n  " + "\n  ".join(missing))
