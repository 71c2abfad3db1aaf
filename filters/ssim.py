"""Temporal SSIM: mean and min SSIM of consecutive frames of one layer (catches frozen clips and flicker)."""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from manifests.video_io import content_key

# Pairs/s at 256/512 px on 2 CPUs, before this module used OpenCV: pytorch-msssim 199/54; kornia 119/36; torchmetrics
# 124/25, off by 1e-2; skimage 51/10. OpenCV's separable filter and fused arithmetic then took a third of
# pytorch-msssim's time at 256 px (bench/RESULTS.md), with scores within 1e-5 of it.

WINDOW = 11  # Gaussian window (sigma 1.5, truncate 3.5): skimage's `gaussian_weights=True, sigma=1.5`
SIGMA = 1.5
DATA_RANGE = 255.0
C1, C2 = (0.01 * DATA_RANGE) ** 2, (0.03 * DATA_RANGE) ** 2  # pytorch_msssim's K = (0.01, 0.03)


def _gaussian_window(size: int, sigma: float) -> np.ndarray:
    """The normalised 1-D Gaussian of pytorch_msssim's `_fspecial_gauss_1d` (float32)."""
    coords = np.arange(size, dtype=np.float32) - size // 2
    window = np.exp(-(coords**2) / np.float32(2 * sigma**2)).astype(np.float32)
    return window / window.sum()


_KERNEL = _gaussian_window(WINDOW, SIGMA)
_PAD = WINDOW // 2


@dataclass(frozen=True)
class TemporalSSIM:
    mean: float | None  # mean SSIM over consecutive frame pairs; None if fewer than 2 frames
    min: float | None
    # median pair minus the worst pair: a cut, flash or flicker stands out from the clip's own motion, which a
    # fixed bound on `min` cannot tell from a fast pan (that lowers every pair alike)
    drop: float | None


def _filtered(image: np.ndarray) -> np.ndarray:
    """Gaussian-filtered (H, W[, C]) float32, 'valid' region only (as pytorch_msssim: no padding)."""
    out = cv2.sepFilter2D(image, cv2.CV_32F, _KERNEL, _KERNEL, borderType=cv2.BORDER_CONSTANT)
    return out[_PAD:-_PAD, _PAD:-_PAD]


def consecutive_ssim(frames: np.ndarray) -> np.ndarray:
    """SSIM of each consecutive pair of (T, H, W, 3) or (T, H, W) uint8 frames -> (T-1,) float64.

    Same value as `skimage.metrics.structural_similarity(a, b, channel_axis=-1, data_range=255,
    gaussian_weights=True, sigma=1.5, use_sample_covariance=False)` (mean over channels for RGB), within 1e-3, and as
    `pytorch_msssim.ssim` within 1e-5 (float32 rounding). Each frame's mean and mean square are filtered once, not once
    as the left and once as the right image of a pair (3 filters a pair), frame by frame: memory for two frames only.
    """
    frames = np.asarray(frames)
    if frames.dtype != np.uint8 or frames.ndim not in (3, 4):
        raise ValueError(f"expected (T, H, W, C) or (T, H, W) uint8 frames, got {frames.dtype} {frames.shape}")
    height, width = frames.shape[1:3]
    if min(height, width) < WINDOW:
        raise ValueError(f"frames of {height}x{width} are smaller than the {WINDOW}x{WINDOW} SSIM window")
    channels = frames.shape[3] if frames.ndim == 4 else 1
    if channels not in (1, 3, 4):
        raise ValueError(f"expected 1, 3 or 4 channels, got {channels}")
    out = np.empty(max(len(frames) - 1, 0), dtype=np.float64)
    previous = None
    # OpenCV's fused arithmetic (addWeighted: a * x + b * y + c in one pass; mean in float64) over numpy's one
    # temporary per operation: 1.7x faster at 256x256.
    for index, frame in enumerate(frames):
        x = frame.astype(np.float32)
        mu = _filtered(x)
        mu_sq = cv2.multiply(mu, mu)
        sigma_sq = cv2.addWeighted(_filtered(cv2.multiply(x, x)), 1.0, mu_sq, -1.0, C2 / 2)  # sigma^2 + C2 / 2
        if previous is not None:
            x0, mu0, mu0_sq, sigma0_sq = previous
            mu01 = cv2.multiply(mu0, mu)
            cs = cv2.addWeighted(_filtered(cv2.multiply(x0, x)), 2.0, mu01, -2.0, C2)  # 2 sigma01 + C2
            numerator = cv2.multiply(cs, cv2.addWeighted(mu01, 2.0, mu01, 0.0, C1))  # ... x (2 mu0 mu1 + C1)
            denominator = cv2.multiply(cv2.add(sigma0_sq, sigma_sq), cv2.addWeighted(mu0_sq, 1.0, mu_sq, 1.0, C1))
            means = cv2.mean(cv2.divide(numerator, denominator))[:channels]  # per channel, then over channels
            out[index - 1] = float(np.mean(means))
        previous = x, mu, mu_sq, sigma_sq
    return out


def temporal_ssim(frames: np.ndarray) -> TemporalSSIM:
    """Mean, min and drop of `consecutive_ssim`; all None for a clip of fewer than 2 frames."""
    scores = consecutive_ssim(frames)
    if len(scores) == 0:
        return TemporalSSIM(None, None, None)
    return TemporalSSIM(float(scores.mean()), float(scores.min()), float(np.median(scores) - scores.min()))


class RememberedSSIM:
    """`temporal_ssim` that keeps its last `size` results by the clip's content: the score stage scores one
    background clip behind several foregrounds once (its file, and so its decoded frames, are the same in each)."""

    def __init__(self, size: int = 256) -> None:
        self.size = size
        self._results: dict[bytes, TemporalSSIM] = {}

    def __call__(self, frames: np.ndarray) -> TemporalSSIM:
        key = content_key(frames)
        if key not in self._results:
            self._results[key] = temporal_ssim(frames)
            while len(self._results) > self.size:
                del self._results[next(iter(self._results))]
        return self._results[key]
