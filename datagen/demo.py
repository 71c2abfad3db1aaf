"""An offline, deterministic demo source: foreground videos (half of them filmed by a panning, shaking camera) with
exact ground truth (alpha, clean background, foreground colour), background videos and layered images, cut from the
pictures that ship inside scikit-image. The HELDOUT profile adds procedural objects and backdrops, each with an
identity in its sidecars, for an honest train / val split.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum
from functools import cache
from pathlib import Path
from typing import ClassVar, Literal, get_args

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
DRIFT_SPEED = (0.5, 1.0)  # px per frame of the background videos' slow pan

# Child-generator streams, so adding an item to one group never shifts the randomness of another.
_FOREGROUND, _BACKGROUND, _LAYERED, _CAMERA = 1, 2, 3, 4
# The held-out profile's own streams (new groups, so the default demo's randomness never shifts): what is filmed over
# what, the backdrop textures, and one stream per procedural object family.
_CASTING, _TEXTURE = 5, 6
_SHAPE_STREAMS = {"blob": 7, "polygon": 8, "star": 9, "ring": 10}

Camera = Literal["static", "moving"]
ShapeFamily = Literal["blob", "polygon", "star", "ring"]
FillPattern = Literal["gradient", "stripes", "checks", "dots"]
TexturePattern = Literal["blotches", "plaid", "waves"]


class DemoProfile(str, Enum):
    """Which demo `make_demo_source` writes.

    DEFAULT: the small hand-picked demo (6 foreground videos, 4 background videos, 6 layered images).
    HELDOUT: a larger one for an honest evaluation: the scikit-image cut-outs plus procedural objects and backdrops,
    every object filmed once, and `group` / `background_group` identities in every sidecar, so that a train / val
    split can keep each object and each backdrop on one side.
    """

    DEFAULT = "default"
    HELDOUT = "heldout"


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
    family: ClassVar[str] = "picture"

    @property
    def group(self) -> str:
        """The object's identity in the HELDOUT sidecars: "family/name"."""
        return f"{self.family}/{self.name}"


@dataclass(frozen=True)
class Fill:
    """A procedural object's pattern in two PALETTE colours, turned by `angle` degrees; `period` is its repeat as a
    fraction of the object's longest side (a gradient runs from the first colour to the second along `angle`)."""

    pattern: FillPattern
    colours: tuple[str, str]
    angle: float
    period: float


@dataclass(frozen=True)
class Shape:
    """A procedural object: a closed `outline` (x, y in unit coordinates about the origin) drawn with the cut-outs'
    supersampled anti-aliased alpha and filled with `fill`.

    `rounding` rounds the corners (Gaussian sigma, a fraction of the longest side); `hole` cuts the outline scaled by
    this factor out of the middle (a ring). The size fields mean what they mean for a `Cutout`.
    """

    family: ShapeFamily
    name: str
    caption: str
    outline: tuple[tuple[float, float], ...]
    fill: Fill
    rounding: float = 0.0
    hole: float = 0.0
    video_size: int = 96
    max_turn: float = 10.0
    image_size: tuple[int, int] = (130, 190)

    @property
    def group(self) -> str:
        """The object's identity in the HELDOUT sidecars: "family/name"."""
        return f"{self.family}/{self.name}"


@dataclass(frozen=True)
class Backdrop:
    """A photo or texture used as a background; grey textures are tinted so the scenes have colour."""

    name: str
    picture: str
    caption: str
    tint: tuple[float, float, float] | None = None
    scale: float = 1.0  # resize before cropping, so that a 320x240 crop shows enough of the picture
    family: ClassVar[str] = "photo"

    @property
    def group(self) -> str:
        """The backdrop's identity in the HELDOUT sidecars: "family/picture". By its picture, not its name: two tints
        of one photo (grass and dry grass) are one background, which a split must keep on one side."""
        return f"{self.family}/{self.picture}"


@dataclass(frozen=True)
class Texture:
    """A procedural backdrop, TEXTURE_SIZE px square: `pattern` in two PALETTE colours repeating every `period` px
    (blotches: their size), turned by `angle` degrees, under a fine grain; `noise_seed` seeds its random parts."""

    name: str
    caption: str
    pattern: TexturePattern
    colours: tuple[str, str]
    period: float
    angle: float
    noise_seed: int
    family: ClassVar[str] = "texture"

    @property
    def group(self) -> str:
        """The backdrop's identity in the HELDOUT sidecars: "family/name"."""
        return f"{self.family}/{self.name}"


