"""Decode one input into a `VideoClip` at the build size: decord for videos, PyAV where decord cannot read.

Frames are sampled at `--fps` (exact source indices are kept), then resized and centre-cropped to
`--size`. Still images become one-frame clips; RGBA images are fitted whole (letterboxed with
alpha 0) so that the object they hold is never cut. Layered images are read by their adapter
(`datagen.layered`) and every layer is fitted the same way, so they stay aligned.

Every input also gets its content fingerprint (`manifests.identity`) from a few evenly spaced source frames, and an
input on object storage is fetched here, by the worker that decodes it, into a temporary folder (`localise`).
"""

from __future__ import annotations

import math
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

from datagen.composite import blend
from datagen.config import BuildConfig
from datagen.layered import LayerStack, estimate_foreground, read_image, read_stack
from datagen.sources import IMAGE_EXTENSIONS, SourceItem, frame_order, localise
from datagen.video_clip import VideoClip
from manifests import identity, storage, video_io
from manifests.errors import InputError, one_line
from manifests.layers import InputKind, composite_over, flatten
from manifests.metrics import psnr

Image.MAX_IMAGE_PIXELS = None  # we check the size ourselves, before decoding, against --max-pixels


@dataclass
class Decoded:
    """A decoded input: its clip, its refined kind and, for a layered image, its own background, its foreground
    layers (only when there are several: the clip is then their flattened view) and its own composite."""

    clip: VideoClip
    kind: InputKind
    background: VideoClip | None = None
    source_frames: int = 1  # frames in the source (1 for an image)
    layers: list[VideoClip] = field(default_factory=list)  # bottom to top
    layer_sources: list[str] = field(default_factory=list)  # what each layer was read from
    composite_psnr: float | None = None  # the layers over the background vs the source's own composite (source size)
    fingerprint: str = ""  # `identity.fingerprint` of source frames at `identity.fingerprint_positions`


def decode(item: SourceItem, config: BuildConfig) -> Decoded:
    """Decode `item` once (fetched first when it is on object storage); raises `InputError` (or `StorageError`, for
    an object gone or changed since it was listed) with a one-line reason when it cannot be used."""
    if not storage.is_remote(item.uri):
        return _decode_local(item, config)
    with tempfile.TemporaryDirectory(prefix="layerflow-input-") as folder:
        local, uris = localise(item, Path(folder))
        decoded = _decode_local(local, config)
    decoded.layer_sources = [_uri_of(source, uris) for source in decoded.layer_sources]
    return decoded


def _uri_of(source: str, uris: dict[str, str]) -> str:
    """A layer source read from a fetched file (`/tmp/.../x.png`, `/tmp/.../doc.psd#layer`), named by its uri."""
    for local, uri in uris.items():
        if source == local or source.startswith(local + "#"):
            return uri + source[len(local):]
    return source


def _decode_local(item: SourceItem, config: BuildConfig) -> Decoded:
    path = Path(item.uri)
    if item.adapter is not None:
        return _decode_layered(item, config)
    if item.kind == InputKind.IMAGE:
        frame, alpha = read_image(path, config.max_pixels)
        if alpha is not None and alpha.min() >= 1.0:
            alpha = None  # an alpha channel that is opaque everywhere holds no cut-out: a plain image
        kind = InputKind.IMAGE if alpha is None else InputKind.RGBA_IMAGE
        fit = _contain if alpha is not None else cover
        frames, alphas = fit(frame[None], None if alpha is None else alpha[None], config.size)
        clip = VideoClip(frames, alphas, fps=config.fps, frame_indices=[0], source_size=frame.shape[:2])
        return Decoded(clip, kind, fingerprint=identity.fingerprint([over_grey(frame, alpha)]))
    if item.kind == InputKind.FRAME_FOLDER:
        return _decode_frame_folder(path, item, config)
    if item.kind == InputKind.VIDEO:
        return _decode_video(path, item, config)
    raise InputError(f"cannot decode an input of kind {item.kind.value}")


