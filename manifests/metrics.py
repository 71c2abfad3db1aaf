"""The measures the data engine and the model share, with one definition each (numpy only, no torch).

The blend invariant `blended = alpha * foreground + (1 - alpha) * background` (`recompose`) and its PSNR; matte
quality against a reference: the IoU of binarised mattes (alpha >= 0.5), the mean absolute alpha error, and the
video-matting benchmark measures (SAD, MSE, gradient error, dtSSD, scaled as in Robust Video Matting's evaluation);
the coverage of a matte (its mean alpha); PSNR and SSIM inside or outside a mask; and a bootstrap interval over
samples and seeds.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage
from skimage.metrics import structural_similarity

NEUTRAL_GREY = 128  # a foreground is viewed on flat mid grey: neither black nor white biases a score
PSNR_CAP = 100.0  # identical layers: report a finite, recognisable ceiling instead of infinity
FOREGROUND_THRESHOLD = 0.5  # a pixel is foreground where alpha >= this (alpha in 0..1)


def recompose(foreground: np.ndarray, alpha: np.ndarray, background: np.ndarray) -> np.ndarray:
    """Float recomposition in 0..255 from uint8 layers ((T,H,W,3), (T,H,W), (T,H,W,3))."""
    a = alpha.astype(np.float32)[..., None]
    a /= 255.0
    out = foreground.astype(np.float32)
    out *= a  # in place: the same arithmetic as a * fg + (1 - a) * bg, with three fewer temporary clips
    rest = background.astype(np.float32)
    rest *= 1.0 - a
    out += rest
    return out


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


def alpha_coverage(alpha: np.ndarray) -> float:
    """Mean alpha (0..1) over all pixels of all frames: how much of the clip a matte covers (0 for no object)."""
    return float(_as_clip(alpha).mean())


# --- the video-matting benchmark measures (alpha in 0..1; the scaling is RVM's `evaluation_metrics.py`) ----------
GRADIENT_SIGMA = 1.4  # Gaussian derivative sigma of the gradient error (Rhemann et al. 2009)


def alpha_sad(pred: np.ndarray, truth: np.ndarray) -> float:
    """Sum of absolute alpha differences per frame, in thousands, averaged over frames."""
    pred, truth = _pair(pred, truth)
    return float(np.abs(pred - truth).sum(axis=(1, 2)).mean() * 1e-3)


def alpha_mse(pred: np.ndarray, truth: np.ndarray) -> float:
    """Mean squared alpha error, times 1000."""
    pred, truth = _pair(pred, truth)
    return float(np.mean((pred - truth) ** 2) * 1e3)


def alpha_gradient_error(pred: np.ndarray, truth: np.ndarray) -> float:
    """Sum over pixels of the squared difference of the alpha gradients' magnitudes (Gaussian derivatives, sigma
    `GRADIENT_SIGMA`), in thousands, averaged over frames: how far the matte's edges are from the truth's."""
    pred, truth = _pair(pred, truth)
    errors = [np.sum((ndimage.gaussian_gradient_magnitude(p, GRADIENT_SIGMA)
                      - ndimage.gaussian_gradient_magnitude(t, GRADIENT_SIGMA)) ** 2) for p, t in zip(pred, truth)]
    return float(np.mean(errors) * 1e-3)


def alpha_dtssd(pred: np.ndarray, truth: np.ndarray) -> float | None:
    """Temporal coherence (dtSSD, Erofeev et al. 2015): the RMS over pixels of the difference between the predicted
    and the true frame-to-frame alpha change, times 100, averaged over consecutive pairs. A matte that flickers where
    the truth is steady scores high. None for a single frame."""
    pred, truth = _pair(pred, truth)
    if len(pred) < 2:
        return None
    change = np.diff(pred, axis=0) - np.diff(truth, axis=0)
    return float(np.sqrt(np.mean(change**2, axis=(1, 2))).mean() * 1e2)


def masked_psnr(reference: np.ndarray, estimate: np.ndarray, mask: np.ndarray) -> float | None:
    """PSNR (dB, 0..255 data) of (T, H, W, C) or (T, H, W) layers over the pixels where the (T, H, W) mask is True;
    None where the mask is empty (an object absent from every frame has no inside)."""
    mask = np.asarray(mask, bool)
    if not mask.any():
        return None
    return psnr(np.asarray(reference)[mask], np.asarray(estimate)[mask])


def masked_ssim(reference: np.ndarray, estimate: np.ndarray, mask: np.ndarray) -> float | None:
    """Mean SSIM (0..255 data; each frame's SSIM map, averaged over the colour channels) over the pixels where the
    (T, H, W) mask is True; None where it is empty."""
    mask = np.asarray(mask, bool)
    if not mask.any():
        return None
    reference, estimate = np.asarray(reference, np.float64), np.asarray(estimate, np.float64)
    channel = -1 if reference.ndim == 4 else None
    total, count = 0.0, 0
    for ref, est, where in zip(reference, estimate, mask):
        if not where.any():
            continue
        _, ssim_map = structural_similarity(ref, est, data_range=255.0, channel_axis=channel, full=True)
        if ssim_map.ndim == 3:
            ssim_map = ssim_map.mean(axis=-1)
        total += float(ssim_map[where].sum())
        count += int(where.sum())
    return total / count


def bootstrap_interval(values: np.ndarray, level: float = 0.95, resamples: int = 2000,
                       seed: int = 0) -> tuple[float, float, float] | None:
    """(mean, low, high): the mean of a (samples,) or (samples, seeds) array and its percentile-bootstrap interval.

    Samples are resampled with replacement, and for each resampled sample one of its seeds is drawn, so the interval
    covers both which samples were evaluated and the sampling noise of the generator. NaN entries (a measure that
    does not apply to a sample, e.g. PSNR inside an empty object) are left out; None when nothing is left.
    """
    values = np.asarray(values, np.float64)
    if values.ndim == 1:
        values = values[:, None]
    values = values[~np.all(np.isnan(values), axis=1)]
    if not len(values):
        return None
    rng = np.random.default_rng(seed)
    samples, seeds = values.shape
    rows = rng.integers(0, samples, size=(resamples, samples))
    cols = rng.integers(0, seeds, size=(resamples, samples))
    drawn = values[rows, cols]
    # a drawn NaN seed falls back to that sample's mean over its seeds
    drawn = np.where(np.isnan(drawn), np.nanmean(values, axis=1)[rows], drawn)
    means = drawn.mean(axis=1)
    tail = (1.0 - level) / 2.0 * 100.0
    low, high = np.percentile(means, [tail, 100.0 - tail])
    return float(np.mean(np.nanmean(values, axis=1))), float(low), float(high)
