"""Recomposition score: how well `alpha * fg + (1 - alpha) * bg` reproduces the stored blended layer."""

from __future__ import annotations

import numpy as np

NEUTRAL_GREY = 128  # a foreground is viewed on flat mid grey: neither black nor white biases a score
PSNR_CAP = 100.0  # identical layers: report a finite, recognisable ceiling instead of infinity


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