def over_grey(frame: np.ndarray, alpha: np.ndarray | None) -> np.ndarray:
    """What a frame shows: itself, or (with an alpha) its colour over mid grey, so hidden colour does not count."""
    if alpha is None:
        return frame
    a = alpha.astype(np.float32)[..., None]
    return np.rint(a * frame + (1.0 - a) * 128.0).astype(np.uint8)


def sample_indices(total: int, native_fps: float, config: BuildConfig, key: str) -> list[int]:
    """`config.frames` source indices at `config.fps`, starting at an offset seeded by `key`."""
    step = native_fps / config.fps if native_fps > 0 else 1.0
    span = math.floor((config.frames - 1) * step) + 1
    if total < span:
        raise InputError(
            f"too short: {total} frames at {native_fps:g} fps; --frames {config.frames} at --fps {config.fps:g} "
            f"needs {span}"
        )
    rng = np.random.default_rng([config.seed, int(key[:8], 16)])
    start = int(rng.integers(0, total - span + 1))
    return [min(total - 1, start + int(math.floor(i * step + 1e-6))) for i in range(config.frames)]


def _decode_video(path: Path, item: SourceItem, config: BuildConfig) -> Decoded:
    _check_not_empty(path)
    try:
        total, fps, height, width = video_io.video_info(path)
        with_alpha = video_io.has_alpha(path)
    except Exception as exc:  # PyAV raises many error types for unreadable files
        raise InputError(f"not a readable video: {one_line(exc)}") from exc
    if total <= 0 or height <= 0 or width <= 0:
        raise InputError("not a readable video: no frames or no size in the container")
    indices = sample_indices(total, fps, config, item.input_id)
    positions = identity.fingerprint_positions(total)
    if with_alpha:
        rgba = _read_pyav(path, "rgba", indices)
        frames, alpha = rgba[..., :3], rgba[..., 3].astype(np.float32) / 255.0
        kind = InputKind.ALPHA_VIDEO
        shown = [over_grey(f[..., :3], f[..., 3] / 255.0) for f in _read_pyav(path, "rgba", positions)]
    else:
        frames, alpha, kind = read_rgb_frames(path, indices), None, InputKind.VIDEO
        shown = list(read_rgb_frames(path, positions))
        mask_alpha = read_masks(item, [str(i).zfill(5) for i in indices]) if item.mask_dir else None
        alpha = mask_alpha if mask_alpha is not None else alpha
    frames, alpha = cover(frames, alpha, config.size)
    clip = VideoClip(frames, alpha, fps=config.fps, frame_indices=indices, source_size=(height, width))
    return Decoded(clip, kind, source_frames=total, fingerprint=identity.fingerprint(shown))


def read_rgb_frames(path: Path, indices: list[int]) -> np.ndarray:
    """decord first (fast seeking); PyAV for what decord cannot read (tiny widths, odd containers, truncation)."""
    try:
        import decord

        reader = decord.VideoReader(str(path), num_threads=1)
        return reader.get_batch(indices).asnumpy()
    except Exception:  # decord raises its own error types (and RuntimeError) on files it cannot handle
        return _read_pyav(path, "rgb24", indices)


def _read_pyav(path: Path, fmt: str, indices: list[int]) -> np.ndarray:
    try:
        return video_io.read_video(path, fmt, indices)
    except Exception as exc:
        raise InputError(f"cannot decode the video: {one_line(exc)}") from exc


