"""Clean plates: the background behind a real clip's matted foreground, for `video_decomposed` samples.

A clean-plate backend is chosen by spec, like matting (`--clean-plate SPEC`): `temporal` takes each covered pixel
from the frames of the whole source clip that show it (matte below a threshold there), aligned by the camera's
motion, and combines them by their median; a pixel no frame shows is filled by OpenCV inpainting and counted as
invented. A learned video inpainter fits the same protocol (`CleanPlateBackend`). `make_plate` runs one for a clip,
with the checks that refuse it (an empty or full matte, motion that cannot be estimated, a mostly invented plate).
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar, Protocol

import cv2
import numpy as np

from datagen.config import BuildConfig
from datagen.decode import cover, frame_files, read_masks, read_rgb_frames
from datagen.layered import read_image
from datagen.matting.base import MattingBackend
from datagen.matting.camera import MotionEstimator
from datagen.sources import SourceItem, localise
from datagen.video_clip import VideoClip
from manifests import storage
from manifests.errors import ConfigError, InputError, one_line
from manifests.layers import InputKind
from manifests.metrics import psnr
from manifests.video_io import quantise

STATIC_PX = 1.0  # a view that strays less than this from the middle frame's is a static camera (as bgsub's)
MAX_INVENTED = 0.5  # a plate that invents more than this share of the covered background (mean over frames): refused
MAX_COVERED = 0.95  # a matte covering more than this share of the frame (mean over frames) leaves no background
READ_CHUNK = 16  # source frames decoded at a time (at source size) before they are fitted to the build size
POINTS_CHUNK = 8192  # covered pixels looked up in every frame at a time (memory: frames x points x 3 floats)


@dataclass(frozen=True)
class PlateClip:
    """Frames of the whole source clip at the build size, in source order, with their matte and the camera's motion:
    `matrices[k]` maps pixels of frame k onto one reference frame."""

    frames: np.ndarray  # (K, H, W, 3) uint8
    alpha: np.ndarray  # (K, H, W) float32 in [0, 1]
    matrices: np.ndarray  # (K, 3, 3) float64
    frame_indices: list[int]  # source index of each frame


@dataclass
class Plate:
    """The background of the sampled frames: the frame itself where its alpha is 0, the clean plate where the
    foreground covers it; `invented` marks the covered pixels no frame showed."""

    background: np.ndarray  # (T, H, W, 3) uint8
    invented: np.ndarray  # (T, H, W) bool
    scores: dict[str, float | None]  # plate_invented_mean, plate_invented_max, plate_stability


class CleanPlateBackend(Protocol):
    """Loaded once per worker; `__call__` fills the covered pixels of the target frames (positions in `source`)."""

    name: str
    source_frames: int  # how many frames of the whole clip (evenly spaced) it wants besides the sampled ones

    def __call__(self, source: PlateClip, targets: list[int], alpha: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """`alpha`: (T, H, W) uint8 matte of the targets as stored -> background (T, H, W, 3) uint8 and invented
        (T, H, W) bool."""


@dataclass(frozen=True)
class TemporalPlate:
    """Each covered pixel of a target frame is looked up in every other frame of the clip through the camera's
    motion (a homography per frame), kept where that frame shows background there (its matte below `visible_below`,
    at least `margin` of the frame's shorter side from its foreground: soft edges and matte errors carry foreground
    colour), and set to the per-channel median of what is kept: the scene's most common look, whatever passes in
    front of it. Pixels no frame shows are inpainted (Telea) from around them, and marked invented."""

    name: ClassVar[str] = "temporal"

    source_frames: int = 64
    visible_below: float = 0.02
    margin: float = 0.01
    inpaint_radius: int = 3

    def __call__(self, source: PlateClip, targets: list[int], alpha: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        count, height, width = source.alpha.shape
        radius = max(1, round(self.margin * min(height, width)))
        kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * radius + 1, 2 * radius + 1))
        hidden = np.stack([cv2.dilate((a >= self.visible_below).astype(np.uint8), kernel) for a in source.alpha])
        background = np.empty((len(targets), height, width, 3), np.uint8)
        invented = np.zeros((len(targets), height, width), bool)
        for i, k in enumerate(targets):
            frame = source.frames[k]
            covered = alpha[i] > 0
            ys, xs = np.nonzero(covered)
            plate = frame.copy()
            if len(xs):
                others = np.delete(np.arange(count), k)  # the target itself shows foreground there
                to_other = np.linalg.inv(source.matrices[others]) @ source.matrices[k]  # (K', 3, 3)
                points = np.stack([xs, ys], axis=1).astype(np.float64)  # (N, 2)
                median = np.concatenate([self._median(source.frames[others], hidden[others], to_other, chunk)
                                         for chunk in np.array_split(points, -(-len(points) // POINTS_CHUNK))])
                known = ~np.isnan(median[:, 0])
                plate[ys[known], xs[known]] = np.clip(np.rint(median[known]), 0, 255).astype(np.uint8)
                invented[i, ys[~known], xs[~known]] = True
                if not known.all():
                    plate = cv2.inpaint(plate, invented[i].astype(np.uint8), self.inpaint_radius, cv2.INPAINT_TELEA)
            background[i] = np.where(covered[..., None], plate, frame)
        return background, invented


    @staticmethod
    def _median(frames: np.ndarray, hidden: np.ndarray, to_frames: np.ndarray, points: np.ndarray) -> np.ndarray:
        """(N, 3) per-channel median of what the (K, H, W, 3) frames show of the (N, 2) points (mapped into each by
        `to_frames`), leaving out the frames that do not see a point or hide it (`hidden`); NaN where none shows it."""
        height, width = frames.shape[1:3]
        moved = warp_all(to_frames, points)  # (K, N, 2)
        values = bilinear(frames, moved)  # (K, N, 3), NaN outside the frame
        rows = np.clip(np.rint(moved[..., 1]), 0, height - 1).astype(int)
        cols = np.clip(np.rint(moved[..., 0]), 0, width - 1).astype(int)
        values[hidden[np.arange(len(frames))[:, None], rows, cols] > 0] = np.nan
        return nan_median(values)


PLATES: dict[str, type] = {"temporal": TemporalPlate}


def load_clean_plate(spec: str) -> CleanPlateBackend:
    """The clean-plate backend for `spec` (`temporal`); raises `ConfigError` naming the spec."""
    backend_class = PLATES.get(spec.strip())
    if backend_class is None:
        raise ConfigError(f"clean_plate: unknown clean-plate method {spec!r}; known: {', '.join(PLATES)}")
    return backend_class()


def nan_median(values: np.ndarray) -> np.ndarray:
    """The median over axis 0 leaving NaNs out (NaN where all are), as `np.nanmedian` but about 8x faster here: one
    sort (NaNs sort last), then the middle of the values that are there."""
    if not len(values):
        return np.full(values.shape[1:], np.nan, np.float32)
    ordered = np.sort(values, axis=0)
    present = (~np.isnan(values)).sum(axis=0)
    low = np.take_along_axis(ordered, ((np.maximum(present, 1) - 1) // 2)[None], axis=0)[0]
    high = np.take_along_axis(ordered, (present // 2)[None], axis=0)[0]
    return np.where(present > 0, (low + high) / 2, np.nan).astype(np.float32)


def warp_all(matrices: np.ndarray, points: np.ndarray) -> np.ndarray:
    """(K, N, 2) float32: the (N, 2) points mapped by each of the (K, 3, 3) homographies."""
    mapped = matrices @ np.concatenate([points, np.ones((len(points), 1))], axis=1).T  # (K, 3, N)
    return np.moveaxis(mapped[:, :2] / mapped[:, 2:], 1, 2).astype(np.float32)


def bilinear(frames: np.ndarray, points: np.ndarray) -> np.ndarray:
    """(K, N, 3) float32 bilinear samples of (K, H, W, 3) frames, each at its own (N, 2) points (x, y); NaN for a
    point outside its frame."""
    height, width = frames.shape[1:3]
    count = points.shape[1]
    if not count:
        return np.empty((len(frames), 0, 3), np.float32)
    # cv2.remap reads a map image: the points as rows of 1024 (it refuses maps wider than 32767)
    padded = np.zeros((len(frames), -(-count // 1024) * 1024, 2), np.float32)
    padded[:, :count] = points
    out = np.empty((len(frames), count, 3), np.float32)
    for k, (frame, where) in enumerate(zip(frames, padded.reshape(len(frames), -1, 1024, 2))):
        out[k] = cv2.remap(frame, where[..., 0], where[..., 1], cv2.INTER_LINEAR).reshape(-1, 3)[:count]
    x, y = points[..., 0], points[..., 1]
    out[~((x >= 0) & (x <= width - 1) & (y >= 0) & (y <= height - 1))] = np.nan
    return out


def plate_indices(total: int, sampled: list[int], limit: int) -> list[int]:
    """The source frames a plate is made from: `limit` evenly spaced over the whole clip, and the sampled ones."""
    spread = np.linspace(0, total - 1, min(total, limit)).round().astype(int).tolist() if limit > 0 else []
    return sorted(set(spread) | set(sampled))


def matte_refusal(alpha: np.ndarray) -> str | None:
    """Why a matte ((T, H, W) uint8, as stored) leaves nothing to decompose, or None."""
    covered = alpha > 0
    if not covered.any():
        return "the matte is empty in every frame: no foreground to decompose"
    share = float(covered.mean())
    if share > MAX_COVERED:
        return f"the matte covers {share:.0%} of the frame (limit {MAX_COVERED:.0%}): no background to decompose"
    return None


def make_plate(item: SourceItem, clip: VideoClip, source_frames: int, matting: MattingBackend, config: BuildConfig,
               backend: CleanPlateBackend, motion: MotionEstimator | None = None) -> Plate:
    """The clean plate of a matted clip's frames (`clip`: the sampled frames and their matte) from the whole source
    clip: its frames read at the build size, matted by `matting` (or given by its masks), aligned by the camera's
    motion. Raises `InputError` (one line) where no decomposed sample can be made of it."""
    alpha = quantise(clip.alpha)
    refusal = matte_refusal(alpha)
    if refusal:
        raise InputError(refusal)
    indices = plate_indices(source_frames, clip.frame_indices, backend.source_frames)
    if storage.is_remote(item.uri):  # fetched again by this worker: decode kept no copy of the source
        with tempfile.TemporaryDirectory(prefix="layerflow-plate-") as folder:
            whole = read_frames(localise(item, Path(folder))[0], indices, config)
    else:
        whole = read_frames(item, indices, config)
    try:
        matte = matting(whole) if whole.alpha is None else None
    except InputError as exc:
        raise InputError(f"the clip's other frames could not be matted: {one_line(exc)}") from exc
    whole_alpha = whole.alpha if matte is None else np.clip(matte.alpha.astype(np.float32), 0.0, 1.0)
    estimator = motion or MotionEstimator()
    camera = estimator.static(whole.frames, STATIC_PX)
    if camera is None:
        try:
            camera = estimator(whole.frames)
        except InputError as exc:
            raise InputError(f"no clean plate: {one_line(exc)}") from exc
    source = PlateClip(whole.frames, whole_alpha, camera.matrices, indices)
    targets = [indices.index(i) for i in clip.frame_indices]
    background, invented = backend(source, targets, alpha)
    scores = plate_scores(alpha, invented, background, camera.matrices[targets])
    if scores["plate_invented_mean"] > MAX_INVENTED:
        raise InputError(f"the clean plate would be mostly invented: {scores['plate_invented_mean']:.0%} of the "
                         f"covered background is never shown by the clip (limit {MAX_INVENTED:.0%}): the "
                         "foreground hardly moves against it")
    return Plate(background, invented, scores)


def plate_scores(alpha: np.ndarray, invented: np.ndarray, background: np.ndarray,
                 matrices: np.ndarray) -> dict[str, float | None]:
    """The invented share of the covered background (mean and max over the frames with a foreground) and the plate's
    temporal stability: PSNR of each frame's plate against the previous frame's background, moved by the camera."""
    covered = alpha > 0
    shares = [float(invented[t].sum() / covered[t].sum()) for t in range(len(alpha)) if covered[t].any()]
    stability = []
    for t in range(1, len(alpha)):
        ys, xs = np.nonzero(covered[t])
        to_previous = np.linalg.inv(matrices[t - 1]) @ matrices[t]
        previous = bilinear(background[t - 1][None], warp_all(to_previous[None], np.stack([xs, ys], axis=1)))[0]
        shown = ~np.isnan(previous[:, 0])
        if shown.any():
            stability.append(psnr(background[t][ys[shown], xs[shown]], previous[shown]))
    return {"plate_invented_mean": round(float(np.mean(shares)), 5) if shares else None,
            "plate_invented_max": round(float(np.max(shares)), 5) if shares else None,
            "plate_stability": round(float(np.mean(stability)), 3) if stability else None}


def read_frames(item: SourceItem, indices: list[int], config: BuildConfig) -> VideoClip:
    """The source frames `indices` of a video or frame folder, fitted to the build size like `decode` fits them, with
    the input's masks as alpha where it has masks for all of them."""
    path = Path(item.uri)
    chunks = [indices[i:i + READ_CHUNK] for i in range(0, len(indices), READ_CHUNK)]
    if item.kind is InputKind.FRAME_FOLDER:
        files = frame_files(path)
        stems = [files[i].stem for i in indices]
        frames = np.concatenate([cover(np.stack([read_image(files[i], config.max_pixels)[0] for i in chunk]), None,
                                       config.size)[0] for chunk in chunks])
    elif item.kind is InputKind.VIDEO:
        stems = [f"{i:05d}" for i in indices]
        frames = np.concatenate([cover(read_rgb_frames(path, chunk), None, config.size)[0] for chunk in chunks])
    else:
        raise InputError(f"no clean plate for an input of kind {item.kind.value} (a video or a frame folder only)")
    alpha = _masks(item, stems, config.size) if item.mask_dir else None
    return VideoClip(frames, alpha, fps=config.fps, frame_indices=list(indices))


def _masks(item: SourceItem, stems: list[str], size: tuple[int, int]) -> np.ndarray | None:
    """The input's masks of these frames fitted like the frames, or None where it lacks one (`decode.read_masks`)."""
    masks = read_masks(item, stems)
    if masks is None:
        return None
    return np.stack([cover(np.zeros((1, *mask.shape, 3), np.uint8), mask[None], size)[1][0] for mask in masks])
