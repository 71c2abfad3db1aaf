"""Camera motion without weights: a homography per frame onto a reference frame, from corners tracked between
consecutive frames (pyramidal Lucas-Kanade) and fitted with RANSAC, so that moving objects fall out as outliers;
and the motion that the camera does not explain (dense optical flow less the homography's)."""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np
from scipy import ndimage

from manifests.errors import InputError

# Pyramidal Lucas-Kanade: a 21 px window over up to 4 levels follows up to ~60 px a frame at the tracking size; the
# coarsest level keeps at least 32 px (coarser, a weakly textured background is dragged along by a textured object).
# The static test only needs to see that nothing moves: fewer corners, a smaller window, no pyramid, no fit (about
# 20x cheaper than estimating the motion, `bench/camera_motion.py`).
_CRITERIA = (cv2.TERM_CRITERIA_COUNT | cv2.TERM_CRITERIA_EPS, 20, 0.03)
_LK_STATIC = {"winSize": (9, 9), "maxLevel": 0, "criteria": _CRITERIA}
STATIC_CORNERS = 100


@dataclass(frozen=True)
class CameraMotion:
    """How the camera moved over a clip: `matrices[t]` maps pixels of frame t onto the reference frame."""

    matrices: np.ndarray  # (T, 3, 3) float64
    path: np.ndarray  # (T, 2): where each frame's centre lands in the reference frame
    pan_px: float  # mean frame-to-frame movement of the frame centre (px per frame)
    shake_px: float  # RMS distance of the centre's path from its smoothed path (px): hand-held jitter
    residual_px: float  # median distance of the tracked corners from the fitted motion (px): parallax, noise
    extent_px: float  # how far the view strays from the reference: the largest median displacement of the frame (px)

    def as_dict(self) -> dict[str, float]:
        """The camera-motion score a matte records (px, at the clip's size and frame rate)."""
        return {"pan_px": round(self.pan_px, 3), "shake_px": round(self.shake_px, 3),
                "residual_px": round(self.residual_px, 3), "extent_px": round(self.extent_px, 3)}


