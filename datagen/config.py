"""The build configuration: one frozen dataclass whose fields are the `build` options."""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from enum import Enum

from manifests.device import DEVICES
from manifests.errors import ConfigError
from manifests.layers import SampleKind
from manifests.models import Access
from manifests.video_io import X264_PRESETS


def parse_size(text: str | int | tuple[int, int]) -> tuple[int, int]:
    """`256` -> (256, 256); `320x512` -> (320, 512) as (height, width)."""
    if isinstance(text, tuple):
        size = text
    elif isinstance(text, int):
        size = (text, text)
    else:
        parts = str(text).lower().replace("*", "x").split("x")
        try:
            size = (int(parts[0]), int(parts[-1])) if len(parts) in (1, 2) else ()
        except ValueError:
            size = ()
        if len(size) != 2:
            raise ConfigError(f"--size must look like 256 or 320x512 (height x width), got {text!r}")
    return int(size[0]), int(size[1])


class FrameFolders(str, Enum):
    """What a folder of numbered images is (`build --frame-folders`)."""

    AUTO = "auto"  # a clip if its images share one size and look like consecutive frames, or a sidecar says so
    CLIPS = "clips"  # always a clip
    IMAGES = "images"  # always separate images (a sidecar's `"frame_folder": true` still makes a clip)


def parse_kinds(text: str | tuple | list) -> tuple[SampleKind, ...]:
    """`video_copy_paste,video_decomposed` (or a sequence of kinds) -> the kinds, in `SampleKind` order; `all`: every
    kind."""
    names = [part.strip() for part in text.split(",")] if isinstance(text, str) else [str(getattr(k, "value", k))
                                                                                      for k in text]
    names = [name for name in names if name]
    known = [kind.value for kind in SampleKind]
    if names == ["all"]:
        return tuple(SampleKind)
    unknown = [name for name in names if name not in known]
    if unknown or not names:
        raise ConfigError(f"kinds: a comma-separated list of {', '.join(known)} (or all), got {text!r}")
    return tuple(kind for kind in SampleKind if kind.value in names)


DEMO_SOURCE = "demo"  # `build --source demo` (the default): the built-in demo source (`datagen.demo`)
SCORING_FIELDS = ("clip",)  # fields that change scores only, so they stay out of the fingerprint
# Which samples a build makes, not what a sample is: out of the fingerprint too, so that a build of fewer kinds makes
# the same samples, under the same ids.
SELECTION_FIELDS = ("kinds",)
# Where the work runs and how weights are had, not what it makes: also out of the fingerprint (the weights a build
# resolved are in its record, `_build.json`, so resuming with other weights is refused all the same).
RUNTIME_FIELDS = ("device", "offline", "access")
# What decides which inputs there are, not what a sample of them holds: out of the fingerprint, in the build record.
DISCOVERY_FIELDS = ("frame_folders",)
# How the layers are stored, not what they show: out of the fingerprint, in the build record.
ENCODING_FIELDS = ("x264_preset",)


