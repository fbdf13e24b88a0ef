"""Draws a clip's normalised part keypoints, as the encoders see them, as a strip of frames.

    python script/render_pose.py clip.pkl --out clip.png --frames 8
    python script/render_pose.py clip.pose --out clip.png --fps 25
    python script/render_pose.py clip.pkl --out clip.gif     # the whole signer, animated

Rows: the whole signer (parts put back together), then the four part tensors load_part_kp
returns: body (in [-1, 1] by the clip's bounding square), left and right hand (relative to
their wrist) and face (relative to the nose tip). Columns: evenly spaced frames. Bones follow
the part graphs of stgcn_layers.py (the face's spokes to its centre are drawn faint); joints
with score 0 (undetected, or at most 0.3 before normalisation) are left out. Image y points
down, as in the video. An --out ending in .gif gets the whole-signer row as an animation instead
(Pillow), every frame (or --frames evenly spaced ones) over the clip's duration at --fps (25 when
not given; pickles carry no frame rate).
"""
import argparse
import os
import sys

import matplotlib
import numpy as np

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import cli  # noqa: E402
from datasets import PARTS, load_part_kp, read_pose  # noqa: E402
from stgcn_layers import LAYOUTS  # noqa: E402

COLORS = {"body": "tab:blue", "left": "tab:green", "right": "tab:orange", "face_all": "tab:purple"}
# Where each part is attached in the whole-signer row: index of the body joint it hangs from
# (the body part's left/right wrist and nose), and the factor from part units to body units
# (the body spans 2 units per bounding-square side, the parts 1).
ATTACH = {"left": 7, "right": 8, "face_all": 0}
PART_TO_BODY = 2.0
GIF_FPS = 25.0


def load_parts(path, fps=None):
    """{part: (T, V, 3) numpy} for the whole clip (its start/end window when it has one)."""
    pose = read_pose(path, fps=fps)
    start, end = pose.get("start", 0), pose.get("end", len(pose["scores"]))
    parts = load_part_kp(pose["keypoints"][start:end], pose["scores"][start:end])
    return {part: tensor.numpy() for part, tensor in parts.items()}


def whole_signer(parts, frame):
    """{part: (V, 3)} of one frame in body coordinates; a part whose anchor is missing is empty."""
    body = parts["body"][frame]
    placed = {"body": body}
    for part, joint in ATTACH.items():
        points = parts[part][frame].copy()
        if body[joint, 2] > 0:
            points[:, :2] = body[joint, :2] + PART_TO_BODY * points[:, :2]
        else:
            points[:, 2] = 0
        placed[part] = points
    return placed


def draw_skeleton(axis, points, part, size=6):
    """Bones between detected joints, then the joints; points (V, 3) with x, y, score."""
    _, edges, centre = LAYOUTS[part]
    seen = points[:, 2] > 0
    for i, j in edges:
        if seen[i] and seen[j]:
            faint = part == "face_all" and centre in (i, j)
            axis.plot(points[[i, j], 0], points[[i, j], 1], color=COLORS[part],
                      linewidth=0.4 if faint else 1.2, alpha=0.25 if faint else 0.9)
    axis.scatter(points[seen, 0], points[seen, 1], s=size, color=COLORS[part], zorder=3)


def limits(point_sets):
    """Square axis limits covering every detected point of the given (V, 3) arrays."""
    seen = [p[p[:, 2] > 0, :2] for p in point_sets]
    seen = np.concatenate([s for s in seen if len(s)] or [np.zeros((1, 2))])
    low, high = seen.min(0), seen.max(0)
    centre, half = (low + high) / 2, max((high - low).max() / 2, 1e-3) * 1.1
    return (centre[0] - half, centre[0] + half), (centre[1] + half, centre[1] - half)