def _decode_frame_folder(path: Path, item: SourceItem, config: BuildConfig) -> Decoded:
    files = frame_files(path)
    fps = item.fps or config.frame_folder_fps
    indices = sample_indices(len(files), fps, config, item.input_id)
    loaded = [read_image(files[i], config.max_pixels) for i in indices]
    shapes = {frame.shape for frame, _ in loaded}
    if len(shapes) > 1:
        raise InputError(f"frames differ in size: {sorted(shapes)[:2]}")
    frames = np.stack([frame for frame, _ in loaded])
    alpha = None
    kind = InputKind.FRAME_FOLDER
    if all(a is not None for _, a in loaded):
        alpha, kind = np.stack([a for _, a in loaded]), InputKind.ALPHA_FRAME_FOLDER
    elif item.mask_dir:
        alpha = read_masks(item, [files[i].stem for i in indices])
    frames, alpha = cover(frames, alpha, config.size)
    clip = VideoClip(frames, alpha, fps=config.fps, frame_indices=indices, source_size=loaded[0][0].shape[:2])
    shown = [over_grey(*read_image(files[i], config.max_pixels)) for i in identity.fingerprint_positions(len(files))]
    return Decoded(clip, kind, source_frames=len(files), fingerprint=identity.fingerprint(shown))


def frame_files(folder: Path) -> list[Path]:
    """The image files of a frame folder in frame order (numeric stems sort numerically)."""
    return frame_order([p for p in folder.iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS
                        and not p.name.startswith(".")])


def read_masks(item: SourceItem, stems: list[str]) -> np.ndarray | None:
    """DAVIS-layout masks for the chosen frames, or None when the folder does not cover them all."""
    masks = {p.stem: p for p in Path(item.mask_dir).iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS}
    if not all(stem in masks for stem in stems):
        return None
    return np.stack([load_mask(masks[stem]) for stem in stems])


def load_mask(path: Path) -> np.ndarray:
    """A mask image as float alpha: palette / binary masks -> {0, 1}; 8-bit grey -> value / 255."""
    with Image.open(path) as image:
        if image.mode in ("P", "1"):
            return (np.asarray(image) > 0).astype(np.float32)
        grey = np.asarray(image.convert("L") if image.mode != "L" else image)
    return grey.astype(np.float32) / 255.0


def _decode_layered(item: SourceItem, config: BuildConfig) -> Decoded:
    """A layered image: every layer (and its background) fitted to the build size the same way."""
    stack = read_stack(item.adapter, item.uri, item.files, config.max_pixels)
    if not stack.layers:  # a document that is all background: a plain image
        frames, _ = cover(stack.background[None], None, config.size)
        clip = VideoClip(frames, None, fps=config.fps, frame_indices=[0], source_size=stack.background.shape[:2])
        return Decoded(clip, InputKind.IMAGE, fingerprint=identity.fingerprint([stack.background]))
    source_size = stack.layers[0].colour.shape[:2]
    colours = np.stack([layer.colour for layer in stack.layers])  # (K, H, W, 3): the layers as frames of one clip
    alphas = np.stack([layer.alpha for layer in stack.layers])  # (K, H, W)
    aligned = stack.background is not None and stack.background.shape[:2] == source_size
    if aligned:
        # Aligned layers: crop all the same way so the objects stay where the artist put them.
        colours, alphas = cover(colours, alphas, config.size)
    else:
        colours, alphas = _contain(colours, alphas, config.size)
    if stack.estimate_colour:
        colours = np.stack([estimate_foreground(c, a) for c, a in zip(colours, alphas)])

    def still(frames: np.ndarray, alpha: np.ndarray | None, size: tuple[int, int]) -> VideoClip:
        return VideoClip(frames, alpha, fps=config.fps, frame_indices=[0], source_size=size)

    layers = [still(c[None], a[None], source_size) for c, a in zip(colours, alphas)]
    if len(layers) == 1:
        clip = layers[0]
    else:
        colour, alpha = flatten(list(colours), [video_io.quantise(a) for a in alphas])
        clip = still(colour[None], alpha[None].astype(np.float32) / 255.0, source_size)
    kind = InputKind.LAYERED_IMAGE if stack.background is not None else InputKind.RGBA_IMAGE
    decoded = Decoded(clip, kind, layers=layers if len(layers) > 1 else [],
                      layer_sources=[layer.source for layer in stack.layers], fingerprint=_layered_fingerprint(stack))
    if stack.background is not None:
        decoded.background = still(cover(stack.background[None], None, config.size)[0], None,
                                   stack.background.shape[:2])
    if stack.composite is not None and aligned:
        decoded.composite_psnr = composite_psnr(stack)
    return decoded


