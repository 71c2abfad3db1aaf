"""Background subtraction for static-camera clips: the background is each pixel's most stable colour over
time; whatever differs from it enough is foreground, cleaned up morphologically and given a soft edge."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import cv2
import numpy as np
from scipy import ndimage
from skimage.filters import apply_hysteresis_threshold, threshold_otsu

from datagen.matting.base import BackendInfo, Matte
from datagen.matting.refine import disk, keep_large_components, soft_edge
from datagen.video_clip import VideoClip
from manifests.errors import InputError

MIN_FRAMES = 3


@dataclass
class BackgroundSubtraction:
    """Mattes whatever moves in front of a static camera.

    The background at a pixel is the colour that the most frames agree on (within the noise), not the
    median: a moving textured object looks different in every frame, so the background wins even where
    the object covers a pixel in most frames. An object that stands still long enough becomes background.
    """

    name: ClassVar[str] = "bgsub"

    stable_k: float = 3.0  # frames within this many noise levels of each other show the same surface
    stable_floor: float = 2.0  # ... and never less than this Lab distance (a noise-free clip)
    blur_sigma: float = 1.0  # Gaussian pre-blur (px): noise and compression grain are not motion
    threshold: float | None = None  # Lab distance that counts as foreground; None = Otsu per clip
    threshold_floor: float = 12.0  # Otsu never goes below this: a clip with no motion stays background
    low_ratio: float = 0.5  # hysteresis: weak differences count if connected to strong ones
    open_px: int = 0  # opening radius; off: hysteresis + min_area already drop specks, and it eats corners
    close_px: int = 2  # closing radius: bridges cracks where the object looks like the background
    min_area: float = 0.001  # components smaller than this fraction of the frame are dropped
    edge_radius: int = 4  # guided filter radius (px) and width of the soft band around the edge
    edge_eps: float = 1e-3  # guided filter regulariser: small snaps the edge to colour edges
    # A "foreground" this large means the background model failed (a moving camera, a light change):
    # static-camera clips measured 0.04-0.19 mean coverage here, hand-held / panning DAVIS clips 0.50-0.56.
    max_coverage: float = 0.45

    def __call__(self, clip: VideoClip) -> Matte:
        if clip.num_frames < MIN_FRAMES:
            raise InputError(
                f"bgsub needs at least {MIN_FRAMES} frames of a static camera to model the background, "
                f"got {clip.num_frames}; use --matting chroma or given for stills"
            )
        distance = self.difference(clip.frames)
        strong = self.threshold if self.threshold is not None else self._otsu(distance)
        # Hysteresis on the whole (T, H, W) volume: a weak difference also counts when it touches a strong
        # one in the previous or next frame, a light temporal coupling (per-frame hysteresis measured worse).
        hard = apply_hysteresis_threshold(distance, self.low_ratio * strong, strong)
        hard = np.stack([self._clean(mask) for mask in hard])
        alpha = soft_edge(clip.frames, hard, radius=self.edge_radius, eps=self.edge_eps)
        covered = float(alpha.mean())
        if covered > self.max_coverage:
            raise InputError(
                f"bgsub: {covered:.0%} of the frame differs from the background model (limit "
                f"{self.max_coverage:.0%}); the camera probably moves, and bgsub needs a static camera"
            )
        return Matte(alpha=alpha, backend=BackendInfo(name=self.name))

    def difference(self, frames: np.ndarray) -> np.ndarray:
        """(T, H, W) float32 Lab distance of each frame from the clip's background."""
        lab = np.stack([cv2.cvtColor(self._blur(f), cv2.COLOR_RGB2LAB) for f in frames])
        # (3, T, H, W): contiguous per-channel planes are faster to sweep than interleaved channels.
        planes = np.ascontiguousarray(np.moveaxis(lab, -1, 0))
        # Static pixels barely change between consecutive frames, and most pixels are static.
        noise = float(np.median(np.sqrt(np.sum(np.diff(planes, axis=1) ** 2, axis=0))))
        tolerance = max(self.stable_k * noise, self.stable_floor)
        background = _stable_background(planes, tolerance)
        return np.sqrt(np.sum((planes - background[:, None]) ** 2, axis=0)).astype(np.float32)

    def _blur(self, frame: np.ndarray) -> np.ndarray:
        image = frame.astype(np.float32) / 255.0
        if self.blur_sigma <= 0:
            return image
        return cv2.GaussianBlur(image, (0, 0), self.blur_sigma)

    def _otsu(self, distance: np.ndarray) -> float:
        if np.ptp(distance) == 0:  # identical frames (a still repeated): nothing for Otsu to split
            return self.threshold_floor
        return max(float(threshold_otsu(distance)), self.threshold_floor)

    def _clean(self, mask: np.ndarray) -> np.ndarray:
        mask_u8 = mask.astype(np.uint8)
        if self.open_px > 0:
            mask_u8 = cv2.morphologyEx(mask_u8, cv2.MORPH_OPEN, disk(self.open_px))
        if self.close_px > 0:
            mask_u8 = cv2.morphologyEx(mask_u8, cv2.MORPH_CLOSE, disk(self.close_px))
        return keep_large_components(ndimage.binary_fill_holes(mask_u8), self.min_area)


def _stable_background(planes: np.ndarray, tolerance: float) -> np.ndarray:
    """(3, H, W): per pixel, the mean of the largest set of frames that agree with one frame within
    `tolerance` (a temporal mode). `planes` is (3, T, H, W)."""
    count = planes.shape[1]
    limit = tolerance * tolerance
    support = np.ones(planes.shape[1:], np.int32)  # every frame agrees with itself
    for t in range(count):
        for s in range(t + 1, count):
            close = np.sum((planes[:, t] - planes[:, s]) ** 2, axis=0) < limit
            support[t] += close
            support[s] += close
    chosen = np.take_along_axis(planes, support.argmax(axis=0)[None, None], axis=1)
    agree = np.sum((planes - chosen) ** 2, axis=0) < limit  # (T, H, W), the chosen frame included
    return np.sum(planes * agree, axis=1) / np.sum(agree, axis=0)
