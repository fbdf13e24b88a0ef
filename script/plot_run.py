"""Draws the training curves of one or more output folders into a PNG.

    python script/plot_run.py out/x                       # writes out/x/curves.png
    python script/plot_run.py out/a out/b --out cmp.png   # runs overlaid, labelled by folder

Reads `log.txt` (one JSON record per epoch) and, when present, `log_steps.txt` (one per logged
step). Every numeric key gets a curve, grouped into one panel per quantity: the losses (per step
and per-epoch averages), the learning rate, each metric family (BLEU-1..4, ROUGE-L, WER, top-1,
...) for dev and test, and every other logged statistic. The x axis is in epochs: a step's record
sits at epoch + step / steps in that epoch, an epoch record at the end of its epoch.
"""
import argparse
import json
import os
import re
import sys
from collections import defaultdict

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import cli  # noqa: E402
from config import ConfigError  # noqa: E402
from run_folder import check_writable_file  # noqa: E402

BOOKKEEPING = {"epoch", "step", "train_steps", "train_nonfinite_steps"}
SPLITS = ("train", "best_dev", "dev", "test")


def read_json_lines(path):
    records = []
    with open(path, encoding="utf-8") as f:
        for number, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError as error:
                raise SystemExit(f"{path}:{number}: not a JSON line ({error})")
    return records


def read_run(folder):
    """(epoch records, step records) of an output folder."""
    epoch_log, step_log = os.path.join(folder, "log.txt"), os.path.join(folder, "log_steps.txt")
    if not os.path.isfile(epoch_log) and not os.path.isfile(step_log):
        raise SystemExit(f"plot_run.py: error: {folder}: neither log.txt nor log_steps.txt found (not an output folder?)")
    epochs = read_json_lines(epoch_log) if os.path.isfile(epoch_log) else []
    steps = read_json_lines(step_log) if os.path.isfile(step_log) else []
    return epochs, steps


def family(name):
    """Panel of a quantity: all losses together, numbered metrics (bleu1..4) together."""
    if name.endswith("loss"):
        return "loss"
    if name.startswith("top1"):
        return "top-1"
    return re.sub(r"\d+$", "", name)


def split_key(key):
    """('dev', 'bleu4') for 'dev_bleu4'; (None, key) for keys without a split prefix."""
    for split in SPLITS:
        if key.startswith(split + "_"):
            return split, key[len(split) + 1:]
    return None, key


def step_positions(steps):
    """Fractional epoch of each step record (step counts within its epoch)."""
    per_epoch = defaultdict(int)
    for record in steps:
        per_epoch[record.get("epoch", 0)] = max(per_epoch[record.get("epoch", 0)],
                                                record.get("step", 0) + 1)
    return [record.get("epoch", 0) + record.get("step", 0) / per_epoch[record.get("epoch", 0)]
            for record in steps]


def numeric(value):
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def collect_series(epochs, steps, label):
    """{panel: [(curve label, xs, ys, per_step)]} for one run."""
    panels = defaultdict(list)
    positions = step_positions(steps)
    step_keys = sorted({k for r in steps for k, v in r.items() if numeric(v)} - BOOKKEEPING)
    for key in step_keys:
        points = [(x, r[key]) for x, r in zip(positions, steps) if numeric(r.get(key))]
        panels[family(key)].append((f"{label}{key} (step)", *zip(*points), True))
    epoch_keys = sorted({k for r in epochs for k, v in r.items() if numeric(v)} - BOOKKEEPING)
    for key in epoch_keys:
        split, name = split_key(key)
        if split == "train" and name == "lr" and steps:
            continue  # drawn per step already
        points = [(r.get("epoch", i) + 1, r[key]) for i, r in enumerate(epochs) if numeric(r.get(key))]
        panels[family(name)].append((f"{label}{key}", *zip(*points), False))
    return panels


def panel_order(name):
    rank = {"loss": 0, "lr": 1, "bleu": 2, "rouge": 3, "wer": 4, "top-1": 5}
    return rank.get(name, 10), name


def draw(panels, out_path):
    names = sorted(panels, key=panel_order)
    columns = min(3, len(names))
    rows = -(-len(names) // columns)
    figure, axes = plt.subplots(rows, columns, figsize=(5.2 * columns, 3.6 * rows), squeeze=False)
    for axis, name in zip(axes.flat, names):
        for curve_label, xs, ys, per_step in panels[name]:
            style = dict(linewidth=0.8, alpha=0.6) if per_step else dict(marker="o", markersize=3)
            if "best_" in curve_label:
                style = dict(linestyle="--", linewidth=1)
            axis.plot(xs, ys, label=curve_label, **style)
        axis.set_title(name)
        axis.set_xlabel("epoch")
        axis.grid(alpha=0.3)
        axis.legend(fontsize=7)
    for axis in list(axes.flat)[len(names):]:
        axis.axis("off")
    figure.tight_layout()
    figure.savefig(out_path, dpi=100)
    plt.close(figure)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    cli.add_flag(parser, "folders", nargs="+", help="output folders of fine_tuning.py runs")
    cli.add_flag(parser, "--out", help="PNG file (default: <first folder>/curves.png)")
    args = parser.parse_args(argv)
    panels = defaultdict(list)
    for folder in args.folders:
        epochs, steps = read_run(folder)
        label = f"{os.path.basename(os.path.normpath(folder))}: " if len(args.folders) > 1 else ""
        for name, curves in collect_series(epochs, steps, label).items():
            panels[name] += curves
    if not panels:
        raise SystemExit(f"no numeric values in the logs of {', '.join(args.folders)}")
    out_path = args.out or os.path.join(args.folders[0], "curves.png")
    try:
        check_writable_file(out_path, "--out")
    except ConfigError as error:
        parser.exit(1, f"plot_run.py: error: {error}\n")
    draw(panels, out_path)
    print(out_path)


if __name__ == "__main__":
    sys.exit(main())
