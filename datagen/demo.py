"""An offline, deterministic demo source: foreground videos (half of them filmed by a panning, shaking camera) with
exact ground truth (alpha, clean background, foreground colour), background videos and layered images, all cut from
the pictures that ship inside scikit-image.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Literal

import cv2
import numpy as np
import skimage.data
from PIL import Image
from scipy import ndimage
from skimage.filters import threshold_otsu
from skimage.morphology import convex_hull_object

from manifests.errors import ConfigError
from manifests.video_io import quantise, write_rgb_video

WIDTH, HEIGHT = 320, 240
FRAME_COUNT = 48
FPS = 24.0
CRF = 18
NOISE_SIGMA = 1.5  # per-frame sensor noise; the scene itself never changes
SUPERSAMPLE = 4  # shape masks are drawn at 4x and area-averaged, which gives 1-px anti-aliased edges
PAD = 3  # empty border around every sprite, so warping never cuts its alpha with a hard edge
MARGIN = 2  # keeps objects off the frame border (the border of every ground-truth frame is zero)
# A moving camera pans at about 1% of the frame width per frame with hand-held jitter about the pan, as the hand-held
# DAVIS clips in the shared test data (measured with `datagen.matting.camera` on the whole clips: pan 0.8-1.4% of the
# width per frame, shake 0.1-0.5%; the demo's measure 0.9-1.2% and 0.3-0.4%, which `tests/test_demo.py` checks).
PAN_SPEED = (2.5, 4.0)  # px per frame (less where the picture has no room for the whole pan in its direction)
SHAKE_PX = 1.5  # RMS of the jitter's translation (px) ...
SHAKE_DEGREES = 0.25  # ... and of its roll (degrees about the frame centre)
SHAKE_FRAMES = 1.0  # the jitter is white noise smoothed over this many frames (Gaussian sigma)
SHAKE_ROOM = 8.0  # px the jitter may need beyond the pan's own room

# Child-generator streams, so adding an item to one group never shifts the randomness of another.
_FOREGROUND, _BACKGROUND, _LAYERED, _CAMERA = 1, 2, 3, 4

Camera = Literal["static", "moving"]


@dataclass(frozen=True)
class Ellipse:
    """`|dx / rx| ** power + |dy / ry| ** power <= 1` in picture pixels: 2 is an ellipse, 4 a squircle."""

    cx: float
    cy: float
    rx: float
    ry: float
    power: float = 2.0


@dataclass(frozen=True)
class Cutout:
    """An object cut out of a scikit-image picture.

    `mask` is "shape" (the union of the `shape` ellipses) or "bright" (objects lighter than their
    surroundings, thresholded and made convex one by one).
    """

    name: str
    picture: str  # a function of `skimage.data`
    box: tuple[int, int, int, int]  # x0, y0, x1, y1 of the crop in the picture
    caption: str
    mask: Literal["shape", "bright"] = "shape"
    shape: tuple[Ellipse, ...] = ()
    video_size: int = 96  # longest side in the foreground videos (30% of the frame width)
    max_turn: float = 10.0  # degrees the object may rotate either way while it moves
    image_size: tuple[int, int] = (130, 190)  # range of the longest side in the layered images


@dataclass(frozen=True)
class Backdrop:
    """A photo or texture used as a background; grey textures are tinted so the scenes have colour."""

    name: str
    picture: str
    caption: str
    tint: tuple[float, float, float] | None = None
    scale: float = 1.0  # resize before cropping, so that a 320x240 crop shows enough of the picture


@dataclass(frozen=True)
class DemoManifest:
    """What `make_demo_source` wrote; `ground_truth[i]` is the ground truth of `foreground_videos[i]`, filmed by a
    `cameras[i]` camera.

    A ground-truth folder is DAVIS-style: the alpha as 00000.png, 00001.png, ...; beside it `foreground/` (the
    straight foreground colour per frame, black where the alpha is 0) and the clean background: `background.png`
    for a static camera, `background/` (one per frame) for a moving one.
    """

    root: Path
    foreground_videos: tuple[Path, ...]
    background_videos: tuple[Path, ...]
    layered_images: tuple[Path, ...]  # folders with foreground.png, background.png and captions.json
    ground_truth: tuple[Path, ...]
    cameras: tuple[Camera, ...]
    frame_count: int
    fps: float

    @property
    def counts(self) -> dict[str, int]:
        return {
            "foreground_videos": len(self.foreground_videos),
            "moving_camera_videos": self.cameras.count("moving"),
            "background_videos": len(self.background_videos),
            "layered_images": len(self.layered_images),
            "ground_truth_frames": len(self.ground_truth) * self.frame_count,
        }


@dataclass(frozen=True)
class _Sprite:
    """A cut-out at one size: straight RGB (0..255) of the whole crop and its soft alpha (0..1)."""

    rgb: np.ndarray
    alpha: np.ndarray

    @property
    def centre(self) -> tuple[float, float]:
        height, width = self.alpha.shape
        return (width - 1) / 2, (height - 1) / 2


CUTOUTS = {
    cutout.name: cutout
    for cutout in (
        Cutout("astronaut_face", "astronaut", (150, 10, 306, 162),
               "the smiling face of a woman with short brown hair",
               shape=(Ellipse(228, 75, 75, 63), Ellipse(222, 110, 52, 49))),
        # The head plus two pointed ears (power < 2 gives a diamond-like outline).
        Cutout("cat", "chelsea", (14, 0, 402, 300), "the face of a tabby cat with green eyes",
               shape=(Ellipse(195, 170, 180, 145), Ellipse(75, 55, 50, 55, power=1.3),
                      Ellipse(355, 55, 45, 55, power=1.3))),
        Cutout("coffee_cup", "coffee", (72, 13, 482, 390), "a cup of espresso with a spoon on a red saucer",
               shape=(Ellipse(277, 225, 203, 163), Ellipse(290, 110, 120, 95))),
        Cutout("rocket", "rocket", (306, 122, 340, 404), "a tall white rocket",
               shape=(Ellipse(323, 263, 15, 139, power=4.0),), video_size=190, max_turn=4.0),
        # The logo's alpha channel is opaque everywhere (white corners), so its disc is cut out by shape.
        Cutout("logo", "logo", (8, 7, 493, 492),
               "the scikit-image logo, a green and orange disc with a snake on it",
               shape=(Ellipse(250.5, 249.5, 240, 240),), video_size=90),
        Cutout("coins", "coins", (18, 98, 182, 224), "six old silver coins in two rows, in black and white",
               mask="bright", video_size=110, image_size=(170, 215)),
        Cutout("colour_wheel", "colorwheel", (0, 0, 371, 370),
               "a round colour wheel, white in the centre and dark at the rim",
               shape=(Ellipse(185, 185, 182, 182),)),
    )
}

BACKDROPS = {
    backdrop.name: backdrop
    for backdrop in (
        Backdrop("grass", "grass", "green grass", tint=(0.45, 0.8, 0.3)),
        Backdrop("dry_grass", "grass", "dry yellow grass", tint=(0.95, 0.85, 0.45)),
        Backdrop("red_brick", "brick", "red brickwork", tint=(0.95, 0.45, 0.35)),
        Backdrop("slate_brick", "brick", "blue-grey brickwork", tint=(0.6, 0.7, 0.85)),
        Backdrop("gravel", "gravel", "grey gravel"),
        Backdrop("moon", "moon", "the grey, cratered surface of the moon"),
        Backdrop("galaxies", "hubble_deep_field", "a field of distant galaxies in deep space", scale=0.5),
        Backdrop("tissue", "immunohistochemistry", "a microscope image of tissue stained brown and blue"),
        Backdrop("cameraman", "camera",
                 "a black-and-white photo of a man in a dark coat looking through a camera on a tripod",
                 scale=0.75),
        Backdrop("launch_pad", "rocket", "a white rocket on its launch pad at dusk, between lattice towers",
                 scale=0.6),
    )
}

# (cutout, backdrop, camera): objects over backgrounds that contrast with them, filmed by a locked-off camera or by
# a hand-held one panning across a backdrop (a picture at least 190 px wider or taller than the frame).
FOREGROUND_VIDEOS: tuple[tuple[str, str, Camera], ...] = (
    ("astronaut_face", "grass", "moving"),
    ("cat", "slate_brick", "static"),
    ("coffee_cup", "moon", "moving"),
    ("rocket", "galaxies", "static"),
    ("logo", "gravel", "static"),
    ("coins", "red_brick", "moving"),
)
BACKGROUND_VIDEOS = ("galaxies", "gravel", "moon", "cameraman")
LAYERED_IMAGES = (
    ("cat", "red_brick"),
    ("astronaut_face", "launch_pad"),
    ("coffee_cup", "grass"),
    ("logo", "tissue"),
    ("colour_wheel", "slate_brick"),
    ("coins", "dry_grass"),
)


DEMO_FOLDER = "_demo_source"  # where a build writes it, beside the dataset's own files


def demo_source_for(out: str, log: Callable[[str], None] = print) -> Path:
    """The built-in demo source of a build of `out`: written once, into `OUT/_demo_source` (into the local staging
    folder when `out` is a URI on object storage), and reused by a rerun."""
    from datagen.publish import staging_dir
    from manifests.storage import is_remote

    folder = (staging_dir(out) if is_remote(out) else Path(out)) / DEMO_FOLDER
    if not folder.exists():
        log(f"writing the built-in demo source to {folder}")
        make_demo_source(folder)
    return folder


def make_demo_source(out: Path, seed: int = 0) -> DemoManifest:
    """Write the demo source tree under `out` (which must not exist or be empty) and list what it wrote."""
    out = Path(out)
    _check_output(out, seed)
    out.mkdir(parents=True, exist_ok=True)
    foreground, truth = [], []
    for index, (cutout, backdrop, camera) in enumerate(FOREGROUND_VIDEOS):
        video, gt = _write_foreground_video(out, index, CUTOUTS[cutout], BACKDROPS[backdrop], camera, seed)
        foreground.append(video)
        truth.append(gt)
    background = [_write_background_video(out, index, BACKDROPS[name], seed)
                  for index, name in enumerate(BACKGROUND_VIDEOS)]
    layered = [_write_layered_image(out, index, CUTOUTS[cutout], BACKDROPS[backdrop], seed)
               for index, (cutout, backdrop) in enumerate(LAYERED_IMAGES)]
    cameras = tuple(camera for _, _, camera in FOREGROUND_VIDEOS)
    return DemoManifest(out, tuple(foreground), tuple(background), tuple(layered), tuple(truth), cameras,
                        FRAME_COUNT, FPS)


def _check_output(out: Path, seed: int) -> None:
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ConfigError(f"demo seed must be a non-negative integer, got {seed!r}")
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ConfigError(f"demo output {out} already exists and is not an empty folder; "
                          "give a new path (the demo never overwrites files)")


def _rng(seed: int, group: int, index: int) -> np.random.Generator:
    return np.random.default_rng([seed, group, index])


# --- foreground videos ------------------------------------------------------------------------------


def _write_foreground_video(out: Path, index: int, cutout: Cutout, backdrop: Backdrop, camera: Camera,
                            seed: int) -> tuple[Path, Path]:
    rng = _rng(seed, _FOREGROUND, index)
    stem = f"fg_{index:02d}_{cutout.name}"
    picture = _backdrop_picture(backdrop)
    static = _crop(picture, rng)  # drawn for either camera, so the object's path does not depend on the camera
    sprite = _sprite(cutout, cutout.video_size)
    # The object's lap is in frame coordinates: a moving camera follows it loosely, so it never leaves the frame.
    path = _loop_path(sprite, cutout.max_turn, rng)
    views = _camera_views(picture, _rng(seed, _CAMERA, index)) if camera == "moving" else [static] * FRAME_COUNT
    truth = out / "ground_truth" / stem
    for folder in (truth / "foreground", *([truth / "background"] if camera == "moving" else [])):
        folder.mkdir(parents=True)
    if camera == "static":
        Image.fromarray(_to_uint8(static)).save(truth / "background.png")
    frames = []
    for frame_index, (matrix, view) in enumerate(zip(path, views, strict=True)):
        alpha, rgb = _place(sprite, matrix)
        alpha8 = quantise(alpha)
        # Composite with the quantised alpha, so the ground truth is exactly the alpha of the frame.
        weight = alpha8[..., None].astype(np.float32) / 255.0
        frames.append(_to_uint8(weight * rgb + (1.0 - weight) * view + _noise(rng)))
        name = f"{frame_index:05d}.png"
        Image.fromarray(alpha8).save(truth / name)
        colour = _to_uint8(rgb)
        colour[alpha8 == 0] = 0  # nothing of the object shows there
        Image.fromarray(colour).save(truth / "foreground" / name, compress_level=1)
        if camera == "moving":
            Image.fromarray(_to_uint8(view)).save(truth / "background" / name, compress_level=1)
    video = out / "foreground" / f"{stem}.mp4"
    write_rgb_video(video, np.stack(frames), FPS, crf=CRF)
    _write_json(video.with_suffix(".json"), {"role": "foreground", "foreground": cutout.caption})
    return video, truth


def _camera_views(picture: np.ndarray, rng: np.random.Generator) -> list[np.ndarray]:
    """What a hand-held camera panning across `picture` sees: WIDTH x HEIGHT views, float32.

    A steady pan (`_pan`, `PAN_SPEED`) plus jitter: smoothed white noise in x, y and roll (`SHAKE_*`).
    """
    corners = _pan(picture.shape, rng, PAN_SPEED, SHAKE_ROOM)
    jitter = ndimage.gaussian_filter1d(rng.standard_normal((FRAME_COUNT, 3)), SHAKE_FRAMES, axis=0)
    jitter *= np.array([SHAKE_PX / np.sqrt(2), SHAKE_PX / np.sqrt(2), SHAKE_DEGREES]) / jitter.std(axis=0)
    views = []
    for (x, y), (dx, dy, roll) in zip(corners, jitter, strict=True):
        # Picture pixels to frame pixels: move the window's corner to the origin, then roll about the frame centre.
        matrix = cv2.getRotationMatrix2D(((WIDTH - 1) / 2, (HEIGHT - 1) / 2), float(roll), 1.0)
        matrix[:, 2] -= matrix[:, :2] @ np.array([x + dx, y + dy])
        views.append(cv2.warpAffine(picture, matrix, (WIDTH, HEIGHT), flags=cv2.INTER_CUBIC,
                                    borderMode=cv2.BORDER_REFLECT))
    return views


def _loop_path(sprite: _Sprite, max_turn: float, rng: np.random.Generator) -> list[np.ndarray]:
    """One lap of a wide ellipse per clip, turning and breathing a little, always inside the frame.

    The lap is as wide as the frame allows, so the object uncovers every background pixel for most
    of the clip (what a temporal-median background needs).
    """
    steps = 2 * np.pi * np.arange(FRAME_COUNT) / FRAME_COUNT
    turns = max_turn * rng.uniform(0.5, 1.0) * np.sin(steps + rng.uniform(0, 2 * np.pi))
    scales = 1.0 + rng.uniform(0.02, 0.06) * np.sin(steps + rng.uniform(0, 2 * np.pi))
    half_w, half_h = _half_extent(sprite, turns, scales)
    room_x, room_y = WIDTH / 2 - half_w - MARGIN, HEIGHT / 2 - half_h - MARGIN
    radius_x, radius_y = room_x * rng.uniform(0.9, 1.0), room_y * rng.uniform(0.9, 1.0)
    centre_x = (WIDTH - 1) / 2 + rng.uniform(-1, 1) * (room_x - radius_x)
    centre_y = (HEIGHT - 1) / 2 + rng.uniform(-1, 1) * (room_y - radius_y)
    angles = rng.uniform(0, 2 * np.pi) + rng.choice([-1.0, 1.0]) * steps
    xs, ys = centre_x + radius_x * np.cos(angles), centre_y + radius_y * np.sin(angles)
    moves = zip(xs, ys, turns, scales, strict=True)
    return [_matrix(sprite, x, y, turn, scale) for x, y, turn, scale in moves]


def _half_extent(sprite: _Sprite, turns: np.ndarray, scales: np.ndarray) -> tuple[float, float]:
    """Largest half width and height of the turned and scaled sprite box over all frames."""
    height, width = sprite.alpha.shape
    radians = np.deg2rad(turns)
    cos, sin = np.abs(np.cos(radians)), np.abs(np.sin(radians))
    half_w = scales * (width / 2 * cos + height / 2 * sin)
    half_h = scales * (width / 2 * sin + height / 2 * cos)
    return float(half_w.max()), float(half_h.max())


def _matrix(sprite: _Sprite, x: float, y: float, turn: float, scale: float) -> np.ndarray:
    """Sprite pixels to frame pixels: turn and scale about the sprite centre, then move it to (x, y)."""
    cx, cy = sprite.centre
    matrix = cv2.getRotationMatrix2D((cx, cy), float(turn), float(scale))
    matrix[:, 2] += (x - cx, y - cy)
    return matrix


def _place(sprite: _Sprite, matrix: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The sprite's alpha (H, W) and straight RGB (H, W, 3) in the frame, float32."""
    size = (WIDTH, HEIGHT)
    alpha = cv2.warpAffine(sprite.alpha, matrix, size, flags=cv2.INTER_LINEAR,
                           borderMode=cv2.BORDER_CONSTANT, borderValue=0)
    # Straight colour: edge pixels keep the photo's own colours instead of fading to the border value.
    rgb = cv2.warpAffine(sprite.rgb, matrix, size, flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
    return np.clip(alpha, 0.0, 1.0), rgb


# --- background videos ------------------------------------------------------------------------------


def _write_background_video(out: Path, index: int, backdrop: Backdrop, seed: int) -> Path:
    rng = _rng(seed, _BACKGROUND, index)
    picture = _backdrop_picture(backdrop)
    frames = []
    for x, y in _pan(picture.shape, rng):
        shift = np.float32([[1, 0, -x], [0, 1, -y]])
        view = cv2.warpAffine(picture, shift, (WIDTH, HEIGHT), flags=cv2.INTER_CUBIC)
        frames.append(_to_uint8(view + _noise(rng)))
    video = out / "backgrounds" / f"bg_{index:02d}_{backdrop.name}.mp4"
    write_rgb_video(video, np.stack(frames), FPS, crf=CRF)
    _write_json(video.with_suffix(".json"), {"role": "background", "background": backdrop.caption})
    return video


def _pan(shape: tuple[int, ...], rng: np.random.Generator, speeds: tuple[float, float] = (0.5, 1.0),
         margin: float = 0.0) -> list[tuple[float, float]]:
    """Top-left corners of a crop window drifting `speeds` px per frame in a random direction, at least `margin` px
    inside the picture (slower where the picture has no room for the whole drift in that direction)."""
    speed, heading = rng.uniform(*speeds), rng.uniform(0, 2 * np.pi)
    direction = np.array([np.cos(heading), np.sin(heading)])
    # Corners stay within [1, room], so every cubic-interpolation tap falls inside the picture.
    room = np.array([shape[1] - WIDTH, shape[0] - HEIGHT], dtype=float) - 2.0 - 2 * margin
    fits = np.min(room / np.maximum(np.abs(direction), 1e-9)) / (FRAME_COUNT - 1)
    travel = min(speed, fits) * (FRAME_COUNT - 1) * direction
    low = 1.0 + np.maximum(0.0, -travel)
    high = np.minimum(room, room - travel)
    start = margin + low + rng.uniform(0, 1, 2) * (high - low)
    steps = np.arange(FRAME_COUNT) / (FRAME_COUNT - 1)
    return [(float(x), float(y)) for x, y in start + steps[:, None] * travel]


# --- layered images ---------------------------------------------------------------------------------


def _write_layered_image(out: Path, index: int, cutout: Cutout, backdrop: Backdrop, seed: int) -> Path:
    rng = _rng(seed, _LAYERED, index)
    background = _to_uint8(_crop(_backdrop_picture(backdrop), rng))
    sprite = _sprite(cutout, int(rng.integers(cutout.image_size[0], cutout.image_size[1] + 1)))
    turn = rng.uniform(-12, 12)
    half_w, half_h = _half_extent(sprite, np.array([turn]), np.ones(1))
    x = rng.uniform(half_w + MARGIN, WIDTH - 1 - half_w - MARGIN)
    y = rng.uniform(half_h + MARGIN, HEIGHT - 1 - half_h - MARGIN)
    alpha, rgb = _place(sprite, _matrix(sprite, x, y, turn, 1.0))
    alpha8, rgb8 = quantise(alpha), _to_uint8(rgb)
    rgb8[alpha8 == 0] = 0  # nothing shows there; zeros keep the PNG small and the layer unambiguous
    folder = out / "layered" / f"li_{index:02d}_{cutout.name}"
    folder.mkdir(parents=True)
    Image.fromarray(np.dstack([rgb8, alpha8])).save(folder / "foreground.png")
    Image.fromarray(background).save(folder / "background.png")
    _write_json(folder / "captions.json", {
        "foreground": cutout.caption,
        "background": backdrop.caption,
        "blended": f"{cutout.caption} in front of {backdrop.caption}",
    })
    return folder


# --- pictures, sprites and shared helpers ------------------------------------------------------------


@cache
def _picture(name: str) -> np.ndarray:
    """A scikit-image picture as float32 (H, W, C) in 0..255 (C is 1, 3 or 4), read-only."""
    picture = np.asarray(getattr(skimage.data, name)(), dtype=np.float32)
    if picture.ndim == 2:
        picture = picture[..., None]
    picture.setflags(write=False)
    return picture


def _backdrop_picture(backdrop: Backdrop) -> np.ndarray:
    picture = _picture(backdrop.picture)
    if backdrop.tint is not None:
        picture = picture[..., :1] * np.asarray(backdrop.tint, dtype=np.float32)
    elif picture.shape[2] == 1:
        picture = np.repeat(picture, 3, axis=2)
    height, width = picture.shape[:2]
    return _resize(picture, round(width * backdrop.scale), round(height * backdrop.scale))


def _crop(picture: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A random WIDTH x HEIGHT window of the picture."""
    y = int(rng.integers(0, picture.shape[0] - HEIGHT + 1))
    x = int(rng.integers(0, picture.shape[1] - WIDTH + 1))
    return np.ascontiguousarray(picture[y:y + HEIGHT, x:x + WIDTH])


def _sprite(cutout: Cutout, longest: int) -> _Sprite:
    """The cut-out resized so its longest side is `longest` px, with a soft alpha and an empty border."""
    x0, y0, x1, y1 = cutout.box
    picture = _picture(cutout.picture)[y0:y1, x0:x1]
    factor = longest / max(x1 - x0, y1 - y0)
    width, height = round((x1 - x0) * factor), round((y1 - y0) * factor)
    colour = picture[..., :3] if picture.shape[2] >= 3 else np.repeat(picture, 3, axis=2)
    rgb = _resize(colour, width, height)
    if cutout.mask == "bright":
        alpha = _supersampled(_bright_objects(picture[..., 0]), width, height)
    else:
        alpha = _shape_alpha(cutout, width, height)
    rgb = cv2.copyMakeBorder(rgb, PAD, PAD, PAD, PAD, cv2.BORDER_REPLICATE)
    alpha = cv2.copyMakeBorder(np.clip(alpha, 0, 1).astype(np.float32), PAD, PAD, PAD, PAD,
                               cv2.BORDER_CONSTANT, value=0)
    return _Sprite(rgb.astype(np.float32), alpha)


def _shape_alpha(cutout: Cutout, width: int, height: int) -> np.ndarray:
    """Union of the cut-out's (super)ellipses, sampled at SUPERSAMPLE x the sprite size and averaged."""
    x0, y0, x1, y1 = cutout.box
    fine_x = x0 + (np.arange(width * SUPERSAMPLE) + 0.5) * (x1 - x0) / (width * SUPERSAMPLE)
    fine_y = y0 + (np.arange(height * SUPERSAMPLE) + 0.5) * (y1 - y0) / (height * SUPERSAMPLE)
    xs, ys = np.meshgrid(fine_x, fine_y)
    inside = np.zeros(xs.shape, dtype=bool)
    for ellipse in cutout.shape:
        inside |= (np.abs((xs - ellipse.cx) / ellipse.rx) ** ellipse.power
                   + np.abs((ys - ellipse.cy) / ellipse.ry) ** ellipse.power) <= 1.0
    return cv2.resize(inside.astype(np.float32), (width, height), interpolation=cv2.INTER_AREA)


def _bright_objects(grey: np.ndarray) -> np.ndarray:
    """Objects lighter than the crop's background (Otsu), cleaned and each replaced by its convex hull."""
    objects = ndimage.binary_opening(grey > threshold_otsu(grey), iterations=2)
    return convex_hull_object(ndimage.binary_fill_holes(objects))


def _supersampled(mask: np.ndarray, width: int, height: int) -> np.ndarray:
    """A hard mask at picture resolution, given smooth outlines at SUPERSAMPLE x and averaged down."""
    fine = cv2.resize(mask.astype(np.float32), (width * SUPERSAMPLE, height * SUPERSAMPLE),
                      interpolation=cv2.INTER_LINEAR) > 0.5
    return cv2.resize(fine.astype(np.float32), (width, height), interpolation=cv2.INTER_AREA)


def _resize(image: np.ndarray, width: int, height: int) -> np.ndarray:
    """Area averaging to shrink (no aliasing), bilinear to enlarge (the same size is an exact copy)."""
    flags = cv2.INTER_AREA if width < image.shape[1] else cv2.INTER_LINEAR
    resized = cv2.resize(np.asarray(image, dtype=np.float32), (width, height), interpolation=flags)
    return resized[..., None] if image.ndim == 3 and resized.ndim == 2 else resized


def _noise(rng: np.random.Generator) -> np.ndarray:
    """One frame of Gaussian sensor noise, (H, W, 1) so it broadcasts over RGB.

    Luma only: yuv420p would average most chroma noise away, and one channel draws 3x faster.
    """
    return rng.standard_normal((HEIGHT, WIDTH, 1), dtype=np.float32) * np.float32(NOISE_SIGMA)


def _to_uint8(values: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(values), 0, 255).astype(np.uint8)


def _write_json(path: Path, data: dict) -> None:
    path.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n", encoding="utf-8")