@dataclass(frozen=True)
class BuildConfig:
    """Everything that decides what a build produces (and so goes into `_summary.json`)."""

    frames: int = 16  # frames per layer clip
    fps: float = 8.0  # frames are sampled from the source at this rate
    size: tuple[int, int] = (256, 256)  # (height, width): resize, then centre-crop
    # auto: the registry's default for the device (fetched on first use; the demo source keeps the weight-free
    # path) | given | bgsub | chroma[:green|:blue] | rembg[:<model>] | sam2[:<config>] | <spec>+sam2 | tflite:<file>
    matting: str = "auto"
    # auto: the registry's default captioner for the device (fetched on first use; the demo source and an offline
    # build without it cached: sidecar) | sidecar | none | hf:<model id or local folder>. A build records what
    # `auto` became, so the demo's sample ids stay those of its sidecar captions.
    captioner: str = "auto"
    seed: int = 0
    backgrounds_per_foreground: int = 2  # copy-paste samples made from each foreground clip
    # share of identities (objects and backgrounds: `manifests.identity`) held out; a sample is `val` when its object
    # and its background both are, `train` when neither is, and not made when they disagree
    val_fraction: float = 0.1
    scale_range: tuple[float, float] = (0.6, 1.0)  # foreground scale relative to the largest that fits
    crf: int = 17  # H.264 quality of the RGB layers (alpha is lossless); 18 left dense real texture near 35 dB
    # x264's speed preset for the RGB layers: how hard it works for that quality, not what a sample shows (out of
    # the fingerprint, so sample ids do not move with it; in the build record, so a resume must match). veryfast:
    # 3x medium's speed at the same crf, 0.25 dB lower PSNR, about the same size (bench/RESULTS.md).
    x264_preset: str = "veryfast"
    frame_folder_fps: float = 24.0  # frame rate assumed for frame folders (sidecar "fps" overrides)
    max_pixels: int = 50_000_000  # larger images are refused before they are decoded
    # The sample kinds to make (default: every kind; each is made where the inputs allow it).
    kinds: tuple[SampleKind, ...] = tuple(SampleKind)
    # How `video_decomposed` samples get the background behind the foreground (`datagen.cleanplate`): temporal (the
    # covered pixels from the other frames of the whole clip, aligned by the camera's motion; the rest inpainted).
    clean_plate: str = "temporal"
    frame_folders: FrameFolders = FrameFolders.AUTO  # what a folder of numbered images is (see `FrameFolders`)
    # Scoring only (not in the fingerprint: it changes scores, never samples).
    # auto: the default open_clip model if its weights are already on this machine, else CLIP scores are null;
    # none: no CLIP scores; openclip:<arch>:<pretrained tag or weights file>: that model (downloaded if needed).
    clip: str = "auto"
    # Runtime only: the device learned backends run on. auto: a GPU if one is visible, else the CPU; cuda: a GPU
    # or a start-up error (never a silent CPU run).
    device: str = "auto"
    # Runtime only: never use the network for weights (also HF_HUB_OFFLINE=1); `access` is the driver's decision
    # (offline or not, the pins, what `auto` became), set by the build, never on the command line.
    offline: bool = False
    access: Access = field(default_factory=Access)

    def __post_init__(self) -> None:
        h, w = self.size
        if h < 16 or w < 16 or h % 2 or w % 2:
            raise ConfigError(f"size: height and width must be even and >= 16 (H.264 needs even sizes), got {h}x{w}")
        if self.frames < 1:
            raise ConfigError(f"frames: must be >= 1, got {self.frames}")
        if self.fps <= 0:
            raise ConfigError(f"fps: must be > 0, got {self.fps}")
        if self.backgrounds_per_foreground < 1:
            raise ConfigError(f"backgrounds_per_foreground: must be >= 1, got {self.backgrounds_per_foreground}")
        if not 0.0 <= self.val_fraction < 1.0:
            raise ConfigError(f"val_fraction: must be in [0, 1), got {self.val_fraction}")
        lo, hi = self.scale_range
        if not 0.05 <= lo <= hi <= 1.0:
            raise ConfigError(f"scale_range: need 0.05 <= low <= high <= 1, got {self.scale_range}")
        if not 0 <= self.crf <= 51:
            raise ConfigError(f"crf: must be in 0..51, got {self.crf}")
        if self.x264_preset not in X264_PRESETS:
            raise ConfigError(f"x264_preset: one of {', '.join(X264_PRESETS)}, got {self.x264_preset!r}")
        object.__setattr__(self, "kinds", parse_kinds(self.kinds))  # from JSON (a resumed build): enums again
        if self.device not in DEVICES:
            raise ConfigError(f"device: one of {', '.join(DEVICES)}, got {self.device!r}")
        if self.clip not in ("auto", "none") and not (self.clip.startswith("openclip:") and self.clip.count(":") >= 2):
            raise ConfigError(f"clip: use auto, none or openclip:<arch>:<pretrained tag or file>, got {self.clip!r}")

    def to_dict(self) -> dict:
        """The settings (the driver's `access` decision is recorded apart, as the build's `models`)."""
        return {key: value for key, value in asdict(self).items() if key != "access"}

    def fingerprint(self) -> str:
        """A short hash of everything that changes the samples (goes into sample ids)."""
        left_out = SCORING_FIELDS + RUNTIME_FIELDS + DISCOVERY_FIELDS + SELECTION_FIELDS + ENCODING_FIELDS
        fields = {k: v for k, v in self.to_dict().items() if k not in left_out}
        return hashlib.sha1(json.dumps(fields, sort_keys=True).encode()).hexdigest()[:12]
