"""A decoded video clip (`VideoClip`): frames at the build size, optional alpha, and where they came from.

(Named for the footage, to tell it from CLIP the model, which `filters.clip` scores with.)
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np


@dataclass
class VideoClip:
    """`frames` (T, H, W, 3) uint8; `alpha` (T, H, W) float32 in [0, 1] or None.

    `frame_indices` are the indices of the frames in the source (0 for a still image), so a
    sample records exactly which source frames it used.
    """

    frames: np.ndarray
    alpha: np.ndarray | None = None
    fps: float = 0.0
    frame_indices: list[int] = field(default_factory=list)
    source_size: tuple[int, int] = (0, 0)  # (H, W) of the source before resize

    def __post_init__(self) -> None:
        if self.frames.ndim != 4 or self.frames.shape[-1] != 3 or self.frames.dtype != np.uint8:
            raise ValueError(f"frames must be (T, H, W, 3) uint8, got {self.frames.shape} {self.frames.dtype}")
        if self.alpha is not None and self.alpha.shape != self.frames.shape[:3]:
            raise ValueError(f"alpha {self.alpha.shape} does not match frames {self.frames.shape[:3]}")

    @property
    def num_frames(self) -> int:
        return int(self.frames.shape[0])

    def save(self, path: Path) -> None:
        """Store for the next stage (uncompressed .npz: fast, and no pickled objects)."""
        arrays = {
            "frames": self.frames,
            "fps": np.float64(self.fps),
            "frame_indices": np.asarray(self.frame_indices, dtype=np.int64),
            "source_size": np.asarray(self.source_size, dtype=np.int64),
        }
        if self.alpha is not None:
            arrays["alpha"] = (np.clip(self.alpha, 0.0, 1.0) * 65535.0 + 0.5).astype(np.uint16)
        tmp = path.with_name(path.name + ".tmp.npz")
        np.savez(tmp, **arrays)
        tmp.replace(path)

    @classmethod
    def load(cls, path: Path) -> VideoClip:
        with np.load(path, allow_pickle=False) as data:
            alpha = data["alpha"].astype(np.float32) / 65535.0 if "alpha" in data else None
            return cls(
                frames=data["frames"],
                alpha=alpha,
                fps=float(data["fps"]),
                frame_indices=[int(i) for i in data["frame_indices"]],
                source_size=(int(data["source_size"][0]), int(data["source_size"][1])),
            )
