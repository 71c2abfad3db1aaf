"""The vocabulary every module shares: layers, sample kinds, input kinds, roles and end states."""

from __future__ import annotations

from enum import Enum


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


class InputKind(str, Enum):
    """What a discovered input is; the `ALPHA_*`/`RGBA_*` kinds are known only after decoding."""

    VIDEO = "video"
    ALPHA_VIDEO = "alpha_video"  # WebM VP9 with alpha, ProRes 4444, ...
    FRAME_FOLDER = "frame_folder"  # JPEG/PNG frames (DAVIS / SAM2 convention)
    ALPHA_FRAME_FOLDER = "alpha_frame_folder"  # PNG sequence with alpha
    IMAGE = "image"
    RGBA_IMAGE = "rgba_image"
    LAYERED_IMAGE = "layered_image"  # folder with foreground.png + background.png
    UNSUPPORTED = "unsupported"

    @property
    def is_video(self) -> bool:
        return self in (InputKind.VIDEO, InputKind.ALPHA_VIDEO, InputKind.FRAME_FOLDER, InputKind.ALPHA_FRAME_FOLDER)


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


class Stage(str, Enum):
    """Pipeline stages, as named in failure rows and timings."""

    DISCOVER = "discover"
    DECODE = "decode"
    MATTE = "matte"
    PLAN = "plan"
    COMPOSE = "compose"
    CAPTION = "caption"
    SCORE = "score"
