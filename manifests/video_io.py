"""Encoding and reading back the media files of a dataset (PyAV).

RGB layers are H.264 mp4 (yuv420p, `crf`); alpha is lossless FFV1 (gray, 8 bit) in Matroska.
The same frames always give the same bytes (sample content hashes depend on it): x264 runs
single-threaded and without mbtree (parallelism comes from running many samples at once), and the muxer is
bitexact (no creation date or random Matroska segment id). So a writer may keep its recent files by content
(`EncodeCache`) and write the bytes again when the same frames come back with the same settings: the compose stage
encodes one background clip behind several foregrounds once, not once per sample.
Videos with alpha for sources and tests: VP9 with alpha (WebM) and ProRes 4444.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
from av.video.reformatter import VideoReformatter

from manifests.layers import Layer


def _rate(fps: float) -> Fraction:
    return Fraction(fps).limit_denominator(1001)


# x264's speed presets, fastest first (`write_rgb_video(preset=...)`, `BuildConfig.x264_preset`).
X264_PRESETS = ("ultrafast", "superfast", "veryfast", "faster", "fast", "medium", "slow", "slower", "veryslow",
                "placebo")


def write_rgb_video(path: Path, frames: np.ndarray, fps: float, crf: int = 18, cache: EncodeCache | None = None,
                    preset: str = "medium") -> None:
    """Write (T, H, W, 3) uint8 frames as H.264 mp4 (BT.601 yuv420p) with x264's `preset`. H and W must be even.
    With `cache`, frames encoded before with the same settings are written from it."""
    if preset not in X264_PRESETS:
        raise ValueError(f"x264 preset: one of {', '.join(X264_PRESETS)}, got {preset!r}")
    # mbtree off: its SIMD code gave different bytes for the same frames from run to run (with it on,
    # 3 variants in 12 encodes of one clip; with it off, or with asm off, always one).
    _encode(path, frames, fps, "libx264", "yuv420p", "rgb24",
            {"crf": str(crf), "preset": preset, "x264-params": "mbtree=0"}, cache)


def write_alpha_video(path: Path, alpha: np.ndarray, fps: float, cache: EncodeCache | None = None) -> None:
    """Write (T, H, W) alpha (uint8, or float in [0, 1]) losslessly as FFV1 gray in .mkv (`cache`: as above)."""
    if alpha.dtype != np.uint8:
        alpha = quantise(alpha)
    _encode(path, alpha, fps, "ffv1", "gray", "gray", {}, cache)


def write_rgba_video(path: Path, rgba: np.ndarray, fps: float) -> None:
    """Write (T, H, W, 4) uint8 straight RGBA: VP9 with alpha for .webm, ProRes 4444 for .mov."""
    if path.suffix.lower() == ".webm":
        _encode(path, rgba, fps, "libvpx-vp9", "yuva420p", "rgba", {"lossless": "1", "auto-alt-ref": "0"})
    elif path.suffix.lower() == ".mov":
        _encode(path, rgba, fps, "prores_ks", "yuva444p10le", "rgba", {"profile": "4444"})
    else:
        raise ValueError(f"RGBA video must be .webm (VP9 alpha) or .mov (ProRes 4444), got {path.name}")


def quantise(values: np.ndarray) -> np.ndarray:
    """Float values in [0, 1] to uint8 (x 255), rounding once."""
    return np.clip(np.rint(np.asarray(values, dtype=np.float32) * 255.0), 0, 255).astype(np.uint8)


def content_key(array: np.ndarray, *settings: object) -> bytes:
    """A digest of an array's values, shape and dtype and of `settings` (their repr): the key of a result that
    depends on nothing else."""
    digest = hashlib.sha256(np.ascontiguousarray(array).data)  # with the CPU's SHA extensions, 2x blake2b here
    digest.update(repr((array.shape, array.dtype.str, settings)).encode())
    return digest.digest()


class EncodeCache:
    """The encoded bytes of a writer's recent files, by a digest of the frames and every encoder setting; at most
    `budget` bytes, least recently used first out. Exact, since the same frames give the same bytes."""

    def __init__(self, budget: int = 64 << 20) -> None:
        self.budget = budget
        self._files: OrderedDict[bytes, bytes] = OrderedDict()
        self._size = 0
        self.hits = 0

    def get(self, key: bytes) -> bytes | None:
        data = self._files.get(key)
        if data is not None:
            self._files.move_to_end(key)
            self.hits += 1
        return data

    def put(self, key: bytes, data: bytes) -> None:
        if len(data) > self.budget // 4:  # one long clip must not flush every other entry
            return
        self._files[key] = data
        self._size += len(data)
        while self._size > self.budget:
            _, old = self._files.popitem(last=False)
            self._size -= len(old)


def _encode(path: Path, frames: np.ndarray, fps: float, codec: str, pix_fmt: str, src_fmt: str,
            options: dict[str, str], cache: EncodeCache | None = None) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.partial{path.suffix}")
    key = None if cache is None else \
        content_key(frames, path.suffix.lower(), _rate(fps), codec, pix_fmt, src_fmt, sorted(options.items()))
    data = None if cache is None else cache.get(key)
    if data is not None:
        tmp.write_bytes(data)
        tmp.replace(path)
        return
    height, width = frames.shape[1:3]
    # bitexact: no creation date or random segment id in the container (Matroska has both), so a resumed build
    # writes the same bytes as an uninterrupted one
    with av.open(str(tmp), mode="w", options={"fflags": "+bitexact"}) as container:
        stream = container.add_stream(codec, rate=_rate(fps), options=options)
        stream.width, stream.height, stream.pix_fmt = width, height, pix_fmt
        stream.codec_context.thread_count = 1  # see the module docstring: same frames, same bytes
        for index, frame in enumerate(frames):
            picture = av.VideoFrame.from_ndarray(np.ascontiguousarray(frame), format=src_fmt)
            picture.pts, picture.time_base = index, Fraction(1) / _rate(fps)
            container.mux(stream.encode(picture))
        container.mux(stream.encode(None))
    if cache is not None:
        cache.put(key, tmp.read_bytes())
    tmp.replace(path)


def _decoder_for(stream: av.video.stream.VideoStream) -> av.CodecContext | None:
    """VP9 keeps alpha in side data that only libvpx decodes; ffmpeg's own vp9 decoder drops it."""
    alpha_mode = (stream.metadata or {}).get("alpha_mode") or (stream.metadata or {}).get("ALPHA_MODE")
    if stream.codec_context.name == "vp9" and alpha_mode == "1":
        return av.CodecContext.create("libvpx-vp9", "r")
    return None


