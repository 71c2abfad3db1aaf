"""The build configuration: one frozen dataclass whose fields are the `build` options."""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field

from manifests.device import DEVICES
from manifests.errors import ConfigError
from manifests.models import Access


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


DEMO_SOURCE = "demo"  # `build --source demo` (the default): the built-in demo source (`datagen.demo`)
SCORING_FIELDS = ("clip",)  # fields that change scores only, so they stay out of the fingerprint
# Where the work runs and how weights are had, not what it makes: also out of the fingerprint (the weights a build
# resolved are in its record, `_build.json`, so resuming with other weights is refused all the same).
RUNTIME_FIELDS = ("device", "offline", "access")


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
    val_fraction: float = 0.1  # share of foreground inputs whose samples go to the `val` split
    scale_range: tuple[float, float] = (0.6, 1.0)  # foreground scale relative to the largest that fits
    crf: int = 18  # H.264 quality of the RGB layers (alpha is lossless)
    frame_folder_fps: float = 24.0  # frame rate assumed for frame folders (sidecar "fps" overrides)
    max_pixels: int = 50_000_000  # larger images are refused before they are decoded
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
        if self.device not in DEVICES:
            raise ConfigError(f"device: one of {', '.join(DEVICES)}, got {self.device!r}")
        if self.clip not in ("auto", "none") and not (self.clip.startswith("openclip:") and self.clip.count(":") >= 2):
            raise ConfigError(f"clip: use auto, none or openclip:<arch>:<pretrained tag or file>, got {self.clip!r}")

    def to_dict(self) -> dict:
        """The settings (the driver's `access` decision is recorded apart, as the build's `models`)."""
        return {key: value for key, value in asdict(self).items() if key != "access"}

    def fingerprint(self) -> str:
        """A short hash of everything that changes the samples (goes into sample ids)."""
        fields = {k: v for k, v in self.to_dict().items() if k not in SCORING_FIELDS + RUNTIME_FIELDS}
        return hashlib.sha1(json.dumps(fields, sort_keys=True).encode()).hexdigest()[:12]
