"""Draws one dumped batch of hyperbolic embeddings (hyperbolic.dump_batch) on the Poincaré disk.

    python script/plot_poincare.py --input out/x/testing.npz --out out/x/poincare.png

Projections to the disk (curvature rescaled to 1, so the boundary is the unit circle):
  pca     (default) log-map every point at the origin, take the two leading directions of an
          uncentred PCA of those tangent vectors, and place each point along its projected
          direction at exactly its original distance from the origin (norm * sqrt(c)).
          Depth in the hierarchy (distance to the origin) is kept; angles are approximate.
  first2  the first two coordinates, times sqrt(c) (exact for hyp_dim = 2, a slice otherwise).
"""
import argparse
import os
import sys
import zipfile

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import cli  # noqa: E402
from config import ConfigError  # noqa: E402
from run_folder import check_writable_file  # noqa: E402

PART_STYLE = {"body": ("tab:blue", "o"), "left": ("tab:green", "<"),
              "right": ("tab:olive", ">"), "face_all": ("tab:purple", "s")}


def load_groups(path):
    """Point groups (name -> (N, D) array) and the curvature c from a dump_batch file;
    ConfigError naming a file that is not one."""
    try:
        data = np.load(path, allow_pickle=False)
        groups, curvature = read_groups(data)
    except (OSError, ValueError, TypeError, IndexError, EOFError, KeyError,
            zipfile.BadZipFile) as error:
        raise ConfigError(f"--input {path} is not a readable .npz of dump_batch ("
                          f"{type(error).__name__}: {str(error).split('. ')[0][:200]})") from None
    if not groups:
        raise ConfigError(f"--input {path} holds no embeddings (expected arrays named "
                          f"{', '.join([*PART_STYLE, 'mean', 'text'])})")
    if any(points.ndim != 2 or not len(points) for points in groups.values()):
        raise ConfigError(f"--input {path}: every embedding array must be (points, dimensions)")
    return groups, curvature


def read_groups(data):
    if not hasattr(data, "files"):
        raise ValueError("a single array, not an .npz archive")
    curvature = float(data["curvature"]) if "curvature" in data else 1.0
    groups = {name: data[name] for name in PART_STYLE if name in data}
    if "mean" in data:
        groups["mean"] = data["mean"]
    if "text" in data:
        text = data["text"]
        groups["text"] = text.reshape(-1, text.shape[-1])  # token mode: one context per part
    return groups, curvature


def logmap0(points, curvature):
    sqrt_c = np.sqrt(curvature)
    norm = np.clip(np.linalg.norm(points, axis=-1, keepdims=True), 1e-15, None)
    return np.arctanh(np.clip(sqrt_c * norm, 0, 1 - 1e-7)) / (sqrt_c * norm) * points


def to_disk(groups, curvature, projection):
    """2-D positions inside the unit disk for every group (see the module docstring)."""
    sqrt_c = np.sqrt(curvature)
    if projection == "first2":
        return {name: pts[:, :2] * sqrt_c for name, pts in groups.items()}
    stacked = np.concatenate(list(groups.values()))
    _, _, basis = np.linalg.svd(logmap0(stacked, curvature), full_matrices=False)
    out = {}
    for name, pts in groups.items():
        direction = logmap0(pts, curvature) @ basis[:2].T
        direction /= np.clip(np.linalg.norm(direction, axis=-1, keepdims=True), 1e-12, None)
        out[name] = direction * np.linalg.norm(pts, axis=-1, keepdims=True) * sqrt_c
    return out


def draw(positions, curvature, projection, out_path):
    fig, ax = plt.subplots(figsize=(6, 6))
    ax.add_patch(plt.Circle((0, 0), 1.0, fill=False, color="black", linewidth=1))
    for name, (color, marker) in PART_STYLE.items():
        if name in positions:
            ax.scatter(*positions[name].T, s=18, c=color, marker=marker, alpha=0.7, label=name)
    if "mean" in positions:
        ax.scatter(*positions["mean"].T, s=50, c="tab:red", marker="*", label="Fréchet mean")
    if "text" in positions:
        ax.scatter(*positions["text"].T, s=30, c="tab:orange", marker="x", label="text")
    if "mean" in positions and "text" in positions and len(positions["text"]) == len(positions["mean"]):
        for start, end in zip(positions["mean"], positions["text"]):
            ax.plot(*zip(start, end), color="grey", linewidth=0.5)
    ax.set(xlim=(-1.05, 1.05), ylim=(-1.05, 1.05), aspect="equal",
           title=f"Poincaré disk (c = {curvature:.3g}, {projection} projection)")
    ax.legend(loc="lower right", fontsize=8)
    fig.savefig(out_path, dpi=150, bbox_inches="tight")
    plt.close(fig)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    cli.add_flag(parser, "--input", required=True, help=".npz written by hyperbolic.dump_batch")
    cli.add_flag(parser, "--out", required=True, help="output image (.png)")
    cli.add_flag(parser, "--projection", default="pca", choices=["pca", "first2"])
    args = parser.parse_args(argv)
    if not os.path.isfile(args.input):
        parser.error(f"--input {args.input} does not exist")
    try:
        check_writable_file(args.out, "--out")
        groups, curvature = load_groups(args.input)
    except ConfigError as error:
        sys.exit(f"plot_poincare.py: error: {error}")
    draw(to_disk(groups, curvature, args.projection), curvature, args.projection, args.out)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
