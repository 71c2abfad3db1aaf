"""Camera-motion estimation (`datagen.matting.camera`) against decoding the same clip, per frame.

Prints one JSON line: ms per frame to decode the clip at the build size (`datagen.decode.decode`: read, resize,
crop), to estimate its motion (corners tracked frame to frame, a RANSAC homography each), and to run the cheap
static-camera test, at 256x256 and 480x720; `ratio` = estimation / decoding time per frame. The clip is
`sam2_bedroom/bedroom.mp4` (hand-held, 960x540) from LAYERFLOW_TEST_DATA or --data when available, else a
synthetic panning H.264 clip written to a temporary folder.

    python bench/camera_motion.py [--frames 48] [--repeats 3] [--data DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from datagen.config import BuildConfig  # noqa: E402
from datagen.decode import decode  # noqa: E402
from datagen.matting.camera import MotionEstimator  # noqa: E402
from datagen.sources import discover  # noqa: E402
from manifests.video_io import write_rgb_video  # noqa: E402

SIZES = ((256, 256), (480, 720))
CLIP = "videos/sam2_bedroom/bedroom.mp4"


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def synthetic_clip(folder: Path, count: int, seed: int = 0) -> Path:
    """A smooth random texture panning 4 px and shaking about 1 px per frame, 540x960 H.264."""
    rng = np.random.default_rng(seed)
    height, width = 540, 960
    coarse = rng.integers(0, 256, (height // 8 + 4, (width + 4 * count) // 8 + 4, 3), dtype=np.uint8)
    plate = cv2.resize(coarse, (coarse.shape[1] * 8, coarse.shape[0] * 8), interpolation=cv2.INTER_CUBIC)
    frames = []
    for t in range(count):
        dx, dy = 4 * t + rng.normal(0, 1), 8 + rng.normal(0, 1)
        shift = np.float32([[1, 0, -dx - 8], [0, 1, -dy]])
        frames.append(cv2.warpAffine(plate, shift, (width, height), flags=cv2.INTER_LINEAR))
    path = folder / "synthetic_pan.mp4"
    write_rgb_video(path, np.stack(frames), 24.0)
    return path


def best_ms_per_frame(fn, count: int, repeats: int):
    """ms per frame of the fastest of `repeats` runs, and the last result."""
    best, result = float("inf"), None
    for _ in range(repeats):
        start = time.perf_counter()
        result = fn()
        best = min(best, time.perf_counter() - start)
    return 1000 * best / count, result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=48, help="frames of the clip, decoded and estimated")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per step (best is reported)")
    parser.add_argument("--data", default=os.environ.get("LAYERFLOW_TEST_DATA"), help="test data folder")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        real = Path(args.data) / CLIP if args.data else None
        source = real if real is not None and real.is_file() else synthetic_clip(Path(tmp), args.frames + 2)
        item = discover(str(source))[0]
        log(f"clip {source}; OpenCV threads {cv2.getNumThreads()}")
        result = {"bench": "camera_motion", "baseline": "datagen.decode.decode of the same frames (per frame)",
                  "clip": str(source), "frames": args.frames, "opencv_threads": cv2.getNumThreads()}
        estimator = MotionEstimator()
        for size in SIZES:
            config = BuildConfig(frames=args.frames, fps=24.0, size=size)
            decode_ms, decoded = best_ms_per_frame(lambda config=config: decode(item, config), args.frames,
                                                   args.repeats)
            frames = decoded.clip.frames
            estimate_ms, motion = best_ms_per_frame(lambda frames=frames: estimator(frames), args.frames,
                                                    args.repeats)
            static_ms, _ = best_ms_per_frame(lambda frames=frames: estimator.static(frames, float("inf")),
                                             args.frames, args.repeats)
            key = f"{size[0]}x{size[1]}"
            result[key] = {"decode_ms_per_frame": round(decode_ms, 2), "estimate_ms_per_frame": round(estimate_ms, 2),
                           "static_test_ms_per_frame": round(static_ms, 2), "ratio": round(estimate_ms / decode_ms, 2),
                           "camera": motion.as_dict()}
            log(f"{key}: {result[key]}")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
