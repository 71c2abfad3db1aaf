"""Temporal-SSIM throughput: `filters.ssim.consecutive_ssim` (OpenCV) against a skimage loop over the same pairs.

Prints one JSON line: consecutive-frame pairs/s for both at 256x256 and 512x512 RGB, `ratio` = library / skimage
(baseline: `skimage.metrics.structural_similarity`, Wang et al. Gaussian setting, one call per pair), and the
max abs difference of the scores. Frames are real (LAYERFLOW_TEST_DATA or --data) when available, else synthetic.

    python bench/ssim_throughput.py [--pairs 32] [--repeats 3] [--data DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import cv2
import numpy as np
from skimage.metrics import structural_similarity

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from filters.ssim import consecutive_ssim  # noqa: E402

SIZES = (256, 512)
CLIPS = ("videos/davis_blackswan/frames", "videos/sam2_bedroom/frames")  # first one with enough frames is used


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def square(image: np.ndarray, size: int) -> np.ndarray:
    """Centre square crop, resized to size x size."""
    h, w = image.shape[:2]
    side = min(h, w)
    y0, x0 = (h - side) // 2, (w - side) // 2
    return cv2.resize(image[y0:y0 + side, x0:x0 + side], (size, size), interpolation=cv2.INTER_AREA)


def real_frames(data: Path, count: int) -> tuple[list[np.ndarray], str] | None:
    for clip in CLIPS:
        files = sorted((data / clip).glob("*.jpg"))
        if len(files) >= count:
            images = [cv2.cvtColor(cv2.imread(str(f)), cv2.COLOR_BGR2RGB) for f in files[:count]]
            return images, str(data / clip)
    return None


def synthetic_frames(count: int, size: int = 600, seed: int = 0) -> list[np.ndarray]:
    """A smooth random texture panning 3 px per frame, with mild sensor noise."""
    rng = np.random.default_rng(seed)
    coarse = rng.integers(0, 256, (size // 8, (size + 3 * count) // 8 + 2, 3), dtype=np.uint8)
    plate = cv2.resize(coarse, (coarse.shape[1] * 8, size), interpolation=cv2.INTER_CUBIC).astype(np.int16)
    frames = []
    for t in range(count):
        noisy = plate[:, 3 * t:3 * t + size] + rng.integers(-4, 5, (size, size, 3))
        frames.append(np.clip(noisy, 0, 255).astype(np.uint8))
    return frames


def skimage_loop(frames: np.ndarray) -> np.ndarray:
    return np.array([
        structural_similarity(frames[i], frames[i + 1], channel_axis=-1, data_range=255, gaussian_weights=True,
                              sigma=1.5, use_sample_covariance=False)
        for i in range(len(frames) - 1)
    ])


def best_rate(fn, frames: np.ndarray, repeats: int) -> tuple[float, np.ndarray]:
    """Pairs/s of the fastest of `repeats` runs, and the scores."""
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        scores = fn(frames)
        best = min(best, time.perf_counter() - start)
    return (len(frames) - 1) / best, scores


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=32, help="consecutive-frame pairs per size")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per method (best is reported)")
    parser.add_argument("--data", default=os.environ.get("LAYERFLOW_TEST_DATA"), help="test data folder")
    args = parser.parse_args()

    count = args.pairs + 1
    found = real_frames(Path(args.data), count) if args.data else None
    if found:
        images, frames_from = found
    else:
        images, frames_from = synthetic_frames(count), "synthetic smooth-noise video (no real frames found)"
    log(f"frames from {frames_from}; OpenCV threads {cv2.getNumThreads()}")

    result = {"bench": "ssim_throughput", "baseline": "skimage.metrics.structural_similarity (loop over pairs)",
              "library": "OpenCV's separable Gaussian filter, each frame filtered once (float32, frame by frame)",
              "frames_from": frames_from, "pairs": args.pairs, "opencv_threads": cv2.getNumThreads()}
    for size in SIZES:
        frames = np.stack([square(image, size) for image in images])
        consecutive_ssim(frames[:3])  # warm-up
        rate, scores = best_rate(consecutive_ssim, frames, args.repeats)
        sk_rate, sk_scores = best_rate(skimage_loop, frames, args.repeats)
        result[f"{size}x{size}"] = {"pairs_per_s": round(rate, 1), "skimage_pairs_per_s": round(sk_rate, 1),
                                    "ratio": round(rate / sk_rate, 2),
                                    "max_abs_diff": float(f"{np.abs(scores - sk_scores).max():.2e}"),
                                    "mean_ssim": round(float(scores.mean()), 4)}
        log(f"{size}x{size}: {result[f'{size}x{size}']}")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