def _layered_fingerprint(stack: LayerStack) -> str:
    """What a layered image shows at source size: its layers over its background (over grey if it has none, or one
    of another size)."""
    colours = [layer.colour for layer in stack.layers]
    alphas = [video_io.quantise(layer.alpha) for layer in stack.layers]
    aligned = stack.background is not None and stack.background.shape[:2] == colours[0].shape[:2]
    canvas = stack.background if aligned else np.full_like(colours[0], 128)
    return identity.fingerprint([np.clip(np.rint(composite_over(canvas, colours, alphas)), 0, 255).astype(np.uint8)])


def composite_psnr(stack: LayerStack) -> float:
    """PSNR of the source's own composite against its layers as the build stores them (8-bit colour and alpha),
    flattened and blended over its background by the build's rules, at source size: whether the adapter read the
    layers right, apart from any resizing to --size."""
    colours = [layer.colour for layer in stack.layers]
    colour, alpha = flatten(colours, [video_io.quantise(layer.alpha) for layer in stack.layers])
    return psnr(stack.composite, blend(colour[None], alpha[None], stack.background[None]).blended[0])


def _check_not_empty(path: Path) -> None:
    if path.stat().st_size == 0:
        raise InputError("empty file (0 bytes)")


def _resize(image: np.ndarray, width: int, height: int) -> np.ndarray:
    shrinking = width < image.shape[1]
    return cv2.resize(image, (width, height), interpolation=cv2.INTER_AREA if shrinking else cv2.INTER_LINEAR)


def cover(frames: np.ndarray, alpha: np.ndarray | None, size: tuple[int, int]):
    """Resize so the frame covers `size`, then centre-crop (frames (T,H,W,3), alpha (T,H,W))."""
    out_h, out_w = size
    src_h, src_w = frames.shape[1:3]
    scale = max(out_h / src_h, out_w / src_w)
    new_h, new_w = max(out_h, round(src_h * scale)), max(out_w, round(src_w * scale))
    top, left = (new_h - out_h) // 2, (new_w - out_w) // 2

    def fit(image: np.ndarray) -> np.ndarray:
        return _resize(image, new_w, new_h)[top : top + out_h, left : left + out_w]

    frames = np.stack([fit(f) for f in frames])
    alpha = None if alpha is None else np.clip(np.stack([fit(a) for a in alpha]), 0.0, 1.0)
    return frames, alpha


def _contain(frames: np.ndarray, alpha: np.ndarray, size: tuple[int, int]):
    """Resize so the whole frame fits inside `size`, then pad (alpha 0 in the padding)."""
    out_h, out_w = size
    src_h, src_w = frames.shape[1:3]
    scale = min(out_h / src_h, out_w / src_w)
    new_h, new_w = max(1, min(out_h, round(src_h * scale))), max(1, min(out_w, round(src_w * scale)))
    top, left = (out_h - new_h) // 2, (out_w - new_w) // 2
    out_frames = np.zeros((len(frames), out_h, out_w, 3), np.uint8)
    out_alpha = np.zeros((len(frames), out_h, out_w), np.float32)
    for i, (frame, a) in enumerate(zip(frames, alpha)):
        out_frames[i, top : top + new_h, left : left + new_w] = _resize(frame, new_w, new_h)
        out_alpha[i, top : top + new_h, left : left + new_w] = np.clip(_resize(a, new_w, new_h), 0.0, 1.0)
    return out_frames, out_alpha
