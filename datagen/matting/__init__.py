"""Matting backends by spec (`auto`, `given`, `bgsub`, `chroma[:green|:blue]`, `rembg:<model or .onnx>`,
`tflite:<path>`), each loaded once per worker."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

from datagen.clip import Clip
from datagen.errors import ConfigError
from datagen.matting.base import BackendInfo, Matte, MattingBackend
from datagen.matting.bgsub import BackgroundSubtraction
from datagen.matting.chroma import ChromaKey
from datagen.matting.given import GivenAlpha
from datagen.matting.rembg_backend import RembgMatting
from datagen.matting.tflite import TfliteMatting

__all__ = ["BACKENDS", "AutoMatting", "BackendInfo", "Matte", "MattingBackend", "known_specs", "load_matting"]


@dataclass
class AutoMatting:
    """`given` for clips that carry alpha, `bgsub` for the rest; the matte names the one that ran."""

    name: ClassVar[str] = "auto"

    given: GivenAlpha = field(default_factory=GivenAlpha)
    bgsub: BackgroundSubtraction = field(default_factory=BackgroundSubtraction)

    def __call__(self, clip: Clip) -> Matte:
        return self.given(clip) if clip.alpha is not None else self.bgsub(clip)


# Spec name -> backend class. A class that takes an option (`chroma:green`) names the field it sets in
# `spec_option` and the values it accepts in `spec_values`. Learned backends register here when they land.
BACKENDS: dict[str, type] = {
    "auto": AutoMatting,
    "given": GivenAlpha,
    "bgsub": BackgroundSubtraction,
    "chroma": ChromaKey,
    "rembg": RembgMatting,
    "tflite": TfliteMatting,
}
LATER_BACKENDS = ("sam2",)  # learned backends that need model weights


def load_matting(spec: str, device: str = "auto") -> MattingBackend:
    """The backend for `spec`; raises `ConfigError` naming the spec for unknown or unavailable backends.

    `device` (auto | cpu | cuda, the build's `--device`) goes to backends that have a `device` field.
    """
    name, has_option, option = spec.strip().partition(":")
    if name in LATER_BACKENDS:
        raise ConfigError(f"matting backend {spec!r} is not available in this version; known: {known_specs()}")
    backend_class = BACKENDS.get(name)
    if backend_class is None:
        raise ConfigError(f"unknown matting backend {spec!r}; known: {known_specs()}")
    kwargs = {"device": device} if "device" in getattr(backend_class, "__dataclass_fields__", {}) else {}
    option_field = getattr(backend_class, "spec_option", None)
    if has_option and option_field is None:
        raise ConfigError(f"matting spec {spec!r}: {name} takes no ':' option; known: {known_specs()}")
    if has_option:
        kwargs[option_field] = option
    try:
        return backend_class(**kwargs)
    except ConfigError as exc:
        raise ConfigError(f"matting spec {spec!r}: {exc}") from None


def known_specs() -> str:
    """The specs `load_matting` accepts, for error messages and help text."""
    specs = []
    for name, backend_class in BACKENDS.items():
        specs.append(name)
        specs.extend(f"{name}:{value}" for value in getattr(backend_class, "spec_values", ()))
    return ", ".join(specs)
