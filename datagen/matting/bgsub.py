"""Background subtraction: the background is each pixel's most stable colour over time; whatever differs from it enough
is foreground, cleaned up morphologically and given a soft edge. A moving camera is estimated first
(`datagen.matting.camera`) and the background is modelled in the frames warped onto one reference frame."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

import cv2
import numpy as np
from skimage.filters import apply_hysteresis_threshold, threshold_otsu

from datagen.matting.base import BackendInfo, Matte
from datagen.matting.camera import CameraMotion, MotionEstimator, residual_motion
from datagen.matting.refine import disk, fill_holes, keep_large_components, soft_edge
from datagen.video_clip import VideoClip
from manifests.errors import InputError, one_line

MIN_FRAMES = 3


@dataclass
class BackgroundSubtraction:
    """Mattes whatever moves against the background, for a static or a moving (panning, hand-held) camera.

    The background at a pixel is the colour that the most frames agree on (within the noise), not the
    median: a moving textured object looks different in every frame, so the background wins even where
    the object covers a pixel in most frames. An object that stands still long enough becomes background.
    When the camera moves more than `static_px`, the frames are warped onto the middle frame (a homography each,
    from tracked corners) and the background is modelled on that canvas from the pixels that do not move against
    the camera (residual optical flow), inpainted where the scene always hides behind something moving (an object
    the camera follows), and warped back to every frame; where the background itself changes (water, foliage,
    parallax the homography leaves), a difference must exceed that change (`spread_k`) to count.
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
    # A "foreground" this large means the background model failed (a light change, a scene cut): static-camera
    # clips measured 0.04-0.19 mean coverage here.
    max_coverage: float = 0.45
    # A view that strays less than this (px) from the middle frame's is a static camera (`MotionEstimator.static`,
    # a cheap test): no warping, so a locked-off clip costs little more than before stabilisation existed.
    static_px: float = 1.0
    model_frames: int = 24  # at most this many frames (evenly spaced) build the stabilised background: memory
    max_canvas: float = 3.0  # the stabilised canvas spans at most this many frame widths and heights
    spread_k: float = 2.0  # stabilised: the background's own spread (median change) times this is not foreground
    moving_ratio: float = 0.5  # stabilised: residual motion beyond this share of the camera's speed ...
    moving_floor: float = 1 / 320  # ... and this share of the frame's longest side is kept out of the model
    moving_baseline: float = 0.02  # ... measured against a frame the camera moved this share of the frame from
    motion: MotionEstimator = field(default_factory=MotionEstimator)

    def __call__(self, clip: VideoClip) -> Matte:
        if clip.num_frames < MIN_FRAMES:
            raise InputError(
                f"bgsub needs at least {MIN_FRAMES} frames to model the background, "
                f"got {clip.num_frames}; use --matting chroma or given for stills"
            )
        static = self.motion.static(clip.frames, self.static_px)
        unestimated = None  # why the camera's motion could not be estimated (too little texture, tiny frames)
        try:
            motion = static if static is not None else self.motion(clip.frames)
        except InputError as exc:
            # Not refused yet: a static background model still mattes a locked-off clip too small or too flat to
            # track (the coverage check below refuses it if the camera did move).
            motion, unestimated = None, one_line(exc)
        stabilised = static is None and motion is not None
        distance, plate = self.difference(clip.frames, motion if stabilised else None)
        strong = self.threshold if self.threshold is not None else self._otsu(distance)
        # Hysteresis on the whole (T, H, W) volume: a weak difference also counts when it touches a strong
        # one in the previous or next frame, a light temporal coupling (per-frame hysteresis measured worse).
        hard = apply_hysteresis_threshold(distance, self.low_ratio * strong, strong)
        hard = np.stack([self._clean(mask) for mask in hard])
        alpha = soft_edge(clip.frames, hard, radius=self.edge_radius, eps=self.edge_eps)
        covered = float(alpha.mean())
        if covered > self.max_coverage:
            cause = "the camera moves in a way one homography per frame cannot undo (parallax)" if stabilised \
                else "a light change or a scene cut"
            if unestimated:
                raise InputError(f"bgsub: {unestimated}, and {covered:.0%} of the frame differs from a static "
                                 f"background (limit {self.max_coverage:.0%})")
            raise InputError(f"bgsub: {covered:.0%} of the frame differs from the background model (limit "
                             f"{self.max_coverage:.0%}); probably {cause}")
        camera = {**motion.as_dict(), "stabilised": stabilised} if motion is not None else \
            {"stabilised": False, "unestimated": unestimated}
        return Matte(alpha=alpha, backend=BackendInfo(name=self.name), camera=camera, background=plate)

    def difference(self, frames: np.ndarray, motion: CameraMotion | None = None) -> tuple[np.ndarray, np.ndarray]:
        """(T, H, W) float32 Lab distance of each frame from the clip's background, and that background (the clean
        plate) as (T, H, W, 3) uint8. With `motion`, the background is modelled on the stabilised canvas."""
        lab = np.stack([cv2.cvtColor(self._blur(f), cv2.COLOR_RGB2LAB) for f in frames])
        if motion is not None:
            return self._stabilised_difference(frames, lab, motion)
        # (3, T, H, W): contiguous per-channel planes are faster to sweep than interleaved channels.
        planes = np.ascontiguousarray(np.moveaxis(lab, -1, 0))
        # Static pixels barely change between consecutive frames, and most pixels are static.
        noise = float(np.median(np.sqrt(np.sum(np.diff(planes, axis=1) ** 2, axis=0))))
        tolerance = max(self.stable_k * noise, self.stable_floor)
        background, agree = _stable_background(planes, tolerance)
        distance = np.sqrt(np.sum((planes - background[:, None]) ** 2, axis=0)).astype(np.float32)
        plate = _mean_colour(frames, agree)
        return distance, np.broadcast_to(plate, frames.shape)

    def _stabilised_difference(self, frames: np.ndarray, lab: np.ndarray,
                               motion: CameraMotion) -> tuple[np.ndarray, np.ndarray]:
        count, height, width = frames.shape[:3]
        to_canvas, canvas = self._canvas(motion.matrices, height, width)
        # 1. Warp the model frames onto the canvas; a pixel a frame does not see, or where something moves against
        # the camera, is left out of the model for that frame.
        chosen = np.unique(np.linspace(0, count - 1, min(count, self.model_frames)).round().astype(int))
        ones = np.ones((height, width), np.uint8)
        warped_lab, warped_rgb, valid, seen = [], [], [], []
        for t in chosen:
            moves = self._moving(frames, motion, t)
            matrix = to_canvas @ motion.matrices[t]
            warped_lab.append(cv2.warpPerspective(lab[t], matrix, canvas, flags=cv2.INTER_LINEAR))
            warped_rgb.append(cv2.warpPerspective(frames[t], matrix, canvas, flags=cv2.INTER_CUBIC))
            # Eroded: interpolation at the frame's edge mixes in the (black) border.
            inside = cv2.erode(cv2.warpPerspective(ones, matrix, canvas, flags=cv2.INTER_NEAREST), disk(1))
            still = cv2.warpPerspective((~moves).astype(np.uint8), matrix, canvas, flags=cv2.INTER_NEAREST)
            seen.append(inside.astype(bool))
            valid.append(seen[-1] & still.astype(bool))
        planes = np.ascontiguousarray(np.moveaxis(np.stack(warped_lab), -1, 0))  # (3, K, Hc, Wc)
        valid, seen = np.stack(valid), np.stack(seen)  # (K, Hc, Wc)
        known = valid.any(axis=0)  # the background shows still in some frame
        # 2. The noise level from consecutive model frames where both see the scene.
        both = valid[1:] & valid[:-1]
        steps = np.sqrt(np.sum(np.diff(planes, axis=1) ** 2, axis=0))[both]
        noise = float(np.median(steps)) if steps.size else 0.0
        background, agree = _stable_background(planes, max(self.stable_k * noise, self.stable_floor), valid)
        plate = _mean_colour(np.stack(warped_rgb), agree)
        # Seen, but always behind something moving (an object the camera follows): filled in from around (inpainting).
        hidden = (seen.any(axis=0) & ~known).astype(np.uint8)
        if hidden.any():
            plate = cv2.inpaint(plate, hidden, 3, cv2.INPAINT_TELEA)
            background = np.stack([cv2.inpaint(plane.astype(np.float32), hidden, 3, cv2.INPAINT_TELEA)
                                   for plane in background])
        # How much the background itself changes (water, foliage, parallax the homography leaves): the median
        # distance of the frames that see it from the model, over the frames the model was built from.
        deviation = np.sqrt(np.sum((planes - background[:, None]) ** 2, axis=0))
        spread = np.where(known, np.nanmedian(np.where(valid | ~known, deviation, np.nan), axis=0), 0.0)
        # 3. The background back in every frame; what no model frame saw counts as background.
        model = np.dstack([np.moveaxis(background, 0, -1), seen.any(axis=0),
                           np.nan_to_num(spread)]).astype(np.float32)
        distance = np.empty((count, height, width), np.float32)
        plates = np.empty_like(frames)
        for t in range(count):
            back = np.linalg.inv(to_canvas @ motion.matrices[t])
            here = cv2.warpPerspective(model, back, (width, height), flags=cv2.INTER_LINEAR)  # (H, W, 5)
            modelled = here[..., 3] > 0.999
            raw = np.sqrt(np.sum((lab[t] - here[..., :3]) ** 2, axis=-1)) - self.spread_k * here[..., 4]
            distance[t] = np.where(modelled, np.maximum(raw, 0.0), 0.0)
            # Where there is no model the matte says background, and the frame itself is the best plate.
            plate_t = cv2.warpPerspective(plate, back, (width, height), flags=cv2.INTER_CUBIC)
            plates[t] = np.where(modelled[..., None], plate_t, frames[t])
        return distance, plates

    def _moving(self, frames: np.ndarray, motion: CameraMotion, t: int) -> np.ndarray:
        """(H, W) bool: what moves against the camera's motion in frame t, kept out of the background model.

        An object the camera follows covers the same part of the scene for long, and a uniform one would win the
        temporal mode there; but it moves against the background as fast as the camera does. Frame t is compared
        with the nearest frame the camera has moved `moving_baseline` of the frame's longest side from (so a slow
        pan still stands out of the optical flow's noise); a pixel moves when its residual motion is more than
        `moving_ratio` of the camera's movement and `moving_floor` of the frame; what a moving outline encloses
        moves too.
        """
        longest = max(frames.shape[1:3])
        other = _partner(motion.path, t, self.moving_baseline * longest)
        cut = max(self.moving_floor * longest,
                  self.moving_ratio * float(np.linalg.norm(motion.path[other] - motion.path[t])))
        return fill_holes(residual_motion(frames, motion, [(t, other)])[0] >= cut)

    def _canvas(self, matrices: np.ndarray, height: int, width: int) -> tuple[np.ndarray, tuple[int, int]]:
        """The translation onto a canvas that holds every warped frame (at most `max_canvas` frames wide and high),
        and the canvas (width, height)."""
        corners = np.array([[0, 0, 1], [width, 0, 1], [0, height, 1], [width, height, 1]], np.float64)
        mapped = np.einsum("tij,nj->tni", matrices, corners)
        mapped = mapped[..., :2] / mapped[..., 2:]
        spare = (self.max_canvas - 1) / 2 * np.array([width, height])
        low = np.maximum(np.floor(mapped.reshape(-1, 2).min(axis=0)), -spare)
        high = np.minimum(np.ceil(mapped.reshape(-1, 2).max(axis=0)), np.array([width, height]) + spare)
        to_canvas = np.array([[1, 0, -low[0]], [0, 1, -low[1]], [0, 0, 1]], np.float64)
        return to_canvas, (int(high[0] - low[0]), int(high[1] - low[1]))

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
        return keep_large_components(fill_holes(mask_u8), self.min_area)