@dataclass(frozen=True)
class MotionEstimator:
    """Tracks corners from each frame to the next and fits a homography to the tracks that agree.

    Frames are tracked at most `max_side` px on their longest side (the matrices are given at full size).
    """

    max_side: int = 640
    max_corners: int = 400
    grid: int = 6  # corners are found per cell of a grid x grid split, up to max_corners / grid**2 in each
    # A track that does not come back to its corner within this many px followed noise, not the scene: on real
    # clips 18-69% of the corners come back this close, on frames of independent noise 0-1%.
    return_px: float = 0.1
    min_tracks: int = 16  # fewer corners tracked between two frames: too little texture to say how the camera moved
    min_inliers: float = 0.3  # ... or fewer than this share of them agreeing on one motion: no dominant motion
    ransac_px: float = 1.0  # a track within this many px (at the tracking size) of the fitted motion agrees
    max_scale_step: float = 0.15  # a frame-to-frame zoom or shear beyond this is a bad fit, not a camera
    smooth_frames: float = 3.0  # Gaussian sigma (frames) of the smoothed path that `shake_px` is measured from

    def static(self, frames: np.ndarray, threshold_px: float) -> CameraMotion | None:
        """The motion of a camera that stays within `threshold_px` of the middle frame, else None; cheap.

        The middle frame's corners are tracked straight into every frame (no chain, no fit): the camera is static
        if the median track moves less than `threshold_px` in every frame and the tracks agree on that (noise
        tracks every which way). Moving objects are a minority of the corners, which are spread over the frame.
        Too few tracks: None (`__call__` says why).
        """
        height, width = frames.shape[1:3]
        scale = min(1.0, self.max_side / max(height, width))
        grey = [self._grey(frame, scale) for frame in frames]
        reference = (len(frames) - 1) // 2
        found = self._corners(grey[reference], STATIC_CORNERS)
        if len(found) < self.min_tracks:
            return None
        shifts, spreads = [], []
        for current in grey:
            moved, ok, _ = cv2.calcOpticalFlowPyrLK(grey[reference], current, found, None, **_LK_STATIC)
            tracked = (moved - found)[ok[:, 0] == 1, 0] / scale  # (N, 2) px at full size
            if len(tracked) < self.min_tracks:
                return None
            shift = np.median(tracked, axis=0)
            spread = float(np.median(np.linalg.norm(tracked - shift, axis=1)))
            if np.linalg.norm(shift) >= threshold_px or spread >= threshold_px:
                return None
            shifts.append(shift)
            spreads.append(spread)
        shifts = np.stack(shifts)  # (T, 2): scene in the reference at p shows at p + shift in frame t
        extent = float(np.max(np.linalg.norm(shifts, axis=1)))
        path = np.array([(width - 1) / 2, (height - 1) / 2]) - shifts
        matrices = np.broadcast_to(np.eye(3), (len(frames), 3, 3)).copy()
        return CameraMotion(matrices, path, *self._pan_shake(path), float(np.median(spreads)), extent)

    def __call__(self, frames: np.ndarray) -> CameraMotion:
        """Motion of (T, H, W, 3) uint8 `frames` onto their middle frame.

        Raises `InputError` (one line, naming the frames) when two consecutive frames give no dominant motion.
        """
        height, width = frames.shape[1:3]
        scale = min(1.0, self.max_side / max(height, width))
        grey = [self._grey(frame, scale) for frame in frames]
        steps, residuals = [np.eye(3)], []
        for t in range(1, len(frames)):
            step, residual = self._step(grey[t - 1], grey[t], t)
            steps.append(step)
            residuals.append(residual)
        to_full = np.diag([1.0 / scale, 1.0 / scale, 1.0])
        steps = [to_full @ step @ np.linalg.inv(to_full) for step in steps]  # (3, 3) frame t -> frame t - 1
        matrices = _chain(steps, (len(frames) - 1) // 2)
        centre = np.array([(width - 1) / 2, (height - 1) / 2])
        path = _apply(matrices, centre[None])[:, 0]  # (T, 2)
        # The median over a grid inside the frame, not the corners: where few corners were tracked a homography's
        # perspective terms are loose, and extrapolating them to the frame's corners exaggerates a static camera.
        xs, ys = np.meshgrid((np.arange(5) + 0.5) * width / 5, (np.arange(5) + 0.5) * height / 5)
        grid = np.stack([xs.ravel(), ys.ravel()], axis=1)
        extent = float(np.max(np.median(np.linalg.norm(_apply(matrices, grid) - grid, axis=2), axis=1)))
        residual = float(np.median(residuals)) / scale if residuals else 0.0
        return CameraMotion(matrices, path, *self._pan_shake(path), residual, extent)

    def _pan_shake(self, path: np.ndarray) -> tuple[float, float]:
        """Mean speed of the (T, 2) path, and the RMS of its jitter about the Gaussian-smoothed path."""
        if len(path) < 2:
            return 0.0, 0.0
        pan = float(np.mean(np.linalg.norm(np.diff(path, axis=0), axis=1)))
        # Extended point-symmetrically about its ends, so a steady pan has no jitter at the clip's ends.
        pad = int(4 * self.smooth_frames) + 1
        extended = np.pad(path, ((pad, pad), (0, 0)), mode="reflect", reflect_type="odd")
        smooth = ndimage.gaussian_filter1d(extended, self.smooth_frames, axis=0)[pad:pad + len(path)]
        return pan, float(np.sqrt(np.mean(np.sum((path - smooth) ** 2, axis=1))))

    def _grey(self, frame: np.ndarray, scale: float) -> np.ndarray:
        grey = cv2.cvtColor(frame, cv2.COLOR_RGB2GRAY)
        if scale < 1.0:
            grey = cv2.resize(grey, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA)
        return grey

    def _step(self, previous: np.ndarray, current: np.ndarray, t: int) -> tuple[np.ndarray, float]:
        """The homography from `current` to `previous` (frame t -> t - 1) and the median inlier error."""
        found = self._corners(previous)
        ahead = back = np.empty((0, 2), np.float32)
        if len(found):
            # Tracked forward and back: a track that does not return to its corner followed noise, not the scene.
            lk = {"winSize": (21, 21), "maxLevel": _levels(previous.shape), "criteria": _CRITERIA}
            ahead, ok, _ = cv2.calcOpticalFlowPyrLK(previous, current, found, None, **lk)
            back, ok_back, _ = cv2.calcOpticalFlowPyrLK(current, previous, ahead, None, **lk)
            returned = np.linalg.norm(back - found, axis=2)[:, 0] < self.return_px
            good = (ok[:, 0] == 1) & (ok_back[:, 0] == 1) & returned
            ahead, back = ahead[good, 0], found[good, 0]
        where = f"camera motion cannot be estimated between frames {t - 1} and {t}"
        if len(ahead) < self.min_tracks:
            raise InputError(f"{where}: only {len(ahead)} corners could be tracked (needs {self.min_tracks}); "
                             "too little texture, or noise")
        step, inliers = cv2.findHomography(ahead, back, cv2.RANSAC, self.ransac_px, maxIters=2000,
                                           confidence=0.999)
        agree = 0 if inliers is None else int(inliers.sum())
        if step is None or agree < max(self.min_tracks, self.min_inliers * len(ahead)):
            raise InputError(f"{where}: only {agree} of {len(ahead)} tracked corners agree on one motion")
        if not self._plausible(step, previous.shape):
            raise InputError(f"{where}: the fitted homography is degenerate (a zoom, shear or tilt no camera makes "
                             "between two frames)")
        chosen = inliers[:, 0].astype(bool)
        errors = np.linalg.norm(_apply(step[None], ahead[chosen])[0] - back[chosen], axis=1)
        return step, float(np.median(errors))

    def _corners(self, grey: np.ndarray, limit: int | None = None) -> np.ndarray:
        """(N, 1, 2) float32 corners (at most `limit`, default `max_corners`), found cell by cell of a `grid` x `grid`
        split of the frame.

        Per cell, so a weakly textured background still gets its share of corners next to a strongly textured
        object: the camera's motion is the one most of the frame's area agrees on, not most of its contrast.
        """
        height, width = grey.shape
        spacing = max(3, min(height, width) // 40)
        per_cell = max(1, (limit or self.max_corners) // self.grid**2)
        found = []
        for y0, y1 in _cells(height, self.grid):
            for x0, x1 in _cells(width, self.grid):
                corners = cv2.goodFeaturesToTrack(np.ascontiguousarray(grey[y0:y1, x0:x1]), per_cell, 0.05,
                                                  spacing, blockSize=5)
                if corners is not None:
                    found.append(corners + np.float32([x0, y0]))
        return np.concatenate(found) if found else np.empty((0, 1, 2), np.float32)

    def _plausible(self, step: np.ndarray, shape: tuple[int, int]) -> bool:
        step = step / step[2, 2]
        singular = np.linalg.svd(step[:2, :2], compute_uv=False)
        tilt = np.abs(step[2, :2]) * max(shape)  # how far the perspective terms bend the frame's far edge
        return bool(np.all(np.abs(singular - 1.0) < self.max_scale_step) and np.all(tilt < self.max_scale_step))


def residual_motion(frames: np.ndarray, motion: CameraMotion, pairs: list[tuple[int, int]],
                    max_side: int = 320) -> np.ndarray:
    """(len(pairs), H, W) float32: for each (t, other) pair of frame indices, how far each pixel of frame t moves to
    frame `other` beyond what the camera's motion explains, in px at the frames' size: dense optical flow (DIS, at
    most `max_side` px) less the homography's flow.

    An object the camera follows stands still in the frame while the background streams past: its residual is
    the camera's movement between the two frames, however uniform its colour.
    """
    height, width = frames.shape[1:3]
    scale = min(1.0, max_side / max(height, width))
    small = (max(8, round(width * scale)), max(8, round(height * scale)))

    def grey(t: int) -> np.ndarray:
        return cv2.resize(cv2.cvtColor(frames[t], cv2.COLOR_RGB2GRAY), small, interpolation=cv2.INTER_AREA)

    flow_engine = cv2.DISOpticalFlow_create(cv2.DISOPTICAL_FLOW_PRESET_MEDIUM)
    xs, ys = np.meshgrid(np.arange(small[0], dtype=np.float64), np.arange(small[1], dtype=np.float64))
    points = np.stack([xs.ravel(), ys.ravel()], axis=1)
    to_small = np.diag([small[0] / width, small[1] / height, 1.0])
    out = np.empty((len(pairs), height, width), np.float32)
    for i, (t, other) in enumerate(pairs):
        flow = flow_engine.calc(grey(t), grey(other), None)  # (h, w, 2)
        camera = to_small @ np.linalg.inv(motion.matrices[other]) @ motion.matrices[t] @ np.linalg.inv(to_small)
        expected = (_apply(camera[None], points)[0] - points).reshape(small[1], small[0], 2)
        residual = np.linalg.norm(flow - expected, axis=2) * (width / small[0])
        out[i] = cv2.resize(residual.astype(np.float32), (width, height), interpolation=cv2.INTER_LINEAR)
    return out


def _levels(shape: tuple[int, int]) -> int:
    """Pyramid levels above the image that keep the coarsest at least 32 px (at most 3)."""
    return int(np.clip(np.floor(np.log2(min(shape) / 32)), 0, 3))


def _cells(length: int, count: int) -> list[tuple[int, int]]:
    edges = np.linspace(0, length, count + 1).round().astype(int)
    return list(zip(edges[:-1], edges[1:]))


def _chain(steps: list[np.ndarray], reference: int) -> np.ndarray:
    """(T, 3, 3) frame t -> reference frame, from `steps[t]`: frame t -> frame t - 1 (`steps[0]` unused)."""
    count = len(steps)
    matrices = np.zeros((count, 3, 3))
    matrices[reference] = np.eye(3)
    for t in range(reference + 1, count):  # t -> t - 1 -> ... -> reference
        matrices[t] = matrices[t - 1] @ steps[t]
    for t in range(reference - 1, -1, -1):  # t -> t + 1 -> ... -> reference
        matrices[t] = matrices[t + 1] @ np.linalg.inv(steps[t + 1])
    return matrices / matrices[:, 2:, 2:]


def _apply(matrices: np.ndarray, points: np.ndarray) -> np.ndarray:
    """(T, N, 2) points (N, 2) mapped by each of the (T, 3, 3) matrices."""
    homogeneous = np.concatenate([points, np.ones((len(points), 1))], axis=1)  # (N, 3)
    mapped = np.einsum("tij,nj->tni", matrices, homogeneous)
    return mapped[..., :2] / mapped[..., 2:]
