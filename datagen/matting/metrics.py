"""Matte quality against ground truth: IoU of the binarised alphas and mean absolute alpha error.

Both take (T, H, W) or (H, W) float alphas in [0, 1]; for clips the IoU is computed per frame and then
averaged over frames (so a frame where the object is small counts as much as one where it is large).
"""

from __future__ import annotations

import numpy as np


def _as_clip(alpha: np.ndarray) -> np.ndarray:
    alpha = np.asarray(alpha, dtype=np.float32)
    if alpha.ndim == 2:
        return alpha[None]
    if alpha.ndim != 3:
        raise ValueError(f"alpha must be (T, H, W) or (H, W), got shape {alpha.shape}")
    return alpha


def _pair(pred: np.ndarray, gt: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    pred, gt = _as_clip(pred), _as_clip(gt)
    if pred.shape != gt.shape:
        raise ValueError(f"prediction {pred.shape} and ground truth {gt.shape} differ in shape")
    return pred, gt


def alpha_iou(pred: np.ndarray, gt: np.ndarray, threshold: float = 0.5) -> float:
    """Mean over frames of the IoU of `alpha >= threshold`; a frame where both masks are empty scores 1."""
    pred, gt = _pair(pred, gt)
    pred_fg, gt_fg = pred >= threshold, gt >= threshold
    intersection = np.logical_and(pred_fg, gt_fg).sum(axis=(1, 2))
    union = np.logical_or(pred_fg, gt_fg).sum(axis=(1, 2))
    per_frame = np.where(union > 0, intersection / np.maximum(union, 1), 1.0)
    return float(per_frame.mean())


def alpha_mae(pred: np.ndarray, gt: np.ndarray) -> float:
    """Mean absolute alpha error over all pixels of all frames (frames are the same size, so this is
    also the mean of the per-frame errors)."""
    pred, gt = _pair(pred, gt)
    return float(np.abs(pred - gt).mean())
