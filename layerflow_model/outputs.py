"""Writing a sampled layered clip: RGBA foreground (PNG sequence, WebM VP9 and ProRes 4444 with alpha), background
and blended as mp4, and a preview PNG of the four layers.

Transparent pixels carry the colour of the nearest visible ones, not black: VP9's 4:2:0 chroma averages each 2x2
block, so black under alpha 0 would darken the colour of the edge pixels beside it (a dark fringe), and an editor
that scales or blurs the straight-alpha frames mixes in the colour under alpha 0 too.
"""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

from manifests.layers import Layer
from manifests.preview import contact_sheet
from manifests.video_io import quantise, write_rgb_video, write_rgba_video

FOREGROUND_PNG_DIR = "foreground_rgba"
FOREGROUND_WEBM = "foreground.webm"
FOREGROUND_PRORES = "foreground.mov"  # ProRes 4444 (yuva444p10le): full-resolution chroma and a 10-bit matte
FOREGROUND_MP4 = "foreground_on_grey.mp4"  # RGB layout only: it has no matte
BACKGROUND_MP4 = "background.mp4"
BLENDED_MP4 = "blended.mp4"
PREVIEW_PNG = "preview.png"
INFO_JSON = "sample.json"


def _even(frames: np.ndarray) -> np.ndarray:
    """H.264 and yuv420p need even sizes: drop a last odd row / column."""
    h, w = frames.shape[1:3]
    return frames[:, : h - h % 2, : w - w % 2]


VISIBLE = 1.0 / 255.0  # below this alpha a pixel quantises to fully transparent: its colour is unknown


def bleed_colour(rgb: np.ndarray, alpha: np.ndarray, visible: float = VISIBLE) -> np.ndarray:
    """(T, H, W, 3) straight colour, (T, H, W) alpha, both in [0, 1] -> the colour with every pixel of alpha below
    `visible` set to the alpha-weighted mean colour of the visible pixels around it (widening until some are found;
    a frame with none keeps its colour). Visible pixels are unchanged."""
    out = rgb.astype(np.float32).copy()
    for t in range(len(out)):
        weight = np.where(alpha[t] >= visible, alpha[t], 0.0).astype(np.float32)
        hidden = weight == 0
        if not hidden.any() or not (~hidden).any():
            continue
        sigma = 1.0
        while hidden.any() and sigma <= 2 * max(weight.shape):
            den = cv2.GaussianBlur(weight, (0, 0), sigma)
            num = cv2.GaussianBlur(out[t] * weight[..., None], (0, 0), sigma)
            reached = hidden & (den > 1e-6)
            out[t][reached] = num[reached] / den[reached][:, None]
            hidden &= ~reached
            sigma *= 2
    return np.clip(out, 0.0, 1.0)


def write_layers(out: Path, layers: dict[Layer, np.ndarray], fps: float, info: dict) -> dict[str, str]:
    """Write `layers` (float in [0, 1]; alpha (T, H, W), the others (T, H, W, 3)) under `out`; returns
    {what: path}. Without `alpha` (the RGB layout) the foreground is written on grey, as an mp4."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    if Layer.ALPHA in layers:
        layers = {**layers, Layer.FOREGROUND: bleed_colour(layers[Layer.FOREGROUND], layers[Layer.ALPHA])}
    q = {layer: quantise(x) for layer, x in layers.items()}
    written = {}
    if Layer.ALPHA in q:
        rgba = np.concatenate([q[Layer.FOREGROUND], q[Layer.ALPHA][..., None]], axis=-1)  # (T, H, W, 4)
        png_dir = out / FOREGROUND_PNG_DIR
        png_dir.mkdir(exist_ok=True)
        for t, frame in enumerate(rgba):
            Image.fromarray(frame).save(png_dir / f"{t:04d}.png")
        write_rgba_video(out / FOREGROUND_WEBM, _even(rgba), fps)
        write_rgba_video(out / FOREGROUND_PRORES, _even(rgba), fps)
        written.update(foreground_png=str(png_dir), foreground_webm=str(out / FOREGROUND_WEBM),
                       foreground_prores=str(out / FOREGROUND_PRORES))
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
