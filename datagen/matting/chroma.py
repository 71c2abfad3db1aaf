"""Chroma keying for green and blue screens: alpha rises smoothly with a pixel's distance from the
screen colour in the CrCb plane, then gets a little morphology and a guided-filter soft edge."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import cv2
import numpy as np

from datagen.matting.base import BackendInfo, Matte
from datagen.matting.refine import disk, keep_large_components, soft_edge
from datagen.video_clip import VideoClip
from manifests.errors import ConfigError, InputError

SCREEN_CHANNELS = {"green": 1, "blue": 2}  # index of the screen's dominant channel in RGB
NEUTRAL = 128.0  # Cr and Cb of every grey in 8-bit YCrCb


@dataclass
class ChromaKey:
    """Mattes an object in front of a green or blue screen; one frame is enough."""

    name: ClassVar[str] = "chroma"
    spec_option: ClassVar[str] = "key"  # `chroma:green` sets `key`
    spec_values: ClassVar[tuple[str, ...]] = tuple(SCREEN_CHANNELS)

    key: str = "auto"  # "green", "blue", or "auto": whichever fills more of the frame border
    border_px: int = 4  # width of the frame border sampled for the screen colour
    dominance: float = 20.0  # a screen pixel's key channel beats both others by this much (0..255)
    min_screen: float = 0.3  # fraction of the border that must be screen, or the clip is not keyable
    inner: float = 0.3  # chroma distance, as a fraction of the screen's own chroma, where alpha leaves 0
    outer: float = 0.6  # ... and where it reaches 1
    open_px: int = 1  # opening radius: removes specks of screen noise
    min_area: float = 0.0005  # foreground components smaller than this fraction of the frame are dropped
    edge_radius: int = 3  # guided filter radius (px) and width of the soft band around the edge
    edge_eps: float = 1e-3  # guided filter regulariser

    def __post_init__(self) -> None:
        if self.key not in ("auto", *self.spec_values):
            raise ConfigError(f"chroma key must be auto, green or blue, got {self.key!r}")
        if self.border_px < 1:
            raise ConfigError(f"chroma border_px must be at least 1, got {self.border_px}")
        if not 0.0 <= self.inner < self.outer:
            raise ConfigError(f"chroma needs 0 <= inner < outer, got inner={self.inner} outer={self.outer}")

    def __call__(self, clip: VideoClip) -> Matte:
        chroma = np.stack([cv2.cvtColor(f, cv2.COLOR_RGB2YCrCb)[..., 1:] for f in clip.frames]).astype(np.float32)
        colour, screen = self.screen_chroma(clip.frames, chroma)
        reach = float(np.linalg.norm(screen - NEUTRAL))
        distance = np.linalg.norm(chroma - screen, axis=-1) / reach
        raw = _smoothstep((distance - self.inner) / (self.outer - self.inner))
        hard = raw >= 0.5
        cleaned = np.stack([self._clean(mask) for mask in hard])
        # Keep the smooth key where morphology agreed with it; where it overruled it, trust the morphology.
        src = np.where(hard == cleaned, raw, cleaned.astype(np.float32))
        alpha = soft_edge(clip.frames, src, radius=self.edge_radius, eps=self.edge_eps)
        return Matte(alpha=alpha, backend=BackendInfo(name=f"{self.name}:{colour}"))

    def screen_chroma(self, frames: np.ndarray, chroma: np.ndarray) -> tuple[str, np.ndarray]:
        """The screen's colour name and (Cr, Cb): the median of the border pixels where it dominates."""
        rgb, crcb = _border(frames, self.border_px), _border(chroma, self.border_px)
        candidates = list(SCREEN_CHANNELS) if self.key == "auto" else [self.key]
        masks = {colour: _dominant(rgb, SCREEN_CHANNELS[colour], self.dominance) for colour in candidates}
        colour = max(candidates, key=lambda c: int(masks[c].sum()))
        if masks[colour].mean() < self.min_screen:
            raise InputError(
                f"no {' or '.join(candidates)} screen in the frame border "
                f"({masks[colour].mean():.0%} of it, need {self.min_screen:.0%}); "
                "use --matting bgsub for a static camera or given for clips with masks"
            )
        return colour, np.median(crcb[masks[colour]], axis=0)

    def _clean(self, mask: np.ndarray) -> np.ndarray:
        mask_u8 = mask.astype(np.uint8)
        if self.open_px > 0:
            mask_u8 = cv2.morphologyEx(mask_u8, cv2.MORPH_OPEN, disk(self.open_px))
        return keep_large_components(mask_u8, self.min_area)


def _border(images: np.ndarray, width: int) -> np.ndarray:
    """(N, C) pixels of the `width`-px frame border of (T, H, W, C) images."""
    ring = np.ones(images.shape[1:3], dtype=bool)
    ring[width:-width, width:-width] = False
    return images[:, ring].reshape(-1, images.shape[-1])


def _dominant(rgb: np.ndarray, channel: int, margin: float) -> np.ndarray:
    """(N,) bool: pixels whose `channel` exceeds both other channels by more than `margin`."""
    values = rgb.astype(np.int16)
    others = np.delete(values, channel, axis=-1).max(axis=-1)
    return values[:, channel] - others > margin


def _smoothstep(x: np.ndarray) -> np.ndarray:
    x = np.clip(x, 0.0, 1.0)
    return (x * x * (3.0 - 2.0 * x)).astype(np.float32)
