"""Alpha quality: coverage, temporal stability, empty / full frames and softness of a (T, H, W) matte."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from manifests.metrics import foreground_mask, mask_iou


@dataclass(frozen=True)
class Coverage:
    mean: float
    min: float
    max: float


@dataclass(frozen=True)
class AlphaQuality:
    """The `alpha_*` score columns of one sample (see `manifests.schema.SCORES`)."""

    coverage_mean: float
    coverage_min: float
    coverage_max: float
    iou_mean: float | None  # None with a single frame
    iou_min: float | None
    empty_frames: float
    full_frames: float
    soft_fraction: float | None  # None when no pixel is foreground

    def columns(self) -> dict[str, float | None]:
        return {f"alpha_{name}": value for name, value in self.__dict__.items()}


def _unit(alpha: np.ndarray) -> np.ndarray:
    return alpha.astype(np.float32) / 255.0 if alpha.dtype == np.uint8 else alpha.astype(np.float32)


def coverage(alpha: np.ndarray) -> Coverage:
    """Per-frame mean alpha of (T, H, W) alpha (uint8 0..255 or float 0..1), summarised over frames."""
    per_frame = _unit(alpha).reshape(len(alpha), -1).astype(np.float64).mean(axis=1)
    return Coverage(float(per_frame.mean()), float(per_frame.min()), float(per_frame.max()))


def consecutive_iou(alpha: np.ndarray) -> np.ndarray:
    """IoU of each consecutive pair of binarised (alpha >= 0.5) mattes -> (T-1,); two empty mattes agree (1.0)."""
    masks = foreground_mask(alpha)
    return mask_iou(masks[1:], masks[:-1])


def alpha_quality(alpha: np.ndarray) -> AlphaQuality:
    """All alpha scores of a (T, H, W) matte, uint8 0..255 (as stored) or float 0..1."""
    unit = _unit(alpha)
    cover = coverage(unit)
    iou = consecutive_iou(unit)
    flat = unit.reshape(len(unit), -1)
    foreground = int((flat > 0).sum())
    soft = int(((flat > 0) & (flat < 1)).sum())
    return AlphaQuality(
        coverage_mean=cover.mean, coverage_min=cover.min, coverage_max=cover.max,
        iou_mean=float(iou.mean()) if len(iou) else None, iou_min=float(iou.min()) if len(iou) else None,
        empty_frames=float((flat.max(axis=1) <= 0).mean()), full_frames=float((flat.min(axis=1) >= 1).mean()),
        soft_fraction=soft / foreground if foreground else None,
    )
