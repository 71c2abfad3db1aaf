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
from manifests.models import Access, Group, default_access, default_spec, locate, split_combined

__all__ = ["AUTO_REMBG_MODELS", "BACKENDS", "AutoMatting", "BackendInfo", "Matte", "MattingBackend",
           "auto_learned_spec", "known_specs", "learned_auto", "load_matting", "uses_gpu"]


# Without a driver's choice (a library call, `eval-matting`), `auto` mattes clips without alpha with the registry's CPU
# default if its weights are on this machine, else with the first of these rembg models in rembg's own cache
# (quality first, then speed), else with weight-free background subtraction.
AUTO_REMBG_MODELS = ("isnet-general-use", "birefnet-general", "birefnet-general-lite", "u2net", "u2netp", "silueta")


def auto_learned_spec() -> str | None:
    """The learned backend `auto` uses on this machine without a driver's choice, or None; disk only."""
    from datagen.matting.rembg_backend import cache_homes, cached_model

    default = default_spec(Group.MATTING, "cpu")
    if all(locate(part) for part in split_combined(default)):
        return default
    if not any(home.is_dir() for home in cache_homes()):  # the common case, without importing rembg (2 s)
        return None
    for model in AUTO_REMBG_MODELS:
        if cached_model(model)[0] is not None:
            return f"rembg:{model}"
    return None


@dataclass
class AutoMatting:
    """`given` for clips that carry alpha; for the rest the learned backend the build's driver chose for this device
    (`access.auto`: the registry default, fetched on first use; none offline without it), or without a driver
    `auto_learned_spec()`; else `bgsub`. The matte names the backend that ran."""

    name: ClassVar[str] = "auto"

    device: str = "auto"  # for the learned backend, if one is found
    access: Access = field(default_factory=default_access)
    given: GivenAlpha = field(default_factory=GivenAlpha)
    bgsub: BackgroundSubtraction = field(default_factory=BackgroundSubtraction)
    learned: MattingBackend | None = field(init=False, default=None)

    def __post_init__(self) -> None:
        spec = learned_auto(self.access)
        if spec:
            self.learned = load_matting(spec, self.device, self.access)

    def __call__(self, clip: VideoClip) -> Matte:
        if clip.alpha is not None:
            return self.given(clip)
        return (self.learned or self.bgsub)(clip)


def learned_auto(access: Access | None) -> str | None:
    """The learned spec `auto` runs: the driver's choice, else what this machine has (None: weight-free)."""
    chosen = access.auto(Group.MATTING) if access else None
    return (chosen or None) if chosen is not None else auto_learned_spec()


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


def load_matting(spec: str, device: str = "auto", access: Access | None = None) -> MattingBackend:
    """The backend for `spec`; raises `ConfigError` naming the spec for unknown or unavailable backends.

    `device` (auto | cpu | cuda, the build's `--device`) goes to backends that have a `device` field.
    `access` (a build's: offline or not, the driver's pins and `auto` choice) goes to backends that fetch weights.
    `<first>+<second>` builds both; the first (`rembg`, `rembg:isnet-general-use`, ...) becomes the prompter of the
    second (`sam2`, `sam2:<config>[:<checkpoint>]`), e.g. `rembg+sam2` = `rembg:u2net+sam2:sam2.1_hiera_t`.
    """
    parts = split_combined(spec)
    extra = {"access": access} if access is not None else {}
    if len(parts) == 1:
        return _load_one(parts[0], device, **extra)
    first, second = parts[0], parts[-1]
    if len(parts) > 2 or "prompter" not in _fields(BACKENDS.get(second.partition(":")[0])):
        raise ConfigError(f"matting spec {spec!r}: only `<spec>+sam2[:<config>[:<checkpoint>]]` combines backends "
                          "(the first one's mask of frame 0 prompts SAM 2)")
    return _load_one(second, device, prompter=_load_one(first, device, **extra), **extra)


def _load_one(spec: str, device: str, **extra: object) -> MattingBackend:
    name, has_option, option = spec.strip().partition(":")
    backend_class = BACKENDS.get(name)
    if backend_class is None:
        raise ConfigError(f"unknown matting backend {spec!r}; known: {known_specs()}")
    fields = _fields(backend_class)
    kwargs = {key: value for key, value in {"device": device, **extra}.items() if key in fields}
    option_field = getattr(backend_class, "spec_option", None)
    if has_option and option_field is None:
        raise ConfigError(f"matting spec {spec!r}: {name} takes no ':' option; known: {known_specs()}")
    if has_option:
        kwargs[option_field] = option
    try:
        return backend_class(**kwargs)
    except ConfigError as exc:
        raise ConfigError(f"matting spec {spec!r}: {exc}") from None


def uses_gpu(spec: str, access: Access | None = None) -> bool:
    """Whether `spec` runs a learned model that can use a GPU (so its stage is scheduled as a GPU actor)."""
    if spec.strip() == "auto":
        return learned_auto(access) is not None
    names = [part.partition(":")[0] for part in split_combined(spec)]
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
