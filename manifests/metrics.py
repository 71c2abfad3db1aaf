"""The measures the data engine and the model share, with one definition each (numpy only, no torch).

The blend invariant `blended = alpha * foreground + (1 - alpha) * background` (`recompose`) and its PSNR; matte
quality against a reference: the IoU of binarised mattes (alpha >= 0.5) and the mean absolute alpha error.
"""

from __future__ import annotations

import numpy as np

NEUTRAL_GREY = 128  # a foreground is viewed on flat mid grey: neither black nor white biases a score
PSNR_CAP = 100.0  # identical layers: report a finite, recognisable ceiling instead of infinity
FOREGROUND_THRESHOLD = 0.5  # a pixel is foreground where alpha >= this (alpha in 0..1)


def recompose(foreground: np.ndarray, alpha: np.ndarray, background: np.ndarray) -> np.ndarray:
    """Float recomposition in 0..255 from uint8 layers ((T,H,W,3), (T,H,W), (T,H,W,3))."""
    a = alpha.astype(np.float32)[..., None] / 255.0
    return a * foreground.astype(np.float32) + (1.0 - a) * background.astype(np.float32)


def on_grey(foreground: np.ndarray, alpha: np.ndarray) -> np.ndarray:
    """(T,H,W,3) uint8 foreground over neutral grey with (T,H,W) uint8 alpha -> (T,H,W,3) uint8."""
    grey = np.full_like(foreground, NEUTRAL_GREY)
    return np.rint(recompose(foreground, alpha, grey)).astype(np.uint8)


def psnr(reference: np.ndarray, estimate: np.ndarray) -> float:
    """PSNR in dB for 0..255 data, capped at `PSNR_CAP`."""
    mse = float(np.mean((reference.astype(np.float64) - estimate.astype(np.float64)) ** 2))
    if mse <= 0.0:
        return PSNR_CAP
    return min(PSNR_CAP, 10.0 * np.log10(255.0**2 / mse))


def recomposition_psnr(foreground: np.ndarray, alpha: np.ndarray, background: np.ndarray,
                       blended: np.ndarray) -> float:
    """PSNR of the stored blended layer against the recomposition of the stored layers."""
    return psnr(blended, recompose(foreground, alpha, background))


def _as_clip(alpha: np.ndarray) -> np.ndarray:
    """(T, H, W) or (H, W) alpha, uint8 0..255 or float 0..1 -> (T, H, W) float32 in 0..1."""
    alpha = np.asarray(alpha)
    alpha = alpha.astype(np.float32) / 255.0 if alpha.dtype == np.uint8 else alpha.astype(np.float32)
    if alpha.ndim == 2:
        return alpha[None]
    if alpha.ndim != 3:
        raise ValueError(f"alpha must be (T, H, W) or (H, W), got shape {alpha.shape}")
    return alpha


def foreground_mask(alpha: np.ndarray) -> np.ndarray:
    """(T, H, W) bool: where a matte (uint8 0..255 or float 0..1) is foreground (alpha >= 0.5)."""
    return _as_clip(alpha) >= FOREGROUND_THRESHOLD


def mask_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Per-frame IoU of two (T, H, W) bool masks -> (T,); a frame where both are empty scores 1."""
    pixels = tuple(range(1, a.ndim))
    inter = np.logical_and(a, b).sum(axis=pixels)
    union = np.logical_or(a, b).sum(axis=pixels)
    return np.where(union > 0, inter / np.maximum(union, 1), 1.0)


def _pair(pred: np.ndarray, truth: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    pred, truth = _as_clip(pred), _as_clip(truth)
    if pred.shape != truth.shape:
        raise ValueError(f"prediction {pred.shape} and ground truth {truth.shape} differ in shape")
    return pred, truth


def alpha_iou(pred: np.ndarray, truth: np.ndarray) -> float:
    """Mean over frames of the IoU of the foreground masks (alpha >= 0.5): a frame where the object is small counts
    as much as one where it is large; a frame where both mattes are empty scores 1."""
    pred, truth = _pair(pred, truth)
    return float(mask_iou(pred >= FOREGROUND_THRESHOLD, truth >= FOREGROUND_THRESHOLD).mean())


def alpha_mae(pred: np.ndarray, truth: np.ndarray) -> float:
    """Mean absolute alpha error (0..1) over all pixels of all frames."""
    pred, truth = _pair(pred, truth)
    return float(np.abs(pred - truth).mean())
