"""Matting backends by spec (`auto`, `given`, `bgsub`, `chroma[:green|:blue]`), each loaded once per worker."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

from datagen.clip import Clip
from datagen.errors import ConfigError
from datagen.matting.base import BackendInfo, Matte, MattingBackend
from datagen.matting.bgsub import BackgroundSubtraction
from datagen.matting.chroma import ChromaKey
from datagen.matting.given import GivenAlpha

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
}
LATER_BACKENDS = ("rembg", "sam2", "tflite")  # learned backends that need model weights


def load_matting(spec: str) -> MattingBackend:
    """The backend for `spec`; raises `ConfigError` naming the spec for unknown or unavailable backends."""
    name, has_option, option = spec.strip().partition(":")
    if name in LATER_BACKENDS:
        raise ConfigError(f"matting backend {spec!r} is not available in this version; known: {known_specs()}")
    backend_class = BACKENDS.get(name)
    if backend_class is None:
        raise ConfigError(f"unknown matting backend {spec!r}; known: {known_specs()}")
    if not has_option:
        return backend_class()
    option_field = getattr(backend_class, "spec_option", None)
    if option_field is None:
        raise ConfigError(f"matting spec {spec!r}: {name} takes no ':' option; known: {known_specs()}")
    try:
        return backend_class(**{option_field: option})
    except ConfigError as exc:
        raise ConfigError(f"matting spec {spec!r}: {exc}") from None


def known_specs() -> str:
    """The specs `load_matting` accepts, for error messages and help text."""
    specs = []
    for name, backend_class in BACKENDS.items():
        specs.append(name)
        specs.extend(f"{name}:{value}" for value in getattr(backend_class, "spec_values", ()))
    return ", ".join(specs)