def render(parts, frames, title, out_path):
    rows = ["whole"] + list(PARTS)
    figure, axes = plt.subplots(len(rows), len(frames), squeeze=False,
                                figsize=(1.7 * len(frames) + 0.6, 1.7 * len(rows) + 0.5))
    wholes = [whole_signer(parts, f) for f in frames]
    for row, name in enumerate(rows):
        sets = [list(w.values()) for w in wholes] if name == "whole" else \
            [[parts[name][f]] for f in frames]
        xlim, ylim = limits([p for points in sets for p in points])
        for col, frame in enumerate(frames):
            axis = axes[row, col]
            if name == "whole":
                for part, points in wholes[col].items():
                    draw_skeleton(axis, points, part, size=2)
            else:
                draw_skeleton(axis, parts[name][frame], name)
            axis.set_xlim(xlim)
            axis.set_ylim(ylim)
            axis.set_aspect("equal")
            axis.set_xticks([])
            axis.set_yticks([])
            if row == 0:
                axis.set_title(f"frame {frame}", fontsize=8)
            if col == 0:
                axis.set_ylabel(name, fontsize=9)
    figure.suptitle(title, fontsize=9)
    figure.tight_layout()
    figure.savefig(out_path, dpi=90)
    plt.close(figure)


def animate(parts, out_path, fps=GIF_FPS, max_frames=None, pixels=320):
    """Writes the whole signer as an animated GIF of at most `max_frames` evenly spaced frames
    that lasts as long as the clip at `fps`; returns the number of frames drawn."""
    from PIL import Image
    count = len(parts["body"])
    frames = even_frames(count, max_frames or count)
    wholes = [whole_signer(parts, f) for f in frames]
    xlim, ylim = limits([p for whole in wholes for p in whole.values()])
    figure = plt.figure(figsize=(pixels / 80, pixels / 80), dpi=80)
    axis = figure.add_axes((0, 0, 1, 1))
    images = []
    for frame, whole in zip(frames, wholes):
        axis.clear()
        for part, points in whole.items():
            draw_skeleton(axis, points, part, size=4)
        axis.set_xlim(xlim)
        axis.set_ylim(ylim)
        axis.set_aspect("equal")
        axis.axis("off")
        axis.text(0.02, 0.02, f"frame {frame + 1}/{count}", transform=axis.transAxes, fontsize=8)
        figure.canvas.draw()
        images.append(Image.fromarray(np.asarray(figure.canvas.buffer_rgba())).convert("RGB"))
    plt.close(figure)
    milliseconds = max(20, round(1000 * count / fps / len(frames)))  # browsers slow faster GIFs
    images[0].save(out_path, format="GIF", save_all=True, append_images=images[1:],
                   duration=milliseconds, loop=0)
    return len(frames)


def even_frames(count, wanted):
    """Up to `wanted` evenly spaced frame indices of a clip of `count` frames, first and last
    included."""
    return np.unique(np.round(np.linspace(0, count - 1, min(wanted, count))).astype(int)).tolist()


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    cli.add_flag(parser, "pose_file", help=".pkl or .pose clip")
    cli.add_flag(parser, "--out", required=True, help="PNG file, or GIF for an animation")
    cli.add_flag(parser, "--frames", type=cli.count,
                 help="frames shown, evenly spaced (default: 8 in a PNG, all in a GIF)")
    cli.add_flag(parser, "--fps", type=cli.positive, help=".pose files: resample to this frame rate first")
    args = parser.parse_args(argv)
    from config import ConfigError
    from datasets import DataError
    from run_folder import check_writable_file
    try:
        check_writable_file(args.out, "--out")
        parts = load_parts(args.pose_file, args.fps)
    except (ConfigError, DataError) as error:
        raise SystemExit(f"render_pose.py: error: {error}")
    count = len(parts["body"])
    if args.out.lower().endswith(".gif"):
        animate(parts, args.out, args.fps or GIF_FPS, args.frames)
    else:
        render(parts, even_frames(count, args.frames or 8),
               f"{os.path.basename(args.pose_file)} ({count} frames)", args.out)
    print(args.out)


if __name__ == "__main__":
    main()
