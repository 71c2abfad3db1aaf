"""Sampled layers on disk: ProRes 4444 beside WebM and PNG, and no dark fringe from black under alpha 0."""

from __future__ import annotations

import numpy as np

from layerflow_model.outputs import FOREGROUND_PRORES, FOREGROUND_WEBM, bleed_colour, write_layers
from manifests.layers import Layer
from manifests.video_io import has_alpha, read_video, write_rgba_video

ORANGE = (1.0, 0.6, 0.2)


def square(frames: int = 2, size: int = 16) -> tuple[np.ndarray, np.ndarray]:
    """An orange square from row/column 3 to 12 (odd edges: 2x2 chroma blocks straddle them), black outside."""
    rgb = np.zeros((frames, size, size, 3), np.float32)
    alpha = np.zeros((frames, size, size), np.float32)
    rgb[:, 3:13, 3:13] = ORANGE
    alpha[:, 3:13, 3:13] = 1.0
    return rgb, alpha


def test_bleed_colour_fills_transparent_pixels_from_their_visible_neighbours():
    rgb, alpha = square()
    alpha[1] = 0.0  # a frame with nothing visible keeps its colour
    out = bleed_colour(rgb, alpha)
    assert np.array_equal(out[0, 3:13, 3:13], rgb[0, 3:13, 3:13])  # visible pixels unchanged
    assert np.allclose(out[0], ORANGE, atol=1e-4)  # every transparent pixel took the square's colour
    assert np.array_equal(out[1], rgb[1])


def test_written_foreground_has_prores_4444_beside_webm_and_no_dark_fringe(tmp_path):
    rgb, alpha = square()
    grey = np.full(rgb.shape, 0.5, np.float32)
    written = write_layers(tmp_path, {Layer.FOREGROUND: rgb, Layer.ALPHA: alpha, Layer.BACKGROUND: grey,
                                      Layer.BLENDED: grey}, 8.0, {})
    prores = tmp_path / FOREGROUND_PRORES
    assert written["foreground_prores"] == str(prores) and has_alpha(prores)
    mov = read_video(prores, "rgba")
    assert mov.shape == (2, 16, 16, 4) and np.abs(mov[..., 3].astype(int) - alpha * 255).max() <= 1
    edge = (slice(None), slice(3, 13), [3, 12])  # the visible columns at the square's left and right edges
    webm = read_video(tmp_path / FOREGROUND_WEBM, "rgba")
    black_under = tmp_path / "black.webm"  # what was written before: colour 0 where alpha is 0
    write_rgba_video(black_under, np.concatenate([np.round(rgb * 255), np.round(alpha[..., None] * 255)],
                                                 axis=-1).astype(np.uint8), 8.0)
    fringe = read_video(black_under, "rgba")
    for video in (webm, mov):
        assert np.abs(video[edge][..., :3].astype(int) - np.array(ORANGE) * 255).max() <= 12
    assert np.abs(fringe[edge][..., :3].astype(int) - np.array(ORANGE) * 255).max() > 40  # the dark fringe
