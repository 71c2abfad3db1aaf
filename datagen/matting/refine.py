"""Mask post-processing shared by the matting backends: dropping small components, and soft alpha edges from
a colour guided filter (He et al. 2010, built on cv2.boxFilter) applied only in a thin band around a mask's
boundary, so interiors stay exactly 1 and exteriors exactly 0."""

from __future__ import annotations

import cv2
import numpy as np


def disk(radius: int) -> np.ndarray:
    """The (2r+1, 2r+1) elliptic structuring element of a radius-r morphology."""
    return cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * radius + 1, 2 * radius + 1))


def keep_large_components(mask: np.ndarray, min_fraction: float) -> np.ndarray:
    """(H, W) bool: the 8-connected components of `mask` covering at least `min_fraction` of the frame.

    Specks of noise and compression grain survive thresholding as small blobs; an object does not come that small.
    """
    _, labels, stats, _ = cv2.connectedComponentsWithStats(mask.astype(np.uint8), connectivity=8)
    keep = stats[:, cv2.CC_STAT_AREA] >= min_fraction * mask.size
    keep[0] = False  # label 0 is everything outside the mask
    return keep[labels]


def fill_holes(mask: np.ndarray) -> np.ndarray:
    """(H, W) bool: `mask` with its holes filled, the same pixels as `scipy.ndimage.binary_fill_holes` (a hole is a
    4-connected part of the background that does not reach the frame's edge), from one labelling of the background
    instead of scipy's dilation repeated until nothing changes (4x faster on a 256x256 mask of noise)."""
    mask = np.asarray(mask).astype(bool)
    count, labels = cv2.connectedComponents((~mask).astype(np.uint8), connectivity=4)
    outside = np.zeros(count, bool)
    for edge in (labels[0], labels[-1], labels[:, 0], labels[:, -1]):
        outside[edge] = True
    outside[0] = False  # label 0 is the mask itself
    return ~outside[labels]


def _box(image: np.ndarray, radius: int) -> np.ndarray:
    size = 2 * radius + 1
    return cv2.boxFilter(image, -1, (size, size), normalize=True, borderType=cv2.BORDER_REFLECT)


def guided_filter(guide: np.ndarray, src: np.ndarray, radius: int, eps: float) -> np.ndarray:
    """Filter `src` (H, W) so that its edges follow the edges of `guide`.

    `guide` is (H, W, 3) or (H, W): uint8 (0..255) or float in [0, 1]. `eps` is the regulariser in
    the guide's [0, 1] units squared: small values snap to colour edges, large ones blur like a box.
    Returns (H, W) float32 (not clipped: the filter can overshoot a little at strong edges).
    """
    if radius < 1 or eps <= 0:
        raise ValueError(f"guided filter needs radius >= 1 and eps > 0, got radius={radius} eps={eps}")
    scale = 1.0 / 255.0 if guide.dtype == np.uint8 else 1.0
    # float64 because the covariances below subtract nearly equal means.
    image = guide.astype(np.float64) * scale
    p = src.astype(np.float64)
    mean_p = _box(p, radius)
    if image.ndim == 2:
        mean_i = _box(image, radius)
        a = (_box(image * p, radius) - mean_i * mean_p) / (_box(image * image, radius) - mean_i**2 + eps)
        b = mean_p - a * mean_i
        return (_box(a, radius) * image + _box(b, radius)).astype(np.float32)
    mean_i = _box(image, radius)
    cov = _box(image * p[..., None], radius) - mean_i * mean_p[..., None]
    # The six distinct entries of each pixel's 3x3 guide covariance (+ eps on the diagonal) ...
    rr, gg, bb, rg, rb, gb = (
        _box(image[..., i] * image[..., j], radius) - mean_i[..., i] * mean_i[..., j] + (eps if i == j else 0.0)
        for i, j in ((0, 0), (1, 1), (2, 2), (0, 1), (0, 2), (1, 2))
    )
    # ... inverted in closed form (adjugate / determinant), much faster than a batched np.linalg.solve.
    inv_rr, inv_gg, inv_bb = gg * bb - gb * gb, rr * bb - rb * rb, rr * gg - rg * rg
    inv_rg, inv_rb, inv_gb = rb * gb - rg * bb, rg * gb - rb * gg, rg * rb - rr * gb
    det = rr * inv_rr + rg * inv_rg + rb * inv_rb
    cr, cg, cb = cov[..., 0], cov[..., 1], cov[..., 2]
    a = np.stack([
        inv_rr * cr + inv_rg * cg + inv_rb * cb,
        inv_rg * cr + inv_gg * cg + inv_gb * cb,
        inv_rb * cr + inv_gb * cg + inv_bb * cb,
    ], axis=-1) / det[..., None]
    b = mean_p - np.sum(a * mean_i, axis=-1)
    return (np.sum(_box(a, radius) * image, axis=-1) + _box(b, radius)).astype(np.float32)


def edge_band(hard_mask: np.ndarray, width: int) -> np.ndarray:
    """Pixels within about `width` px of the boundary of the (H, W) bool mask, on either side."""
    kernel = disk(width)
    mask_u8 = hard_mask.astype(np.uint8)
    return cv2.dilate(mask_u8, kernel) != cv2.erode(mask_u8, kernel)


def soft_edge(frames: np.ndarray, mask: np.ndarray, radius: int = 4, eps: float = 1e-3,
              band: int | None = None) -> np.ndarray:
    """Soft alpha from a (T, H, W) mask (bool, or float in [0, 1]) and its (T, H, W, 3) frames.

    Inside a band of `band` px (default `radius`) around the boundary of `mask >= 0.5` the alpha is the
    guided filter of the mask, clipped to [0, 1]; everywhere else it is exactly 0 or 1.
    Returns (T, H, W) float32.
    """
    width = radius if band is None else band
    hard = np.asarray(mask) >= 0.5
    alpha = hard.astype(np.float32)
    for t in range(hard.shape[0]):
        near = edge_band(hard[t], width)
        if not near.any():
            continue
        # The filter at a pixel reads pixels up to 2 * radius away, so filtering a crop that margin around
        # the band gives exactly the full-frame values there, at a fraction of the cost for small objects.
        rows, cols = np.nonzero(near)
        margin = 2 * radius + 1
        y0, y1 = max(rows.min() - margin, 0), min(rows.max() + margin + 1, hard.shape[1])
        x0, x1 = max(cols.min() - margin, 0), min(cols.max() + margin + 1, hard.shape[2])
        window = (slice(y0, y1), slice(x0, x1))
        filtered = guided_filter(frames[t][window], np.asarray(mask[t], dtype=np.float32)[window], radius, eps)
        near_window = near[window]
        alpha[t][window][near_window] = np.clip(filtered[near_window], 0.0, 1.0)
    return alpha
