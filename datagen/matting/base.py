"""The matting protocol: a backend turns a clip into a soft alpha matte, one float per pixel."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import numpy as np

from datagen.video_clip import VideoClip


@dataclass(frozen=True)
class BackendInfo:
    """What the run summary and the manifest record about a backend."""

    name: str  # e.g. "bgsub", "given", "rembg:u2net"
    model_id: str | None = None
    weights_sha256: str | None = None
    device: str = "cpu"
    revision: str | None = None  # the hub commit the weights were fetched at (None: a local or URL file)
    random_weights: bool = False  # `sam2:<config>:random`: tests and benchmarks only, marked in every row


@dataclass
class Matte:
    """The result of matting one clip: (T, H, W) float32 alpha in [0, 1] and who made it."""

    alpha: np.ndarray
    backend: BackendInfo
    camera: dict | None = None  # how the camera moved (px: pan, shake, residual, extent), where the backend measured it
    background: np.ndarray | None = None  # (T, H, W, 3) uint8 clean plate, where the backend models the background


class MattingBackend(Protocol):
    """Loaded once per worker; `__call__` mattes one clip. Raises `InputError` for clips it cannot matte."""

    name: str

    def __call__(self, clip: VideoClip) -> Matte: ...

