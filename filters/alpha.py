"""Alpha coverage: how much of each frame the foreground covers (mean alpha per frame)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Coverage:
    mean: float
    min: float
    max: float


def coverage(alpha: np.ndarray) -> Coverage:
    """Per-frame mean alpha of (T, H, W) alpha (uint8 0..255 or float 0..1), summarised over frames."""
    scale = 255.0 if alpha.dtype == np.uint8 else 1.0
    per_frame = alpha.reshape(len(alpha), -1).astype(np.float64).mean(axis=1) / scale
    return Coverage(float(per_frame.mean()), float(per_frame.min()), float(per_frame.max()))
