"""Temporal SSIM: mean and min SSIM of consecutive frames of one layer (catches frozen clips and flicker)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from pytorch_msssim.ssim import _fspecial_gauss_1d, gaussian_filter

from manifests.video_io import content_key

# pytorch-msssim (pairs/s 256/512px, 2 CPUs): 199/54; kornia 119/36; torchmetrics 124/25, off by 1e-2; skimage 51/10

WINDOW = 11  # Gaussian window (sigma 1.5, truncate 3.5): skimage's `gaussian_weights=True, sigma=1.5`
SIGMA = 1.5
DATA_RANGE = 255.0
C1, C2 = (0.01 * DATA_RANGE) ** 2, (0.03 * DATA_RANGE) ** 2  # pytorch_msssim's K = (0.01, 0.03)
_WIN = _fspecial_gauss_1d(WINDOW, SIGMA)  # pytorch_msssim's window
CHUNK_VALUES = 1 << 21  # values per batched float32 tensor (8 MB): 10 pairs at 256x256 RGB, 2 at 512x512


@dataclass(frozen=True)
class TemporalSSIM:
    mean: float | None  # mean SSIM over consecutive frame pairs; None if fewer than 2 frames
    min: float | None
    # median pair minus the worst pair: a cut, flash or flicker stands out from the clip's own motion, which a
    # fixed bound on `min` cannot tell from a fast pan (that lowers every pair alike)
    drop: float | None


def consecutive_ssim(frames: np.ndarray) -> np.ndarray:
    """SSIM of each consecutive pair of (T, H, W, 3) or (T, H, W) uint8 frames -> (T-1,) float64, batched on torch.

    Same value as `skimage.metrics.structural_similarity(a, b, channel_axis=-1, data_range=255,
    gaussian_weights=True, sigma=1.5, use_sample_covariance=False)` (mean over channels for RGB).
    """
    frames = np.asarray(frames)
    if frames.dtype != np.uint8 or frames.ndim not in (3, 4):
        raise ValueError(f"expected (T, H, W, C) or (T, H, W) uint8 frames, got {frames.dtype} {frames.shape}")
    if frames.ndim == 3:
        frames = frames[..., None]
    height, width = frames.shape[1:3]
    if min(height, width) < WINDOW:
        raise ValueError(f"frames of {height}x{width} are smaller than the {WINDOW}x{WINDOW} SSIM window")
    pairs = len(frames) - 1
    if pairs < 1:
        return np.zeros(0, dtype=np.float64)
    chunk = max(1, CHUNK_VALUES // frames[0].size)
    out = np.empty(pairs, dtype=np.float64)
    with torch.inference_mode():
        for start in range(0, pairs, chunk):
            stop = min(start + chunk, pairs)
            # channels-last view, not made contiguous: the depthwise convolutions run ~4x faster on it on the CPU
            x = torch.from_numpy(np.array(frames[start:stop + 1])).permute(0, 3, 1, 2).float()  # copy: any strides
            out[start:stop] = _pair_scores(x).double().numpy()
    return out


def _pair_scores(x: torch.Tensor) -> torch.Tensor:
    """SSIM of each frame of `x` (N, C, H, W) float with the next, mean over channels -> (N-1,).

    The same operations as `pytorch_msssim.ssim(x[:-1], x[1:], size_average=False)`, in the same order, but each
    frame's mean and mean square are filtered once, not once as the left and once as the right image of a pair: 3
    Gaussian filters per pair instead of 5, bit-for-bit the same scores (a test compares them).
    """
    win = _WIN.repeat(x.shape[1], 1, 1, 1).to(dtype=x.dtype)  # one per channel, as pytorch_msssim repeats it
    mu = gaussian_filter(x, win)
    mu_sq = mu.pow(2)
    sigma_sq = gaussian_filter(x * x, win) - mu_sq
    left, right = slice(None, -1), slice(1, None)
    mu1_mu2 = mu[left] * mu[right]
    sigma12 = gaussian_filter(x[left] * x[right], win) - mu1_mu2
    cs_map = (2 * sigma12 + C2) / (sigma_sq[left] + sigma_sq[right] + C2)
    ssim_map = ((2 * mu1_mu2 + C1) / (mu_sq[left] + mu_sq[right] + C1)) * cs_map
    return torch.flatten(ssim_map, 2).mean(-1).mean(1)


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
