"""Per-layer captions. `sidecar` uses the captions shipped beside the sources; `none` leaves them null.

Learned captioners (transformers image-to-text / VLMs) plug in behind the same `Captioner` protocol.
"""

from __future__ import annotations

from typing import Protocol

from datagen.errors import ConfigError
from manifests.layers import Layer, SampleKind

BLENDED_TEMPLATE = "{foreground} in front of {background}"


class Captioner(Protocol):
    """Returns a caption (or None) for each of foreground, background and blended."""

    name: str

    def __call__(self, sample: dict) -> dict[Layer, str | None]: ...


class NoCaptioner:
    name = "none"

    def __call__(self, sample: dict) -> dict[Layer, str | None]:
        return {Layer.FOREGROUND: None, Layer.BACKGROUND: None, Layer.BLENDED: None}


class SidecarCaptioner:
    """Captions from `<name>.json` / `<name>.txt` sidecars or list-file columns of the two inputs.

    A plain caption of an input describes what it shows: used as the foreground caption when the
    input is the foreground, as the background caption when it is the background. The blended
    caption is the one given for a layered image, else composed from the other two.
    """

    name = "sidecar"

    def __call__(self, sample: dict) -> dict[Layer, str | None]:
        fg, bg = sample["fg"], sample["bg"]
        foreground = fg.get("caption_foreground") or fg.get("caption")
        if sample["kind"] == SampleKind.IMAGE_FROZEN.value and fg["input_id"] == bg["input_id"]:
            background, blended = fg.get("caption_background"), fg.get("caption_blended")
        else:
            background = bg.get("caption_background") or bg.get("caption_blended") or bg.get("caption")
            blended = None
        if blended is None and foreground and background:
            blended = compose_blended(foreground, background)
        return {Layer.FOREGROUND: foreground, Layer.BACKGROUND: background, Layer.BLENDED: blended}


def compose_blended(foreground: str, background: str) -> str:
    """`a cat's face` + `A brick wall.` -> `a cat's face in front of a brick wall`."""
    fg = foreground.strip().rstrip(".")
    bg = background.strip().rstrip(".")
    first = bg.split(" ", 1)[0]
    if first[:1].isupper() and (len(first) == 1 or first[1:].islower()):  # "A wall" -> "a wall"; "NASA" stays
        bg = bg[0].lower() + bg[1:]
    return BLENDED_TEMPLATE.format(foreground=fg, background=bg)


CAPTIONERS = {"sidecar": SidecarCaptioner, "none": NoCaptioner}


def load_captioner(spec: str) -> Captioner:
    if spec not in CAPTIONERS:
        raise ConfigError(f"captioner: unknown {spec!r}; available here: {', '.join(CAPTIONERS)}")
    return CAPTIONERS[spec]()