def has_alpha(path: Path) -> bool:
    """Whether the first video stream of a file carries an alpha channel."""
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        if _decoder_for(stream) is not None:
            return True
        fmt = stream.codec_context.pix_fmt or ""
        return fmt.startswith(("yuva", "rgba", "bgra", "argb", "abgr", "gbrap", "ya"))


def read_video(path: Path, fmt: str = "rgb24", indices: list[int] | None = None) -> np.ndarray:
    """Decode a video with PyAV: (T, H, W, 3) for rgb24, (T, H, W, 4) for rgba, (T, H, W) for gray.

    With `indices`, only those frames (in decode order) are kept; decoding stops after the last.
    """
    wanted = None if indices is None else set(indices)
    last = None if indices is None else max(indices, default=-1)
    out: dict[int, np.ndarray] = {}
    # One converter for the whole clip: `frame.to_ndarray(format=...)` sets up a new swscale context for every frame,
    # which cost more than decoding the frame (same conversion, same pixels).
    reformatter = VideoReformatter()
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        decoder = _decoder_for(stream)
        if decoder is not None:
            decoder.extradata = stream.codec_context.extradata
        for index, frame in enumerate(_frames(container, stream, decoder)):
            if wanted is None or index in wanted:
                out[index] = reformatter.reformat(frame, format=fmt).to_ndarray()
            if last is not None and index >= last:
                break
    order = sorted(out) if indices is None else indices
    missing = [i for i in order if i not in out]
    if missing:
        raise ValueError(f"{Path(path).name}: frame {missing[0]} not in the video ({len(out)} decoded)")
    if not order:
        raise ValueError(f"{Path(path).name}: no frames decoded")
    return np.stack([out[i] for i in order])


def read_layer(path: Path, layer: Layer) -> np.ndarray:
    """A stored layer as written: alpha (T, H, W) uint8, the others (T, H, W, 3) uint8."""
    return read_video(path, "gray" if layer == Layer.ALPHA else "rgb24")


def _frames(container, stream, decoder):
    if decoder is None:
        yield from container.decode(stream)
        return
    for packet in container.demux(stream):
        yield from decoder.decode(packet)


def video_info(path: Path) -> tuple[int, float, int, int]:
    """(frame count, fps, height, width) from the container; counts frames by demuxing if unset."""
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        fps = float(stream.average_rate or stream.base_rate or 0) or 0.0
        count = stream.frames or sum(1 for packet in container.demux(stream) if packet.size)
        return int(count), fps, int(stream.codec_context.height), int(stream.codec_context.width)