def _partner(path: np.ndarray, t: int, distance: float) -> int:
    """The nearest frame whose centre is `distance` from frame t's on the (T, 2) camera path (forward first), else
    the frame farthest from it at either end of the clip."""
    for step in range(1, len(path)):
        for other in (t + step, t - step):
            if 0 <= other < len(path) and np.linalg.norm(path[other] - path[t]) >= distance:
                return other
    ends = [other for other in (0, len(path) - 1) if other != t]
    return max(ends, key=lambda other: float(np.linalg.norm(path[other] - path[t])))


def _stable_background(planes: np.ndarray, tolerance: float,
                       valid: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(3, H, W): per pixel, the mean of the largest set of frames that agree with one frame within
    `tolerance` (a temporal mode), and that set as a (T, H, W) bool. `planes` is (3, T, H, W); `valid` (T, H, W)
    marks the frames that see each pixel (None: all do); a pixel no frame sees is 0 and in no set."""
    count = planes.shape[1]
    limit = tolerance * tolerance
    # every frame agrees with itself; one that does not see the pixel is never chosen
    support = np.ones(planes.shape[1:], np.int32) if valid is None else np.where(valid, 1, -count).astype(np.int32)
    for t in range(count):
        for s in range(t + 1, count):
            close = np.sum((planes[:, t] - planes[:, s]) ** 2, axis=0) < limit
            if valid is not None:
                close &= valid[t] & valid[s]
            support[t] += close
            support[s] += close
    chosen = np.take_along_axis(planes, support.argmax(axis=0)[None, None], axis=1)
    agree = np.sum((planes - chosen) ** 2, axis=0) < limit  # (T, H, W), the chosen frame included
    if valid is not None:
        agree &= valid
    return np.sum(planes * agree, axis=1) / np.maximum(np.sum(agree, axis=0), 1), agree


def _mean_colour(frames: np.ndarray, agree: np.ndarray) -> np.ndarray:
    """(H, W, 3) uint8 mean of the (T, H, W, 3) frames over the frames in `agree` (T, H, W) at each pixel."""
    total = np.zeros(frames.shape[1:], np.float32)
    for frame, chosen in zip(frames, agree, strict=True):
        total += frame * chosen[..., None]
    return np.clip(np.rint(total / np.maximum(agree.sum(axis=0), 1)[..., None]), 0, 255).astype(np.uint8)
