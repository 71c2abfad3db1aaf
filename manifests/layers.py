"""The vocabulary every module shares: layers, sample kinds, input kinds, adapters, roles and end states; and the one
rule that flattens ordered foreground layers into the single foreground of a sample (`flatten`, `composite_over`)."""

from __future__ import annotations

from collections.abc import Sequence
from enum import Enum

import numpy as np


class Layer(str, Enum):
    """One layer of a layered sample; `blended = alpha * foreground + (1 - alpha) * background`."""

    FOREGROUND = "foreground"  # straight (un-premultiplied) RGB
    ALPHA = "alpha"  # one channel, 0..1, stored losslessly
    BACKGROUND = "background"  # RGB
    BLENDED = "blended"  # RGB


RGB_LAYERS: tuple[Layer, ...] = (Layer.FOREGROUND, Layer.BACKGROUND, Layer.BLENDED)
CAPTIONED_LAYERS: tuple[Layer, ...] = RGB_LAYERS


class SampleKind(str, Enum):
    VIDEO_COPY_PASTE = "video_copy_paste"  # matted foreground clip pasted onto another background clip
    IMAGE_FROZEN = "image_frozen"  # a layered image repeated over T frames (frozen-frame triplet)
    # a real clip as it is: its matte, a clean plate behind the foreground, the foreground colour solved from the three
    VIDEO_DECOMPOSED = "video_decomposed"


class ForegroundColour(str, Enum):
    """Where a sample's straight foreground colour comes from (the manifest's `foreground_colour` column)."""

    SOURCE = "source"  # the source's own pixels: a video's frames, an RGBA file's colour
    ESTIMATED = "estimated"  # estimated from an image and its matte (pymatting `estimate_foreground_ml`)
    SOLVED = "solved"  # solved from a clip, its matte and its clean plate (`video_decomposed`)


class InputKind(str, Enum):
    """What a discovered input is; the `ALPHA_*`/`RGBA_*` kinds are known only after decoding."""

    VIDEO = "video"
    ALPHA_VIDEO = "alpha_video"  # WebM VP9 with alpha, ProRes 4444, ...
    FRAME_FOLDER = "frame_folder"  # JPEG/PNG frames (DAVIS / SAM2 convention)
    ALPHA_FRAME_FOLDER = "alpha_frame_folder"  # PNG sequence with alpha
    IMAGE = "image"
    RGBA_IMAGE = "rgba_image"
    LAYERED_IMAGE = "layered_image"  # a layered image with its own background (folder, sibling triplet, PSD)
    UNSUPPORTED = "unsupported"

    @property
    def is_video(self) -> bool:
        return self in (InputKind.VIDEO, InputKind.ALPHA_VIDEO, InputKind.FRAME_FOLDER, InputKind.ALPHA_FRAME_FOLDER)


class Adapter(str, Enum):
    """How a sample's foreground input was read (the manifest's `adapter` column): one value per source layout."""

    COPY_PASTE = "copy_paste"  # a video (matted, with alpha or with masks) pasted onto another clip
    RGBA_IMAGE = "rgba_image"  # one RGBA image pasted onto another image
    FG_BG_FOLDER = "fg_bg_folder"  # a folder with foreground.* (RGBA) + background.*
    MULTILAYER_FOLDER = "multilayer_folder"  # a folder with bg.* + layer_<k>.* (+ composite.* / whole.*)
    SIBLING_FOLDERS = "sibling_folders"  # fg/x + bg/x (+ merged/x or composite/x) matched by name
    MATTE_PAIR = "matte_pair"  # x.png + x_alpha.png, or images/x + alpha/x: colour estimated from image + matte
    PSD = "psd"  # a .psd / .psb document read with psd-tools


class Role(str, Enum):
    """What an input may be used for; `any` lets the planner decide."""

    ANY = "any"
    FOREGROUND = "foreground"
    BACKGROUND = "background"


class InputState(str, Enum):
    """Exactly one end state per discovered input."""

    USED = "used"  # named in the provenance of at least one kept sample
    UNUSED = "unused"  # valid, but not drawn (e.g. a spare background)
    REJECTED = "rejected"  # only appears in samples that the policy rejected
    FAILED = "failed"  # could not be used; see the failures table
    DUPLICATE = "duplicate"  # the same bytes or content as another input (`duplicate_of`), which alone is built


class Stage(str, Enum):
    """Pipeline stages, as named in failure rows and timings."""

    DISCOVER = "discover"
    DECODE = "decode"
    MATTE = "matte"
    CLEAN_PLATE = "clean_plate"  # the background behind a real clip's foreground (`video_decomposed`)
    PLAN = "plan"
    COMPOSE = "compose"
    CAPTION = "caption"
    SCORE = "score"


def flatten(colours: Sequence[np.ndarray], alphas: Sequence[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """The flattened view of ordered foreground layers, as stored: uint8 straight colours (..., 3) and uint8 alphas
    (...), bottom to top -> (uint8 straight colour, uint8 alpha).

    Standard "over" of straight-alpha layers: alpha = 1 - prod(1 - a_k); the premultiplied colour is the layers
    painted over each other, `p = a_k * c_k + (1 - a_k) * p`; the straight colour is `p` over the stored (quantised)
    alpha, so that `alpha * colour` gives `p` back up to the colour's rounding (0 where the alpha is 0).
    """
    premultiplied = np.zeros(np.shape(colours[0]), np.float32)
    coverage = np.zeros(np.shape(alphas[0]), np.float32)
    for colour, alpha in zip(colours, alphas, strict=True):
        a = alpha.astype(np.float32) / 255.0
        premultiplied = a[..., None] * colour.astype(np.float32) + (1.0 - a[..., None]) * premultiplied
        coverage = a + (1.0 - a) * coverage
    alpha = np.clip(np.rint(coverage * 255.0), 0, 255).astype(np.uint8)
    stored = alpha.astype(np.float32)[..., None] / 255.0
    colour = np.where(stored > 0, premultiplied / np.maximum(stored, 1.0 / 255.0), 0.0)
    return np.clip(np.rint(colour), 0, 255).astype(np.uint8), alpha


def composite_over(background: np.ndarray, colours: Sequence[np.ndarray], alphas: Sequence[np.ndarray]) -> np.ndarray:
    """Float (0..255) of the layers (uint8 straight colours and alphas, bottom to top) painted over an opaque uint8
    background: what a sample's foreground layers recompose to, without going through the flattened view."""
    out = background.astype(np.float32)
    for colour, alpha in zip(colours, alphas, strict=True):
        a = alpha.astype(np.float32)[..., None] / 255.0
        out = a * colour.astype(np.float32) + (1.0 - a) * out
    return out
