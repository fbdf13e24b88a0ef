#!/usr/bin/env bash
# Creates .venv-video: the environment in which poses are extracted from videos.
# MediaPipe's Holistic wheels pin numpy<2 and protobuf<5, which the core stack cannot take,
# so extraction runs here and the core calls it through a subprocess (video_poses.py).
# Usage: bash script/setup_video.sh [VENV_DIR]   (default: .venv-video in the repository)
set -euo pipefail
cd "$(dirname "$0")/.."
VENV="${1:-.venv-video}"
PY="${PYTHON:-python3}"
"$PY" -m venv "$VENV"
"$VENV/bin/python" -m pip install -q --upgrade pip
# 0.10.14-0.10.21 still ship the Holistic graph and its models inside the wheel (offline).
"$VENV/bin/python" -m pip install -q "mediapipe>=0.10.14,<=0.10.21" "numpy<2" \
  "pose-format>=0.15" tqdm ${VIDEO_EXTRA:-}
"$VENV/bin/python" - <<'PY'
import mediapipe, numpy, pose_format, cv2
from mediapipe.python.solutions import holistic  # noqa: F401  fails when Holistic is gone
print(f"video env ready: mediapipe {mediapipe.__version__}, numpy {numpy.__version__}, "
      f"opencv {cv2.__version__}")
PY