DemoObject = Cutout | Shape
DemoBackdrop = Backdrop | Texture


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
    profile: DemoProfile
    # Identities ("family/name"; only HELDOUT writes them into the sidecars): (object, backdrop behind it) of
    # `foreground_videos[i]` and of `layered_images[i]`; the backdrop of `background_videos[i]`.
    foreground_groups: tuple[tuple[str, str], ...]
    background_groups: tuple[str, ...]
    layered_groups: tuple[tuple[str, str], ...]

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
class Sprite:
    """An object drawn at one size: straight RGB (H, W, 3) in 0..255 of its whole box and its soft alpha (H, W) in
    0..1, float32, with PAD empty px around."""

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

# The held-out profile: the cut-outs plus procedural objects, each filmed once, a third of them again in a layered
# image, over the photo backdrops and procedural textures.
HELDOUT_SHAPES: dict[ShapeFamily, int] = {"blob": 7, "polygon": 6, "star": 6, "ring": 6}  # objects per family
HELDOUT_TEXTURES = 8
HELDOUT_BACKGROUND_VIDEOS = 12  # distinct backdrops
HELDOUT_LAYERED_IMAGES = 12
# Half the default clip keeps the write within its time budget (about 20 s of CPU); the lap is still one whole lap
# per clip, so an object uncovers the background for as much of the clip as in the default.
HELDOUT_FRAME_COUNT = 24
# Longest side of a procedural object in the videos, about the round cut-outs' 90..96: most shapes are about as tall
# as wide, and a taller one would not leave the 240-px frame height uncovered for most of its lap.
SHAPE_VIDEO_SIZES = (80, 100)
TEXTURE_SIZE = 512  # px square, as the scikit-image textures: room for a moving camera's whole pan
# The rocket's own photo: a split could put the rocket on one side and its photo's pixels on the other.
HELDOUT_PHOTOS = tuple(name for name in BACKDROPS if name != "launch_pad")
PALETTE = {  # the colours of the procedural objects and textures, by the names their captions use
    "red": (205, 40, 45), "orange": (240, 135, 25), "yellow": (245, 210, 50), "green": (55, 150, 65),
    "teal": (25, 140, 140), "blue": (40, 75, 190), "purple": (120, 55, 160), "pink": (240, 125, 175),
    "white": (240, 240, 235), "black": (30, 30, 35), "brown": (115, 70, 35),
}


@dataclass(frozen=True)
class _Plan:
    """What a profile writes: (object, backdrop, camera) per foreground video, the backdrop of each background video,
    (object, backdrop) per layered image, and how."""

    foreground_videos: tuple[tuple[DemoObject, DemoBackdrop, Camera], ...]
    background_videos: tuple[DemoBackdrop, ...]
    layered_images: tuple[tuple[DemoObject, DemoBackdrop], ...]
    frame_count: int = FRAME_COUNT
    identities: bool = False  # write `group` / `background_group` into the sidecars
    alpha_compression: int = 6  # zlib level of the ground-truth alpha PNGs (6: zlib's default, as PIL writes unasked)

    def sidecar_groups(self, shown: DemoObject | DemoBackdrop, behind: DemoBackdrop | None = None) -> dict[str, str]:
        """The identity fields of a sidecar: the group of what the input shows and of the backdrop behind it."""
        if not self.identities:
            return {}
        return {"group": shown.group, **({"background_group": behind.group} if behind is not None else {})}


