"""The `given` backend: the clip already carries its alpha (an alpha channel or a DAVIS-style mask folder)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from datagen.matting.base import BackendInfo, Matte
from datagen.video_clip import VideoClip
from manifests.errors import InputError


@dataclass
class GivenAlpha:
    """Passes the clip's own alpha through, clipped to [0, 1]."""

    name: ClassVar[str] = "given"

    def __call__(self, clip: VideoClip) -> Matte:
        if clip.alpha is None:
            raise InputError("source has no alpha channel or mask folder; use --matting bgsub or chroma")
        alpha = np.clip(np.asarray(clip.alpha, dtype=np.float32), 0.0, 1.0)
        return Matte(alpha=alpha, backend=BackendInfo(name=self.name))
