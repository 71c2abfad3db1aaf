"""Writing a sampled layered clip: RGBA foreground (PNG sequence and WebM with alpha), background and blended
as mp4, and a preview PNG of the four layers.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image

from manifests.layers import Layer
from manifests.preview import contact_sheet
from manifests.video_io import quantise, write_rgb_video, write_rgba_video

FOREGROUND_PNG_DIR = "foreground_rgba"
FOREGROUND_WEBM = "foreground.webm"
FOREGROUND_MP4 = "foreground_on_grey.mp4"  # RGB layout only: it has no matte
BACKGROUND_MP4 = "background.mp4"
BLENDED_MP4 = "blended.mp4"
PREVIEW_PNG = "preview.png"
INFO_JSON = "sample.json"


def _even(frames: np.ndarray) -> np.ndarray:
    """H.264 and yuv420p need even sizes: drop a last odd row / column."""
    h, w = frames.shape[1:3]
    return frames[:, : h - h % 2, : w - w % 2]


def write_layers(out: Path, layers: dict[Layer, np.ndarray], fps: float, info: dict) -> dict[str, str]:
    """Write `layers` (float in [0, 1]; alpha (T, H, W), the others (T, H, W, 3)) under `out`; returns
    {what: path}. Without `alpha` (the RGB layout) the foreground is written on grey, as an mp4."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    q = {layer: quantise(x) for layer, x in layers.items()}
    written = {}
    if Layer.ALPHA in q:
        rgba = np.concatenate([q[Layer.FOREGROUND], q[Layer.ALPHA][..., None]], axis=-1)  # (T, H, W, 4)
        png_dir = out / FOREGROUND_PNG_DIR
        png_dir.mkdir(exist_ok=True)
        for t, frame in enumerate(rgba):
            Image.fromarray(frame).save(png_dir / f"{t:04d}.png")
        write_rgba_video(out / FOREGROUND_WEBM, _even(rgba), fps)
        written.update(foreground_png=str(png_dir), foreground_webm=str(out / FOREGROUND_WEBM))
        alpha = q[Layer.ALPHA]
    else:
        write_rgb_video(out / FOREGROUND_MP4, _even(q[Layer.FOREGROUND]), fps)
        written["foreground_mp4"] = str(out / FOREGROUND_MP4)
        alpha = np.full(q[Layer.FOREGROUND].shape[:3], 255, np.uint8)  # shown opaque: there is no matte
    write_rgb_video(out / BACKGROUND_MP4, _even(q[Layer.BACKGROUND]), fps)
    write_rgb_video(out / BLENDED_MP4, _even(q[Layer.BLENDED]), fps)
    sheet = contact_sheet({**q, Layer.ALPHA: alpha}, frames=min(6, len(alpha)))
    sheet.save(out / PREVIEW_PNG)
    written.update(background=str(out / BACKGROUND_MP4), blended=str(out / BLENDED_MP4),
                   preview=str(out / PREVIEW_PNG))
    (out / INFO_JSON).write_text(json.dumps({**info, "files": written}, indent=2, sort_keys=True) + "\n")
    return written
