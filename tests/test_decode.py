"""Decoding inputs into clips: sampling, resizing, alpha sources, and clear errors."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from conftest import moving_disk, write_layered, write_rgba, write_video
from PIL import Image

from datagen.config import BuildConfig
from datagen.decode import decode, sample_indices
from datagen.sources import SourceItem, discover
from datagen.video_clip import VideoClip
from manifests import video_io
from manifests.errors import InputError
from manifests.layers import InputKind


def item_for(path: Path) -> SourceItem:
    [item] = discover(str(path))
    return item


def test_sample_indices_follow_the_target_fps():
    config = BuildConfig(frames=4, fps=8.0, seed=0)
    indices = sample_indices(100, 24.0, config, "0" * 16)
    assert np.diff(indices).tolist() == [3, 3, 3]
    assert indices[0] >= 0 and indices[-1] < 100


def test_too_short_video_is_an_input_error():
    config = BuildConfig(frames=16, fps=8.0)
    with pytest.raises(InputError, match="too short: 4 frames"):
        sample_indices(4, 24.0, config, "0" * 16)


def test_video_is_resized_and_centre_cropped(tmp_path, small_config):
    decoded = decode(item_for(write_video(tmp_path / "v.mp4", height=64, width=96)), small_config)
    clip = decoded.clip
    assert decoded.kind == InputKind.VIDEO
    assert clip.frames.shape == (4, 32, 48, 3) and clip.alpha is None
    assert clip.source_size == (64, 96) and decoded.source_frames == 24
    assert np.diff(clip.frame_indices).tolist() == [3, 3, 3]


def test_decoded_frames_are_the_source_frames(tmp_path):
    frames, _ = moving_disk(24, 64, 96, seed=3)
    video_io.write_rgb_video(tmp_path / "v.mp4", frames, 24.0, crf=0)
    config = BuildConfig(frames=4, fps=8.0, size=(64, 96))
    clip = decode(item_for(tmp_path / "v.mp4"), config).clip
    for decoded, index in zip(clip.frames, clip.frame_indices):
        errors = np.abs(frames.astype(float) - decoded.astype(float)).mean(axis=(1, 2, 3))
        assert int(np.argmin(errors)) == index  # the recorded index is the frame that was decoded


@pytest.mark.parametrize("suffix", [".webm", ".mov"])
def test_video_with_alpha_is_decoded_with_its_alpha(tmp_path, suffix, small_config):
    frames, alpha = moving_disk(24, 64, 96)
    rgba = np.concatenate([frames, video_io.quantise(alpha)[..., None]], axis=-1)
    path = tmp_path / f"alpha{suffix}"
    video_io.write_rgba_video(path, rgba, 24.0)
    decoded = decode(item_for(path), replace(small_config, size=(64, 96)))
    assert decoded.kind == InputKind.ALPHA_VIDEO
    expected = alpha[decoded.clip.frame_indices]
    assert np.abs(decoded.clip.alpha - expected).max() < 0.02


def test_png_sequence_with_alpha(tmp_path, small_config):
    frames, alpha = moving_disk(12, 64, 96)  # consecutive frames of one clip, each with its alpha
    (tmp_path / "seq").mkdir()
    for i in range(12):
        rgba = np.dstack([frames[i], video_io.quantise(alpha[i])])
        Image.fromarray(rgba, "RGBA").save(tmp_path / "seq" / f"{i:04d}.png")
    decoded = decode(item_for(tmp_path / "seq"), small_config)
    assert decoded.kind == InputKind.ALPHA_FRAME_FOLDER
    assert decoded.clip.alpha.shape == (4, 32, 48)


def test_frame_folder_with_masks_gets_the_masks_as_alpha(tmp_path, small_config):
    frames, alpha = moving_disk(12, 64, 96)
    for i in range(12):
        (tmp_path / "clip" / "frames").mkdir(parents=True, exist_ok=True)
        (tmp_path / "clip" / "masks").mkdir(parents=True, exist_ok=True)
        Image.fromarray(frames[i]).save(tmp_path / "clip" / "frames" / f"{i:05d}.jpg")
        Image.fromarray(((alpha[i] > 0.5) * 255).astype(np.uint8)).save(tmp_path / "clip" / "masks" / f"{i:05d}.png")
    decoded = decode(item_for(tmp_path / "clip"), replace(small_config, size=(64, 96)))
    assert decoded.kind == InputKind.FRAME_FOLDER
    truth = (alpha[decoded.clip.frame_indices] > 0.5).astype(np.float32)
    assert np.abs(decoded.clip.alpha - truth).max() == 0.0


def test_rgba_image_is_fitted_whole(tmp_path, small_config):
    decoded = decode(item_for(write_rgba(tmp_path / "s.png", 100, 50)), small_config)
    assert decoded.kind == InputKind.RGBA_IMAGE
    assert decoded.clip.frames.shape == (1, 32, 48, 3)
    # letterboxed: the padding columns carry no alpha
    assert decoded.clip.alpha[0, :, :10].max() == 0.0 and decoded.clip.alpha[0].max() > 0.9


def test_layered_folder_gives_foreground_and_background(tmp_path, small_config):
    decoded = decode(item_for(write_layered(tmp_path / "l")), small_config)
    assert decoded.kind == InputKind.LAYERED_IMAGE
    assert decoded.clip.alpha.shape == (1, 32, 48)
    assert decoded.background.frames.shape == (1, 32, 48, 3)


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        ("empty.mp4", b"", "empty file"),
        ("text.mp4", b"this is not a video at all\n" * 20, "not a readable video"),
        ("noise.mp4", bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8)), "not a readable"),
        ("broken.png", b"\x89PNG\r\n\x1a\n" + b"\x00" * 40, "not a readable image"),
    ],
)
def test_bad_files_raise_one_line_input_errors(tmp_path, small_config, name, content, message):
    (tmp_path / name).write_bytes(content)
    with pytest.raises(InputError, match=message) as info:
        decode(item_for(tmp_path / name), small_config)
    assert "\n" not in str(info.value)


def test_truncated_video_is_an_input_error(tmp_path, small_config):
    path = write_video(tmp_path / "v.mp4", num_frames=48)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 3])
    with pytest.raises(InputError):
        decode(item_for(path), replace(small_config, frames=16, fps=24.0))


def test_huge_image_is_refused_before_decoding(tmp_path, small_config):
    # A valid PNG header that claims 30000 x 30000 pixels, with no pixel data behind it.
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", 30000, 30000, 8, 2, 0, 0, 0)
    png = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\x00" * 64))
    (tmp_path / "huge.png").write_bytes(png)
    with pytest.raises(InputError, match="image too large: 30000x30000"):
        decode(item_for(tmp_path / "huge.png"), small_config)


def test_odd_dimensions_are_resized(tmp_path, small_config):
    for i in range(12):
        Image.fromarray(np.full((33, 47, 3), i * 10, np.uint8)).save(tmp_path / f"{i:03d}.png")
    clip = decode(item_for(tmp_path), small_config).clip
    assert clip.frames.shape == (4, 32, 48, 3)


def test_clip_round_trips_through_its_file(tmp_path):
    frames, alpha = moving_disk(3, 16, 16)
    clip = VideoClip(frames, alpha, fps=8.0, frame_indices=[0, 3, 6], source_size=(16, 16))
    clip.save(tmp_path / "c.npz")
    back = VideoClip.load(tmp_path / "c.npz")
    assert np.array_equal(back.frames, frames) and np.abs(back.alpha - alpha).max() < 1e-4
    assert back.frame_indices == [0, 3, 6] and back.fps == 8.0
