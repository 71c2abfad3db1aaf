"""Make the four layers of a sample: paste a matted foreground onto a background, freeze a layered image, or
decompose a real clip over its clean plate.

The invariant every sample satisfies: `blended = alpha * foreground + (1 - alpha) * background`,
computed in float from the alpha exactly as it is stored (8 bit), then quantised once. A layered image with several
foreground layers is frozen from their flattened view (`manifests.layers.flatten` of the layers as stored), so the
invariant holds for it too, and the layers recompose the blended layer up to the flattened colour's rounding.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass

import cv2
import numpy as np

from datagen.layered import estimate_foreground
from manifests.layers import Layer, flatten
from manifests.video_io import quantise

OBJECT_THRESHOLD = 0.5 / 255  # any alpha that survives 8-bit quantisation is part of the object
MARGIN = 1.0  # pixels kept free at the canvas border (bilinear warping spreads edges by up to one pixel)
MAX_UPSCALE = 1.5  # never blow a small object up by more than this
# The weight of the foreground-colour prior against the compositing equation in `solve_foreground` (colours in 0..1):
# it decides only where alpha is tiny (below about its square root, 0.01), where the equation barely constrains F.
PRIOR_WEIGHT = 1e-4


@dataclass(frozen=True)
class Placement:
    """Foreground placement on the canvas: `x' = scale * x + dx`, `y' = scale * y + dy` (pixels)."""

    scale: float = 1.0
    dx: float = 0.0
    dy: float = 0.0

    def matrix(self) -> np.ndarray:
        return np.array([[self.scale, 0.0, self.dx], [0.0, self.scale, self.dy]], dtype=np.float64)

    def to_json(self) -> str:
        return json.dumps({k: round(v, 4) for k, v in asdict(self).items()})


@dataclass
class LayeredClip:
    """The four layers of a sample, as stored: RGB layers (T, H, W, 3) uint8, alpha (T, H, W) uint8."""

    foreground: np.ndarray
    alpha: np.ndarray
    background: np.ndarray
    blended: np.ndarray

    def layer(self, layer: Layer) -> np.ndarray:
        return getattr(self, layer.value)


def object_box(alpha: np.ndarray) -> tuple[int, int, int, int] | None:
    """(x0, y0, x1, y1), exclusive ends, of where alpha > OBJECT_THRESHOLD in any frame; None if nowhere."""
    union = (alpha > OBJECT_THRESHOLD).any(axis=0) if alpha.ndim == 3 else alpha > OBJECT_THRESHOLD
    ys, xs = np.nonzero(union)
    if len(xs) == 0:
        return None
    return int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1


def choose_placement(alpha: np.ndarray, canvas: tuple[int, int], rng: np.random.Generator,
                     scale_range: tuple[float, float]) -> Placement:
    """A random scale and position that keep the whole object (over all frames) inside the canvas."""
    box = object_box(alpha)
    if box is None:
        return Placement()
    x0, y0, x1, y1 = box
    height, width = canvas
    inner_w, inner_h = width - 2 * MARGIN, height - 2 * MARGIN
    largest = min(inner_w / (x1 - x0), inner_h / (y1 - y0), MAX_UPSCALE)
    scale = largest * float(rng.uniform(*scale_range))
    # Choose where the scaled box's top-left lands, then solve for the translation.
    left = MARGIN + rng.uniform(0.0, max(0.0, inner_w - scale * (x1 - x0)))
    top = MARGIN + rng.uniform(0.0, max(0.0, inner_h - scale * (y1 - y0)))
    return Placement(scale=scale, dx=float(left - scale * x0), dy=float(top - scale * y0))


def place(frames: np.ndarray, alpha: np.ndarray, placement: Placement, canvas: tuple[int, int]):
    """Warp foreground frames and alpha onto a canvas of `canvas` (H, W)."""
    height, width = canvas
    matrix = placement.matrix()
    if placement == Placement() and frames.shape[1:3] == (height, width):
        return frames, alpha
    warped = np.stack([
        cv2.warpAffine(f, matrix, (width, height), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
        for f in frames
    ])
    warped_alpha = np.stack([
        cv2.warpAffine(a, matrix, (width, height), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT,
                       borderValue=0.0)
        for a in alpha.astype(np.float32)
    ])
    return warped, np.clip(warped_alpha, 0.0, 1.0)


def blend(foreground: np.ndarray, alpha: np.ndarray, background: np.ndarray) -> LayeredClip:
    """Quantise alpha as stored, then `blended = a * fg + (1 - a) * bg` in float, quantised once."""
    alpha_u8 = alpha if alpha.dtype == np.uint8 else quantise(alpha)
    a = alpha_u8.astype(np.float32)[..., None] / 255.0
    blended = np.clip(np.rint(a * foreground + (1.0 - a) * background), 0, 255).astype(np.uint8)
    return LayeredClip(foreground=foreground, alpha=alpha_u8, background=background, blended=blended)


def copy_paste(fg_frames: np.ndarray, fg_alpha: np.ndarray, bg_frames: np.ndarray,
               placement: Placement) -> LayeredClip:
    """A `video_copy_paste` sample: the foreground clip placed on the background clip, frame by frame."""
    if len(fg_frames) != len(bg_frames):
        raise ValueError(f"foreground has {len(fg_frames)} frames, background {len(bg_frames)}")
    frames, alpha = place(fg_frames, fg_alpha, placement, bg_frames.shape[1:3])
    return blend(frames, alpha, bg_frames)


def freeze(fg_frame: np.ndarray, fg_alpha: np.ndarray, bg_frame: np.ndarray, placement: Placement,
           num_frames: int) -> LayeredClip:
    """An `image_frozen` sample: one layered image repeated over `num_frames` frames."""
    frames, alpha = place(fg_frame[None], fg_alpha[None], placement, bg_frame.shape[:2])
    single = blend(frames, alpha, bg_frame[None])

    def repeat(array: np.ndarray) -> np.ndarray:
        return np.repeat(array, num_frames, axis=0)

    return LayeredClip(repeat(single.foreground), repeat(single.alpha), repeat(single.background),
                       repeat(single.blended))


def freeze_layers(layers: list[tuple[np.ndarray, np.ndarray]], bg_frame: np.ndarray, placement: Placement,
                  num_frames: int) -> tuple[LayeredClip, list[tuple[np.ndarray, np.ndarray]]]:
    """An `image_frozen` sample from several foreground layers ((H, W, 3) uint8 colour, (H, W) float alpha; bottom to
    top), each placed the same way: the sample (from their flattened view) and the layers as stored ((T, H, W, 3)
    uint8 colour, (T, H, W) uint8 alpha each)."""
    canvas = bg_frame.shape[:2]
    stored = []
    for colour, alpha in layers:
        frames, alphas = place(colour[None], alpha[None], placement, canvas)
        stored.append((frames[0], quantise(alphas[0])))
    colour, alpha = flatten([c for c, _ in stored], [a for _, a in stored])
    sample = freeze(colour, alpha.astype(np.float32) / 255.0, bg_frame, Placement(), num_frames)
    repeated = [(np.repeat(c[None], num_frames, axis=0), np.repeat(a[None], num_frames, axis=0)) for c, a in stored]
    return sample, repeated


def solve_layers(frames: np.ndarray, alpha: np.ndarray, plate: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The straight foreground colour and the background (both (T, H, W, 3) uint8) of real frames under a matte
    ((T, H, W) uint8 as stored) over their clean plate.

    Per pixel, F minimises `(a F + (1 - a) B - I)^2 + w (F - F0)^2`: the compositing equation with the clean plate
    B, and a prior F0 from pymatting's `estimate_foreground_ml` (which solves for a smooth F and B from I and a
    alone). Wherever alpha is not tiny the equation wins, so `a F + (1 - a) B` gives the frame back; where alpha is
    near 0 the colour is undefined and F is the prior: pymatting's estimate, which carries the object's edge colour
    outwards smoothly, so resizing or coding the layer near its edge pulls in no black and no background. (Solving the
    equation alone divides the plate's error by alpha: noise at soft edges.) Where the plate disagrees with a partly
    covered pixel so much that F would leave 0..255, F is clipped and that pixel's background is solved from the
    equation instead: the plate is the least certain of the three there (it was never seen through the foreground).
    """
    foreground, background = np.empty_like(frames), np.empty_like(frames)
    for t, (frame, matte, known) in enumerate(zip(frames, alpha, plate, strict=True)):
        a = matte.astype(np.float32)[..., None] / 255.0
        prior = estimate_foreground(frame, a[..., 0]).astype(np.float32) / 255.0
        image, back = frame.astype(np.float32) / 255.0, known.astype(np.float32) / 255.0
        solved = np.clip((a * (image - (1.0 - a) * back) + PRIOR_WEIGHT * prior) / (a * a + PRIOR_WEIGHT), 0.0, 1.0)
        solved = np.rint(solved * 255.0) / 255.0  # as stored
        residual = image - a * solved - (1.0 - a) * back
        off = (np.abs(residual) > 0.5 / 255.0) & (a > 0) & (a < 1)
        back = np.where(off, np.clip(back + residual / np.maximum(1.0 - a, 1e-6), 0.0, 1.0), back)
        foreground[t] = np.rint(solved * 255.0).astype(np.uint8)
        background[t] = np.clip(np.rint(back * 255.0), 0, 255).astype(np.uint8)
    return foreground, background


def decompose(frames: np.ndarray, alpha: np.ndarray, plate: np.ndarray) -> LayeredClip:
    """A `video_decomposed` sample: the clip's own frames (T, H, W, 3) uint8 under their matte (T, H, W) float, over
    their clean plate (T, H, W, 3) uint8. The background is the frame where the stored alpha is 0 and the plate where
    the foreground covers it; the foreground colour is solved from the three (`solve_layers`); the blended layer is
    made from them like every sample's, and equals the frames up to rounding (where the equation can be met in
    0..255)."""
    alpha_u8 = quantise(alpha)
    foreground, background = solve_layers(frames, alpha_u8, np.where(alpha_u8[..., None] > 0, plate, frames))
    return blend(foreground, alpha_u8, background)