_DEFAULT_PLAN = _Plan(
    foreground_videos=tuple((CUTOUTS[cutout], BACKDROPS[backdrop], camera)
                            for cutout, backdrop, camera in FOREGROUND_VIDEOS),
    background_videos=tuple(BACKDROPS[name] for name in BACKGROUND_VIDEOS),
    layered_images=tuple((CUTOUTS[cutout], BACKDROPS[backdrop]) for cutout, backdrop in LAYERED_IMAGES),
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


def make_demo_source(out: Path, seed: int = 0, profile: DemoProfile = DemoProfile.DEFAULT) -> DemoManifest:
    """Write the demo source tree of `profile` (a `DemoProfile` or its value) under `out` (which must not exist or be
    empty) and list what it wrote."""
    out = Path(out)
    profile = _check_output(out, seed, profile)
    plan = _heldout_plan(seed) if profile is DemoProfile.HELDOUT else _DEFAULT_PLAN
    out.mkdir(parents=True, exist_ok=True)
    foreground, truth = [], []
    for index, (thing, backdrop, camera) in enumerate(plan.foreground_videos):
        video, gt = _write_foreground_video(out, index, thing, backdrop, camera, seed, plan)
        foreground.append(video)
        truth.append(gt)
    background = [_write_background_video(out, index, backdrop, seed, plan)
                  for index, backdrop in enumerate(plan.background_videos)]
    layered = [_write_layered_image(out, index, thing, backdrop, seed, plan)
               for index, (thing, backdrop) in enumerate(plan.layered_images)]
    return DemoManifest(
        out, tuple(foreground), tuple(background), tuple(layered), tuple(truth),
        cameras=tuple(camera for _, _, camera in plan.foreground_videos),
        frame_count=plan.frame_count, fps=FPS, profile=profile,
        foreground_groups=tuple((thing.group, backdrop.group) for thing, backdrop, _ in plan.foreground_videos),
        background_groups=tuple(backdrop.group for backdrop in plan.background_videos),
        layered_groups=tuple((thing.group, backdrop.group) for thing, backdrop in plan.layered_images),
    )


def _check_output(out: Path, seed: int, profile: DemoProfile | str) -> DemoProfile:
    """Refuse a bad seed, an unknown profile or an occupied output before writing anything; the profile as an enum."""
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ConfigError(f"demo seed must be a non-negative integer, got {seed!r}")
    try:
        profile = DemoProfile(profile)
    except ValueError:
        raise ConfigError(f"demo profile must be one of {', '.join(p.value for p in DemoProfile)}, "
                          f"got {profile!r}") from None
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ConfigError(f"demo output {out} already exists and is not an empty folder; "
                          "give a new path (the demo never overwrites files)")
    return profile


def _rng(seed: int, group: int, index: int) -> np.random.Generator:
    return np.random.default_rng([seed, group, index])


# --- the held-out profile ---------------------------------------------------------------------------


def heldout_objects(seed: int = 0) -> tuple[DemoObject, ...]:
    """The HELDOUT profile's objects: the scikit-image cut-outs, then HELDOUT_SHAPES procedural objects per family."""
    shapes = (make_shape(family, number, seed) for family, count in HELDOUT_SHAPES.items() for number in range(count))
    return (*CUTOUTS.values(), *shapes)


def heldout_backdrops(seed: int = 0) -> tuple[DemoBackdrop, ...]:
    """The HELDOUT profile's backdrops: HELDOUT_PHOTOS, then HELDOUT_TEXTURES procedural textures."""
    textures = (make_texture(number, seed) for number in range(HELDOUT_TEXTURES))
    return (*(BACKDROPS[name] for name in HELDOUT_PHOTOS), *textures)


def _heldout_plan(seed: int) -> _Plan:
    """Every held-out object filmed once (half of them, drawn, by a moving camera), HELDOUT_BACKGROUND_VIDEOS distinct
    backdrops filmed alone, and HELDOUT_LAYERED_IMAGES of the objects again as layered images.

    An object goes over a backdrop that contrasts with it (`_contrasting`), as in the default's hand-picked pairs; the
    candidates are the backdrops with room for the camera's pan.
    """
    rng = _rng(seed, _CASTING, 0)
    things, backdrops = heldout_objects(seed), heldout_backdrops(seed)
    pictures = {backdrop: _backdrop_picture(backdrop) for backdrop in backdrops}
    means = {backdrop: picture.reshape(-1, 3).mean(axis=0) for backdrop, picture in pictures.items()}
    frames = HELDOUT_FRAME_COUNT
    panned = [b for b in backdrops if _has_room(pictures[b].shape, PAN_SPEED[1], SHAKE_ROOM, frames)]
    drifted = [b for b in backdrops if _has_room(pictures[b].shape, DRIFT_SPEED[1], 0.0, frames)]
    moving = set(rng.permutation(len(things))[:len(things) // 2].tolist())
    uses: Counter[DemoBackdrop] = Counter()
    foreground = []
    for index, thing in enumerate(things):
        camera: Camera = "moving" if index in moving else "static"
        behind = _contrasting(thing, panned if camera == "moving" else backdrops, means, uses, rng)
        foreground.append((thing, behind, camera))
    distinct = list({backdrop.group: backdrop for backdrop in drifted}.values())  # one tint of a photo
    background = [distinct[i] for i in sorted(rng.choice(len(distinct), HELDOUT_BACKGROUND_VIDEOS, replace=False))]
    layered = [(things[i], _contrasting(things[i], backdrops, means, uses, rng))
               for i in sorted(rng.choice(len(things), HELDOUT_LAYERED_IMAGES, replace=False))]
    return _Plan(tuple(foreground), tuple(background), tuple(layered), frame_count=frames, identities=True,
                 alpha_compression=1)


def _has_room(shape: tuple[int, ...], speed: float, margin: float, frame_count: int) -> bool:
    """Whether `_pan` can move its window `speed` px per frame in any direction across a picture of `shape`, at
    least `margin` px inside it, for the whole clip."""
    room = min(shape[1] - WIDTH, shape[0] - HEIGHT) - 2.0 - 2 * margin
    return room >= speed * (frame_count - 1)


def _contrasting(thing: DemoObject, backdrops: list[DemoBackdrop] | tuple[DemoBackdrop, ...],
                 means: dict[DemoBackdrop, np.ndarray], uses: Counter[DemoBackdrop],
                 rng: np.random.Generator) -> DemoBackdrop:
    """A backdrop for the object, counted in `uses`: drawn among the half of `backdrops` whose mean colour is
    farthest from the object's pixels (on average: a striped object differs from a backdrop of its mean colour), from
    those used least so far, so that a dark backdrop, far from most objects, does not end up behind most of them."""
    sprite = draw_object(thing, 48)
    pixels = sprite.rgb[sprite.alpha > 0.5]
    distance = [float(np.linalg.norm(pixels - means[backdrop], axis=1).mean()) for backdrop in backdrops]
    farthest = [backdrops[i] for i in np.argsort(distance, kind="stable")[::-1][:max(1, len(backdrops) // 2)]]
    fewest = min(uses[backdrop] for backdrop in farthest)
    chosen = farthest[int(rng.choice([i for i, backdrop in enumerate(farthest) if uses[backdrop] == fewest]))]
    uses[chosen] += 1
    return chosen


# --- foreground videos ------------------------------------------------------------------------------


def _write_foreground_video(out: Path, index: int, thing: DemoObject, backdrop: DemoBackdrop, camera: Camera,
                            seed: int, plan: _Plan) -> tuple[Path, Path]:
    rng = _rng(seed, _FOREGROUND, index)
    stem = f"fg_{index:02d}_{thing.name}"
    picture = _backdrop_picture(backdrop)
    static = _crop(picture, rng)  # drawn for either camera, so the object's path does not depend on the camera
    sprite = draw_object(thing, thing.video_size)
    # The object's lap is in frame coordinates: a moving camera follows it loosely, so it never leaves the frame.
    path = _loop_path(sprite, thing.max_turn, rng, plan.frame_count)
    if camera == "moving":
        views = _camera_views(picture, _rng(seed, _CAMERA, index), plan.frame_count)
    else:
        views = [static] * plan.frame_count
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
        Image.fromarray(alpha8).save(truth / name, compress_level=plan.alpha_compression)
        colour = _to_uint8(rgb)
        colour[alpha8 == 0] = 0  # nothing of the object shows there
        Image.fromarray(colour).save(truth / "foreground" / name, compress_level=1)
        if camera == "moving":
            Image.fromarray(_to_uint8(view)).save(truth / "background" / name, compress_level=1)
    video = out / "foreground" / f"{stem}.mp4"
    write_rgb_video(video, np.stack(frames), FPS, crf=CRF)
    _write_json(video.with_suffix(".json"), {"role": "foreground", "foreground": thing.caption,
                                             **plan.sidecar_groups(thing, backdrop)})
    return video, truth


def _camera_views(picture: np.ndarray, rng: np.random.Generator, frame_count: int) -> list[np.ndarray]:
    """What a hand-held camera panning across `picture` sees: `frame_count` WIDTH x HEIGHT views, float32.

    A steady pan (`_pan`, `PAN_SPEED`) plus jitter: smoothed white noise in x, y and roll (`SHAKE_*`).
    """
    corners = _pan(picture.shape, rng, frame_count, PAN_SPEED, SHAKE_ROOM)
    jitter = ndimage.gaussian_filter1d(rng.standard_normal((frame_count, 3)), SHAKE_FRAMES, axis=0)
    jitter *= np.array([SHAKE_PX / np.sqrt(2), SHAKE_PX / np.sqrt(2), SHAKE_DEGREES]) / jitter.std(axis=0)
    views = []
    for (x, y), (dx, dy, roll) in zip(corners, jitter, strict=True):
        # Picture pixels to frame pixels: move the window's corner to the origin, then roll about the frame centre.
        matrix = cv2.getRotationMatrix2D(((WIDTH - 1) / 2, (HEIGHT - 1) / 2), float(roll), 1.0)
        matrix[:, 2] -= matrix[:, :2] @ np.array([x + dx, y + dy])
        views.append(cv2.warpAffine(picture, matrix, (WIDTH, HEIGHT), flags=cv2.INTER_CUBIC,
                                    borderMode=cv2.BORDER_REFLECT))
    return views


def _loop_path(sprite: Sprite, max_turn: float, rng: np.random.Generator, frame_count: int) -> list[np.ndarray]:
    """One lap of a wide ellipse per clip of `frame_count` frames, turning and breathing a little, always inside the
    frame.

    The lap is as wide as the frame allows, so the object uncovers every background pixel for most
    of the clip (what a temporal-median background needs).
    """
    steps = 2 * np.pi * np.arange(frame_count) / frame_count
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


def _half_extent(sprite: Sprite, turns: np.ndarray, scales: np.ndarray) -> tuple[float, float]:
    """Largest half width and height of the turned and scaled sprite box over all frames."""
    height, width = sprite.alpha.shape
    radians = np.deg2rad(turns)
    cos, sin = np.abs(np.cos(radians)), np.abs(np.sin(radians))
    half_w = scales * (width / 2 * cos + height / 2 * sin)
    half_h = scales * (width / 2 * sin + height / 2 * cos)
    return float(half_w.max()), float(half_h.max())


def _matrix(sprite: Sprite, x: float, y: float, turn: float, scale: float) -> np.ndarray:
    """Sprite pixels to frame pixels: turn and scale about the sprite centre, then move it to (x, y)."""
    cx, cy = sprite.centre
    matrix = cv2.getRotationMatrix2D((cx, cy), float(turn), float(scale))
    matrix[:, 2] += (x - cx, y - cy)
    return matrix


def _place(sprite: Sprite, matrix: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The sprite's alpha (H, W) and straight RGB (H, W, 3) in the frame, float32."""
    size = (WIDTH, HEIGHT)
    alpha = cv2.warpAffine(sprite.alpha, matrix, size, flags=cv2.INTER_LINEAR,
                           borderMode=cv2.BORDER_CONSTANT, borderValue=0)
    # Straight colour: edge pixels keep the photo's own colours instead of fading to the border value.
    rgb = cv2.warpAffine(sprite.rgb, matrix, size, flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
    return np.clip(alpha, 0.0, 1.0), rgb


# --- background videos ------------------------------------------------------------------------------


def _write_background_video(out: Path, index: int, backdrop: DemoBackdrop, seed: int, plan: _Plan) -> Path:
    rng = _rng(seed, _BACKGROUND, index)
    picture = _backdrop_picture(backdrop)
    frames = []
    for x, y in _pan(picture.shape, rng, plan.frame_count):
        shift = np.float32([[1, 0, -x], [0, 1, -y]])
        view = cv2.warpAffine(picture, shift, (WIDTH, HEIGHT), flags=cv2.INTER_CUBIC)
        frames.append(_to_uint8(view + _noise(rng)))
    video = out / "backgrounds" / f"bg_{index:02d}_{backdrop.name}.mp4"
    write_rgb_video(video, np.stack(frames), FPS, crf=CRF)
    _write_json(video.with_suffix(".json"), {"role": "background", "background": backdrop.caption,
                                             **plan.sidecar_groups(backdrop)})
    return video


def _pan(shape: tuple[int, ...], rng: np.random.Generator, frame_count: int,
         speeds: tuple[float, float] = DRIFT_SPEED, margin: float = 0.0) -> list[tuple[float, float]]:
    """Top-left corners of a crop window over `frame_count` frames, drifting `speeds` px per frame in a random
    direction, at least `margin` px inside the picture (slower where the picture has no room for the whole drift in
    that direction)."""
    speed, heading = rng.uniform(*speeds), rng.uniform(0, 2 * np.pi)
    direction = np.array([np.cos(heading), np.sin(heading)])
    # Corners stay within [1, room], so every cubic-interpolation tap falls inside the picture.
    room = np.array([shape[1] - WIDTH, shape[0] - HEIGHT], dtype=float) - 2.0 - 2 * margin
    fits = np.min(room / np.maximum(np.abs(direction), 1e-9)) / (frame_count - 1)
    travel = min(speed, fits) * (frame_count - 1) * direction
    low = 1.0 + np.maximum(0.0, -travel)
    high = np.minimum(room, room - travel)
    start = margin + low + rng.uniform(0, 1, 2) * (high - low)
    steps = np.arange(frame_count) / (frame_count - 1)
    return [(float(x), float(y)) for x, y in start + steps[:, None] * travel]


# --- layered images ---------------------------------------------------------------------------------


def _write_layered_image(out: Path, index: int, thing: DemoObject, backdrop: DemoBackdrop, seed: int,
                         plan: _Plan) -> Path:
    rng = _rng(seed, _LAYERED, index)
    background = _to_uint8(_crop(_backdrop_picture(backdrop), rng))
    sprite = draw_object(thing, int(rng.integers(thing.image_size[0], thing.image_size[1] + 1)))
    turn = rng.uniform(-12, 12)
    half_w, half_h = _half_extent(sprite, np.array([turn]), np.ones(1))
    x = rng.uniform(half_w + MARGIN, WIDTH - 1 - half_w - MARGIN)
    y = rng.uniform(half_h + MARGIN, HEIGHT - 1 - half_h - MARGIN)
    alpha, rgb = _place(sprite, _matrix(sprite, x, y, turn, 1.0))
    alpha8, rgb8 = quantise(alpha), _to_uint8(rgb)
    rgb8[alpha8 == 0] = 0  # nothing shows there; zeros keep the PNG small and the layer unambiguous
    folder = out / "layered" / f"li_{index:02d}_{thing.name}"
    folder.mkdir(parents=True)
    Image.fromarray(np.dstack([rgb8, alpha8])).save(folder / "foreground.png")
    Image.fromarray(background).save(folder / "background.png")
    _write_json(folder / "captions.json", {
        "foreground": thing.caption,
        "background": backdrop.caption,
        "blended": f"{thing.caption} in front of {backdrop.caption}",
        **plan.sidecar_groups(thing, backdrop),
    })
    return folder


# --- procedural objects and textures -----------------------------------------------------------------

OUTLINE_POINTS = 256  # samples of a curved outline (blob, ring): under a supersampled px apart at the largest size
POLYGON_NAMES = {3: "triangle", 4: "square", 5: "pentagon", 6: "hexagon", 7: "heptagon", 8: "octagon"}
STAR_POINTS = {5: "five", 6: "six", 7: "seven", 8: "eight"}


@dataclass(frozen=True)
class _Outline:
    """A family's drawn outline: unit-coordinate points, the words that name it (adjective may be empty), and the
    `Shape` fields `rounding` and `hole`."""

    points: np.ndarray  # (N, 2)
    adjective: str
    noun: str
    rounding: float = 0.0
    hole: float = 0.0


def make_shape(family: ShapeFamily, number: int, seed: int = 0) -> Shape:
    """The `number`th procedural object of `family`: outline, fill, size and caption drawn from its own stream."""
    rng = _rng(seed, _SHAPE_STREAMS[family], number)
    outline = _OUTLINES[family](rng)
    fill = Fill(str(rng.choice(get_args(FillPattern))), _colour_pair(rng, 150.0),
                angle=float(rng.uniform(0, 180)), period=float(rng.uniform(0.16, 0.3)))
    return Shape(family, f"{family}_{number:02d}", _shape_caption(outline, fill),
                 tuple((float(x), float(y)) for x, y in outline.points), fill, outline.rounding, outline.hole,
                 video_size=int(rng.integers(SHAPE_VIDEO_SIZES[0], SHAPE_VIDEO_SIZES[1] + 1)))


def _blob(rng: np.random.Generator) -> _Outline:
    """A smooth closed curve: a circle whose radius wobbles with a few low harmonics, a little flattened (as the
    frame, so that it has room to move)."""
    angles = np.linspace(0, 2 * np.pi, OUTLINE_POINTS, endpoint=False)
    radius = np.ones(OUTLINE_POINTS)
    for harmonic in range(2, 6):  # the wobbles add up to at most 0.36, so the curve never folds over
        radius += rng.uniform(0, 0.28 / harmonic) * np.cos(harmonic * angles + rng.uniform(0, 2 * np.pi))
    points = np.stack([radius * np.cos(angles), rng.uniform(0.7, 1.0) * radius * np.sin(angles)], axis=1)
    return _Outline(points, "smooth", "blob")


def _polygon(rng: np.random.Generator) -> _Outline:
    """A regular polygon of 3 to 8 sides at a random angle, with rounded corners."""
    sides = int(rng.integers(3, 9))
    angles = rng.uniform(0, 2 * np.pi) + 2 * np.pi * np.arange(sides) / sides
    points = np.stack([np.cos(angles), np.sin(angles)], axis=1)
    return _Outline(points, "rounded", POLYGON_NAMES[sides], rounding=float(rng.uniform(0.03, 0.06)))


def _star(rng: np.random.Generator) -> _Outline:
    """A star of 5 to 8 points (inner radius 0.45..0.6 of the outer) at a random angle, its tips slightly rounded."""
    tips = int(rng.integers(5, 9))
    angles = rng.uniform(0, 2 * np.pi) + np.pi * np.arange(2 * tips) / tips
    radius = np.where(np.arange(2 * tips) % 2 == 0, 1.0, rng.uniform(0.45, 0.6))
    points = np.stack([radius * np.cos(angles), radius * np.sin(angles)], axis=1)
    return _Outline(points, f"{STAR_POINTS[tips]}-pointed", "star", rounding=float(rng.uniform(0.015, 0.03)))


def _ring(rng: np.random.Generator) -> _Outline:
    """A ring (hole 0.4..0.6 of the outer radius), plain or with a scalloped edge (a scalloped hole too)."""
    angles = np.linspace(0, 2 * np.pi, OUTLINE_POINTS, endpoint=False)
    scallops = int(rng.choice([0, rng.integers(8, 15)]))
    radius = 1.0 + (0.07 * np.cos(scallops * angles) if scallops else 0.0)
    points = np.stack([radius * np.cos(angles), radius * np.sin(angles)], axis=1)
    return _Outline(points, "scalloped" if scallops else "", "ring", hole=float(rng.uniform(0.4, 0.6)))


_OUTLINES: dict[ShapeFamily, Callable[[np.random.Generator], _Outline]] = {
    "blob": _blob, "polygon": _polygon, "star": _star, "ring": _ring,
}


def _colour_pair(rng: np.random.Generator, distance: float) -> tuple[str, str]:
    """Two PALETTE colours at least `distance` apart (RGB), so that a pattern in them shows."""
    first = str(rng.choice(list(PALETTE)))
    apart = [name for name, rgb in PALETTE.items() if np.linalg.norm(np.subtract(rgb, PALETTE[first])) >= distance]
    return first, str(rng.choice(apart))


def _shape_caption(outline: _Outline, fill: Fill) -> str:
    """What the object looks like, e.g. "a smooth teal blob with yellow dots"."""
    first, second = fill.colours
    adjective, noun = (f"{outline.adjective} " if outline.adjective else ""), outline.noun
    words = {
        "gradient": f"{adjective}{noun} shading from {first} to {second}",
        "stripes": f"{adjective}{first} and {second} striped {noun}",
        "checks": f"{adjective}{first} and {second} checked {noun}",
        "dots": f"{adjective}{first} {noun} with {second} dots",
    }[fill.pattern]
    return f"{'an' if words[0] in 'aeiou' else 'a'} {words}"


def _shape_sprite(shape: Shape, longest: int) -> Sprite:
    """The shape with its outline's longest side `longest` px: the outline rasterised at SUPERSAMPLE x (rounded by
    blurring and thresholding at one half, which rounds corners and keeps straight edges in place), averaged down."""
    points = np.asarray(shape.outline)
    low, high = points.min(axis=0), points.max(axis=0)
    factor = longest / float((high - low).max())
    width, height = (max(1, round(float(side))) for side in (high - low) * factor)
    fine = np.zeros((height * SUPERSAMPLE, width * SUPERSAMPLE), dtype=np.uint8)

    def polygon(scale: float) -> np.ndarray:
        # fine-pixel coordinates with 4 fractional bits (cv2's `shift`); a pixel's centre is at +0.5
        return np.rint(((points * scale - low) * factor * SUPERSAMPLE - 0.5) * 16).astype(np.int32)

    cv2.fillPoly(fine, [polygon(1.0)], 1, lineType=cv2.LINE_8, shift=4)
    if shape.hole:
        cv2.fillPoly(fine, [polygon(shape.hole)], 0, lineType=cv2.LINE_8, shift=4)
    mask = fine.astype(np.float32)
    if shape.rounding:
        sigma = shape.rounding * longest * SUPERSAMPLE
        mask = (cv2.GaussianBlur(mask, (0, 0), sigma, borderType=cv2.BORDER_CONSTANT) > 0.5).astype(np.float32)
    alpha = cv2.resize(mask, (width, height), interpolation=cv2.INTER_AREA)
    return _padded(_fill(shape.fill, width, height, longest), alpha)


def _fill(fill: Fill, width: int, height: int, longest: int) -> np.ndarray:
    """The fill over a width x height box, lit a little from the top left: (H, W, 3) float32 in 0..255.

    Pattern edges are 1-px ramps (the pattern's distance to its edge in px, clipped), so they are anti-aliased too.
    """
    ys, xs = np.mgrid[0:height, 0:width].astype(np.float32)
    xs, ys = xs - (width - 1) / 2, ys - (height - 1) / 2
    radians = np.deg2rad(fill.angle)
    along = xs * np.cos(radians) + ys * np.sin(radians)  # px along the pattern ...
    across = -xs * np.sin(radians) + ys * np.cos(radians)  # ... and across it
    period = fill.period * longest
    if fill.pattern == "gradient":
        mix = 0.5 + along / longest
    elif fill.pattern == "dots":  # dots of radius 0.3 periods on a square grid
        to_dot = np.hypot(along - period * np.round(along / period), across - period * np.round(across / period))
        mix = 0.5 + 0.3 * period - to_dot
    else:  # stripes; checks are two crossing stripes multiplied
        wave = np.sin(2 * np.pi * along / period)
        if fill.pattern == "checks":
            wave = wave * np.sin(2 * np.pi * across / period)
        mix = 0.5 + wave * period / (2 * np.pi)  # sin's slope at its zeros is 2 pi / period per px
    mix = np.clip(mix, 0.0, 1.0)[..., None]
    first, second = (np.asarray(PALETTE[name], dtype=np.float32) for name in fill.colours)
    light = 1.0 - 0.1 * (xs + ys)[..., None] / longest
    return ((1.0 - mix) * first + mix * second) * light


def make_texture(number: int, seed: int = 0) -> Texture:
    """The `number`th procedural backdrop: the patterns take turns; colours, scale and angle are drawn from its own
    stream."""
    rng = _rng(seed, _TEXTURE, number)
    patterns = get_args(TexturePattern)
    pattern: TexturePattern = patterns[number % len(patterns)]
    colours = _colour_pair(rng, 100.0)
    period = float(rng.uniform(*{"blotches": (8, 20), "plaid": (40, 90), "waves": (24, 60)}[pattern]))
    caption = {
        "blotches": f"a mottled pattern of soft {colours[0]} and {colours[1]} blotches",
        "plaid": f"a {colours[0]} and {colours[1]} plaid",
        "waves": f"wavy {colours[0]} and {colours[1]} stripes",
    }[pattern]
    return Texture(f"{pattern}_{number:02d}", caption, pattern, colours, period, float(rng.uniform(0, 180)),
                   int(rng.integers(2**31)))


@cache
def _texture_picture(texture: Texture) -> np.ndarray:
    """The texture as float32 (TEXTURE_SIZE, TEXTURE_SIZE, 3) in 0..255, read-only."""
    noise = np.random.default_rng(texture.noise_seed)
    ys, xs = np.mgrid[0:TEXTURE_SIZE, 0:TEXTURE_SIZE].astype(np.float32)
    radians = np.deg2rad(texture.angle)
    along = xs * np.cos(radians) + ys * np.sin(radians)
    across = -xs * np.sin(radians) + ys * np.cos(radians)
    if texture.pattern == "blotches":
        field = ndimage.gaussian_filter(noise.standard_normal((TEXTURE_SIZE, TEXTURE_SIZE)), texture.period,
                                        mode="wrap")
        mix = 0.5 + 0.6 * field / field.std()
    elif texture.pattern == "plaid":  # two crossing sets of bands: the second colour where they cross, a mix elsewhere
        mix = 0.5 * (_bands(along, texture.period, 0.35 * texture.period)
                     + _bands(across, 0.8 * texture.period, 0.3 * texture.period))
    else:  # stripes whose phase itself swings slowly across them
        swing = 0.6 * texture.period * np.sin(2 * np.pi * across / (4 * texture.period))
        mix = 0.5 + 0.5 * np.sin(2 * np.pi * (along + swing) / texture.period)
    mix = np.clip(mix, 0.0, 1.0)[..., None]
    first, second = (np.asarray(PALETTE[name], dtype=np.float32) for name in texture.colours)
    # A fine grain, so that every texture has detail for a motion estimate and a matting model to hold on to.
    grain = ndimage.gaussian_filter(noise.standard_normal((TEXTURE_SIZE, TEXTURE_SIZE)), 1.0)[..., None]
    picture = ((1.0 - mix) * first + mix * second + 6.0 * grain / grain.std()).astype(np.float32)
    picture.setflags(write=False)
    return picture


def _bands(position: np.ndarray, period: float, width: float) -> np.ndarray:
    """1 inside bands `width` px wide every `period` px of `position`, 0 between, with 1-px anti-aliased edges."""
    return np.clip(0.5 + width / 2 - np.abs(np.mod(position, period) - period / 2), 0.0, 1.0)


# --- pictures, sprites and shared helpers ------------------------------------------------------------


@cache
def _picture(name: str) -> np.ndarray:
    """A scikit-image picture as float32 (H, W, C) in 0..255 (C is 1, 3 or 4), read-only."""
    picture = np.asarray(getattr(skimage.data, name)(), dtype=np.float32)
    if picture.ndim == 2:
        picture = picture[..., None]
    picture.setflags(write=False)
    return picture


def _backdrop_picture(backdrop: DemoBackdrop) -> np.ndarray:
    """The backdrop as float32 (H, W, 3) in 0..255 (a texture's is read-only)."""
    if isinstance(backdrop, Texture):
        return _texture_picture(backdrop)
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


def draw_object(thing: DemoObject, longest: int) -> Sprite:
    """A cut-out or procedural object with the longest side of its box `longest` px."""
    return _shape_sprite(thing, longest) if isinstance(thing, Shape) else _cutout_sprite(thing, longest)


def _cutout_sprite(cutout: Cutout, longest: int) -> Sprite:
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
    return _padded(rgb, alpha)


def _padded(rgb: np.ndarray, alpha: np.ndarray) -> Sprite:
    """The sprite with PAD px around it: transparent, its colour repeated outwards (straight colour at the edges)."""
    rgb = cv2.copyMakeBorder(rgb, PAD, PAD, PAD, PAD, cv2.BORDER_REPLICATE)
    alpha = cv2.copyMakeBorder(np.clip(alpha, 0, 1).astype(np.float32), PAD, PAD, PAD, PAD,
                               cv2.BORDER_CONSTANT, value=0)
    return Sprite(rgb.astype(np.float32), alpha)


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
