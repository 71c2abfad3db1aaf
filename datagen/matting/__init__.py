"""Matting backends by spec (`auto`, `given`, `bgsub`, `chroma[:green|:blue]`, `rembg:<model or .onnx>`,
`tflite:<path>`, `sam2:<config>[:<checkpoint>]`, and `<spec>+sam2...`: the first prompts SAM 2), each loaded once
per worker."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

from datagen.matting.base import BackendInfo, Matte, MattingBackend
from datagen.matting.bgsub import BackgroundSubtraction
from datagen.matting.chroma import ChromaKey
from datagen.matting.given import GivenAlpha
from datagen.matting.rembg_backend import RembgMatting
from datagen.matting.sam2_backend import Sam2Matting
from datagen.matting.tflite import TfliteMatting
from datagen.video_clip import VideoClip
from manifests.errors import ConfigError

__all__ = ["AUTO_REMBG_MODELS", "BACKENDS", "AutoMatting", "BackendInfo", "Matte", "MattingBackend",
           "auto_learned_spec", "known_specs", "load_matting", "uses_gpu"]


# `auto` mattes clips without alpha with the first of these rembg models whose weights are already on this machine
# (quality first, then speed), and with weight-free background subtraction when none is.
AUTO_REMBG_MODELS = ("isnet-general-use", "birefnet-general", "birefnet-general-lite", "u2net", "u2netp", "silueta")


def auto_learned_spec() -> str | None:
    """The learned backend `auto` uses on this machine (`rembg:<model>`), or None; looks at the local cache only."""
    from datagen.matting.rembg_backend import cache_homes, cached_model

    if not any(home.is_dir() for home in cache_homes()):  # the common case, without importing rembg (2 s)
        return None
    for model in AUTO_REMBG_MODELS:
        if cached_model(model)[0] is not None:
            return f"rembg:{model}"
    return None


@dataclass
class AutoMatting:
    """`given` for clips that carry alpha; for the rest the best learned backend whose weights are on this machine
    (see `AUTO_REMBG_MODELS`), else `bgsub`. The matte names the backend that ran."""

    name: ClassVar[str] = "auto"

    device: str = "auto"  # for the learned backend, if one is found
    given: GivenAlpha = field(default_factory=GivenAlpha)
    bgsub: BackgroundSubtraction = field(default_factory=BackgroundSubtraction)
    learned: MattingBackend | None = field(init=False, default=None)

    def __post_init__(self) -> None:
        spec = auto_learned_spec()
        if spec is not None:
            self.learned = _load_one(spec, self.device)

    def __call__(self, clip: VideoClip) -> Matte:
        if clip.alpha is not None:
            return self.given(clip)
        return (self.learned or self.bgsub)(clip)


# Spec name -> backend class. A class that takes an option (`chroma:green`) names the field it sets in
# `spec_option` and the values it accepts in `spec_values`; one with a `prompter` field can follow a '+'.
BACKENDS: dict[str, type] = {
    "auto": AutoMatting,
    "given": GivenAlpha,
    "bgsub": BackgroundSubtraction,
    "chroma": ChromaKey,
    "rembg": RembgMatting,
    "tflite": TfliteMatting,
    "sam2": Sam2Matting,
}


def load_matting(spec: str, device: str = "auto") -> MattingBackend:
    """The backend for `spec`; raises `ConfigError` naming the spec for unknown or unavailable backends.

    `device` (auto | cpu | cuda, the build's `--device`) goes to backends that have a `device` field.
    `<first>+<second>` builds both; the first (`rembg`, `rembg:isnet-general-use`, ...) becomes the prompter of the
    second (`sam2`, `sam2:<config>[:<checkpoint>]`), e.g. `rembg+sam2` = `rembg:u2net+sam2:sam2.1_hiera_t`.
    """
    first, combined, second = spec.strip().partition("+")
    if not combined:
        return _load_one(first, device)
    if "+" in second or "prompter" not in _fields(BACKENDS.get(second.partition(":")[0])):
        raise ConfigError(f"matting spec {spec!r}: only `<spec>+sam2[:<config>[:<checkpoint>]]` combines backends "
                          "(the first one's mask of frame 0 prompts SAM 2)")
    return _load_one(second, device, prompter=_load_one(first, device))


def _load_one(spec: str, device: str, **extra: object) -> MattingBackend:
    name, has_option, option = spec.strip().partition(":")
    backend_class = BACKENDS.get(name)
    if backend_class is None:
        raise ConfigError(f"unknown matting backend {spec!r}; known: {known_specs()}")
    kwargs = {"device": device, **extra} if "device" in _fields(backend_class) else extra
    option_field = getattr(backend_class, "spec_option", None)
    if has_option and option_field is None:
        raise ConfigError(f"matting spec {spec!r}: {name} takes no ':' option; known: {known_specs()}")
    if has_option:
        kwargs[option_field] = option
    try:
        return backend_class(**kwargs)
    except ConfigError as exc:
        raise ConfigError(f"matting spec {spec!r}: {exc}") from None


def uses_gpu(spec: str) -> bool:
    """Whether `spec` runs a learned model that can use a GPU (so its stage is scheduled as a GPU actor)."""
    if spec.strip() == "auto":
        return auto_learned_spec() is not None
    names = [part.strip().partition(":")[0] for part in spec.split("+")]
    return any(getattr(BACKENDS.get(name), "gpu_capable", False) for name in names)


def _fields(backend_class: type | None) -> dict:
    return getattr(backend_class, "__dataclass_fields__", {})


def known_specs() -> str:
    """The specs `load_matting` accepts, for error messages and help text."""
    specs = []
    for name, backend_class in BACKENDS.items():
        specs.append(name)
        specs.extend(f"{name}:{value}" for value in getattr(backend_class, "spec_values", ()))
        if "prompter" in _fields(backend_class):
            specs.append(f"<spec>+{name}")
    return ", ".join(specs)
