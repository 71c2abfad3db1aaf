"""Pictures of one sample's layers: tiles of a frame, a contact sheet, an animation (for `preview` and `report`)."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from manifests.dataset import DatasetLike, open_dataset
from manifests.errors import ConfigError, DatasetError
from manifests.layers import Layer
from manifests.schema import SAMPLE_ID

AnimationFormat = Literal["gif", "webp"]
TILE_ORDER: tuple[Layer, ...] = (Layer.FOREGROUND, Layer.ALPHA, Layer.BACKGROUND, Layer.BLENDED)
TILE_NAMES: dict[Layer, str] = {
    Layer.FOREGROUND: "foreground",  # shown over a checkerboard, so its transparency is visible
    Layer.ALPHA: "alpha",
    Layer.BACKGROUND: "background",
    Layer.BLENDED: "blended",
}
LABEL_WIDTH = 72  # left margin of the contact sheet holding the layer names
LABEL_HEIGHT = 14  # top margin holding the frame indices
GAP = 2  # white line between tiles, so neighbouring frames stay apart
_LIGHT, _DARK = 204, 153
_INK = (40, 40, 40)


def checkerboard(height: int, width: int, cell: int = 8) -> np.ndarray:
    """Light and dark grey squares of `cell` pixels, (H, W, 3) uint8: the usual picture of 'transparent'."""
    yy, xx = np.mgrid[:height, :width]
    dark = ((yy // cell) + (xx // cell)) % 2 == 1
    grey = np.where(dark, _DARK, _LIGHT).astype(np.uint8)
    return np.repeat(grey[..., None], 3, axis=2)


def over_checkerboard(foreground: np.ndarray, alpha: np.ndarray) -> np.ndarray:
    """The foreground (H, W, 3) composited with its alpha (H, W) over a checkerboard, (H, W, 3) uint8."""
    weight = alpha.astype(np.float32)[..., None] / 255.0  # (H, W, 1)
    board = checkerboard(*alpha.shape).astype(np.float32)
    return np.rint(weight * foreground + (1.0 - weight) * board).astype(np.uint8)


def layer_tiles(layers: dict[Layer, np.ndarray], t: int) -> list[np.ndarray]:
    """The four (H, W, 3) uint8 tiles of frame t, in `TILE_ORDER`: fg over a checkerboard, alpha, bg, blended."""
    alpha = layers[Layer.ALPHA][t]
    return [
        over_checkerboard(layers[Layer.FOREGROUND][t], alpha),
        np.repeat(alpha[..., None], 3, axis=2),
        layers[Layer.BACKGROUND][t],
        layers[Layer.BLENDED][t],
    ]


def frame_indices(num_frames: int, count: int) -> list[int]:
    """`count` evenly spaced frame indices from first to last (fewer if the clip is shorter)."""
    count = max(1, min(count, num_frames))
    return [int(i) for i in np.linspace(0, num_frames - 1, count).round()]


def contact_sheet(layers: dict[Layer, np.ndarray], frames: int = 6) -> Image.Image:
    """Rows are the four layers (named on the left), columns `frames` evenly spaced frames (indexed on top).

    Size: `LABEL_WIDTH + columns * (W + GAP)` by `LABEL_HEIGHT + 4 * (H + GAP)`, where
    `columns = min(frames, T)`.
    """
    num_frames, height, width = layers[Layer.ALPHA].shape
    indices = frame_indices(num_frames, frames)
    sheet = Image.new("RGB", (LABEL_WIDTH + len(indices) * (width + GAP),
                              LABEL_HEIGHT + len(TILE_ORDER) * (height + GAP)), "white")
    draw = ImageDraw.Draw(sheet)
    font = ImageFont.load_default()
    for row, layer in enumerate(TILE_ORDER):
        draw.text((4, LABEL_HEIGHT + GAP + row * (height + GAP) + 2), TILE_NAMES[layer], fill=_INK, font=font)
    for column, t in enumerate(indices):
        x = LABEL_WIDTH + GAP + column * (width + GAP)
        draw.text((x + 2, 1), f"t={t}", fill=_INK, font=font)
        for row, tile in enumerate(layer_tiles(layers, t)):
            sheet.paste(Image.fromarray(tile), (x, LABEL_HEIGHT + GAP + row * (height + GAP)))
    return sheet


def animation_frames(layers: dict[Layer, np.ndarray]) -> list[Image.Image]:
    """One image per frame: the four tiles side by side, `4 * W + 3 * GAP` by `H`."""
    num_frames, height, _ = layers[Layer.ALPHA].shape
    separator = np.full((height, GAP, 3), 255, np.uint8)
    out = []
    for t in range(num_frames):
        tiles = layer_tiles(layers, t)
        row = [part for tile in tiles for part in (tile, separator)][:-1]
        out.append(Image.fromarray(np.concatenate(row, axis=1)))
    return out


def write_preview(dataset: DatasetLike, sample_id: str, out_dir: Path, frames: int = 6,
                  animation_format: AnimationFormat = "gif") -> tuple[Path, Path]:
    """Write `<out_dir>/<sample_id>_sheet.png` and `<out_dir>/<sample_id>.<gif|webp>` (looping at the sample's fps)
    for a sample of the dataset (a folder, a pyarrow filesystem URI or an open handle).

    Identical consecutive frames (a frozen-image sample) are merged by the GIF and WebP encoders into one
    longer frame, so such an animation holds fewer frames than the clip while playing just as long.
    """
    if animation_format not in ("gif", "webp"):
        raise ConfigError(f"animation_format must be 'gif' or 'webp', got {animation_format!r}")
    dataset, out_dir = open_dataset(dataset), Path(out_dir)
    table = dataset.manifest(columns=[SAMPLE_ID, "fps"]).to_pylist()
    fps = {row[SAMPLE_ID]: row["fps"] for row in table}
    if sample_id not in fps:
        known = sorted(fps)
        listed = ", ".join(known[:5]) + (f", ... ({len(known)} in all)" if len(known) > 5 else "")
        raise DatasetError(f"{dataset.uri}: no sample {sample_id!r}; samples include: {listed or '(none)'}")
    layers = dataset.layers(sample_id)
    out_dir.mkdir(parents=True, exist_ok=True)
    sheet_path = out_dir / f"{sample_id}_sheet.png"
    contact_sheet(layers, frames).save(sheet_path)
    animation_path = out_dir / f"{sample_id}.{animation_format}"
    first, *rest = animation_frames(layers)
    duration = round(1000.0 / fps[sample_id])
    extra = {"lossless": False, "quality": 85} if animation_format == "webp" else {}
    first.save(animation_path, save_all=True, append_images=rest, duration=duration, loop=0, **extra)
    return sheet_path, animation_path
