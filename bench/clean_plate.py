"""The temporal clean plate (`datagen.cleanplate`) against decoding the same clip, per frame.

Prints one JSON line: at 256x256 and 480x720, ms per source frame to decode the frames the plate is made from (the
whole clip, at most 64 evenly spaced plus the 16 sampled: `datagen.cleanplate.read_frames`, read, resize, crop: the
baseline), to matte them (bgsub, for reference: the build mattes them with its own backend), to estimate the camera
(static test, else the full estimate) and to make the plate (temporal median over the aligned frames, inpainting,
scores); `ratio` = (camera + plate) / decoding, and `ratio_with_matting` the same with the matting. The clip is
`sam2_bedroom/bedroom.mp4` (a still camera, 960x540, 200 frames) from LAYERFLOW_TEST_DATA or --data when available,
else a synthetic panning H.264 clip with a moving object written to a temporary folder.

    python bench/clean_plate.py [--repeats 2] [--data DIR]
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

from datagen.cleanplate import STATIC_PX, PlateClip, TemporalPlate, plate_indices, plate_scores, read_frames  # noqa
from datagen.config import BuildConfig  # noqa: E402
from datagen.decode import decode  # noqa: E402
from datagen.matting.bgsub import BackgroundSubtraction  # noqa: E402
from datagen.matting.camera import MotionEstimator  # noqa: E402
from datagen.sources import discover  # noqa: E402
from manifests.video_io import quantise, write_rgb_video  # noqa: E402

SIZES = ((256, 256), (480, 720))
CLIP = "videos/sam2_bedroom/bedroom.mp4"


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def synthetic_clip(folder: Path, count: int = 96, seed: int = 0) -> Path:
    """A smooth random texture panning 3 px a frame with a dark disk crossing it, 540x960 H.264."""
    rng = np.random.default_rng(seed)
    height, width = 540, 960
    coarse = rng.integers(0, 256, (height // 8 + 4, (width + 3 * count) // 8 + 4, 3), dtype=np.uint8)
    plate = cv2.resize(coarse, (coarse.shape[1] * 8, coarse.shape[0] * 8), interpolation=cv2.INTER_CUBIC)
    frames = []
    for t in range(count):
        frame = cv2.warpAffine(plate, np.float32([[1, 0, -3 * t - 8], [0, 1, -8]]), (width, height))
        cv2.circle(frame, (int(100 + 8 * t), height // 2), 90, (20, 20, 30), -1)
        frames.append(frame)
    path = folder / "synthetic_pan.mp4"
    write_rgb_video(path, np.stack(frames), 24.0)
    return path


def best_seconds(fn, repeats: int):
    """Seconds of the fastest of `repeats` runs, and the last result."""
    best, result = float("inf"), None
    for _ in range(repeats):
        start = time.perf_counter()
        result = fn()
        best = min(best, time.perf_counter() - start)
    return best, result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=2, help="timed runs per step (best is reported)")
    parser.add_argument("--data", default=os.environ.get("LAYERFLOW_TEST_DATA"), help="test data folder")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        real = Path(args.data) / CLIP if args.data else None
        source = real if real is not None and real.is_file() else synthetic_clip(Path(tmp))
        item = discover(str(source))[0]
        log(f"clip {source}; OpenCV threads {cv2.getNumThreads()}")
        plate, matting, estimator = TemporalPlate(), BackgroundSubtraction(), MotionEstimator()
        result = {"bench": "clean_plate", "baseline": "decoding the plate's frames (read, resize, crop; per frame)",
                  "clip": str(source), "clean_plate": plate.name, "opencv_threads": cv2.getNumThreads()}
        for size in SIZES:
            config = BuildConfig(size=size)
            decoded = decode(item, config)
            alpha = quantise(matting(decoded.clip).alpha)  # the sample's matte, as stored
            indices = plate_indices(decoded.source_frames, decoded.clip.frame_indices, plate.source_frames)
            count = len(indices)
            decode_s, whole = best_seconds(lambda config=config, indices=indices: read_frames(item, indices, config),
                                           args.repeats)
            matte_s, matte = best_seconds(lambda whole=whole: matting(whole), args.repeats)

            def camera(frames=whole.frames):
                return estimator.static(frames, STATIC_PX) or estimator(frames)

            camera_s, motion = best_seconds(camera, args.repeats)
            targets = [indices.index(i) for i in decoded.clip.frame_indices]
            clip = PlateClip(whole.frames, matte.alpha, motion.matrices, indices)

            def make(clip=clip, targets=targets, alpha=alpha, motion=motion):
                background, invented = plate(clip, targets, alpha)
                return plate_scores(alpha, invented, background, motion.matrices[targets])

            plate_s, scores = best_seconds(make, args.repeats)
            per_frame = {name: round(1000 * seconds / count, 2) for name, seconds in
                         (("decode", decode_s), ("matte", matte_s), ("camera", camera_s), ("plate", plate_s))}
            key = f"{size[0]}x{size[1]}"
            result[key] = {"source_frames": count, "sampled_frames": len(targets),
                           **{f"{name}_ms_per_frame": value for name, value in per_frame.items()},
                           "ratio": round((camera_s + plate_s) / decode_s, 2),
                           "ratio_with_matting": round((camera_s + plate_s + matte_s) / decode_s, 2),
                           "covered": round(float((alpha > 0).mean()), 4), **scores}
            log(f"{key}: {result[key]}")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
