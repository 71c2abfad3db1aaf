"""Media files: deterministic H.264, lossless alpha, videos with alpha."""

from __future__ import annotations

import numpy as np
from conftest import moving_disk, texture

from manifests import video_io


def test_same_frames_give_the_same_bytes_whatever_array_holds_them(tmp_path):
    frames = np.stack([texture(48, 64, seed) for seed in range(12)])
    outputs = set()
    for i, array in enumerate([frames, frames.copy(), np.ascontiguousarray(frames[:, :, ::-1][:, :, ::-1])]):
        path = tmp_path / f"{i}.mp4"
        video_io.write_rgb_video(path, array, 8.0)
        outputs.add(path.read_bytes())
    assert len(outputs) == 1


def test_rgb_round_trip_is_close(tmp_path):
    frames = np.stack([texture(48, 64, seed) for seed in range(4)])
    video_io.write_rgb_video(tmp_path / "v.mp4", frames, 8.0, crf=0)
    back = video_io.read_video(tmp_path / "v.mp4")
    assert back.shape == frames.shape
    assert np.abs(back.astype(int) - frames).mean() < 6.5  # 4:2:0 chroma on a busy colour texture
    assert video_io.video_info(tmp_path / "v.mp4") == (4, 8.0, 48, 64)


def test_alpha_is_lossless_even_at_odd_sizes(tmp_path):
    _, alpha = moving_disk(5, 33, 47)
    video_io.write_alpha_video(tmp_path / "a.mkv", alpha, 8.0)
    assert np.array_equal(video_io.read_video(tmp_path / "a.mkv", "gray"), video_io.quantise(alpha))


def test_read_selected_frames_and_missing_frames(tmp_path):
    frames = np.stack([np.full((16, 16, 3), 20 * i, np.uint8) for i in range(6)])
    video_io.write_rgb_video(tmp_path / "v.mp4", frames, 8.0, crf=0)
    picked = video_io.read_video(tmp_path / "v.mp4", indices=[4, 1])
    assert [int(round(f.mean() / 20)) for f in picked] == [4, 1]
    import pytest

    with pytest.raises(ValueError, match="frame 9 not in the video"):
        video_io.read_video(tmp_path / "v.mp4", indices=[9])


def test_the_encode_cache_writes_the_bytes_an_encoder_would(tmp_path, monkeypatch):
    frames = np.stack([texture(48, 64, seed) for seed in range(6)])
    video_io.write_rgb_video(tmp_path / "plain.mp4", frames, 8.0)
    cache = video_io.EncodeCache()
    video_io.write_rgb_video(tmp_path / "first.mp4", frames, 8.0, cache=cache)
    encodes = []
    original = video_io.av.open
    monkeypatch.setattr(video_io.av, "open", lambda *args, **kwargs: encodes.append(args) or original(*args, **kwargs))
    video_io.write_rgb_video(tmp_path / "again.mp4", frames.copy(), 8.0, cache=cache)
    assert encodes == [] and cache.hits == 1
    assert (tmp_path / "again.mp4").read_bytes() == (tmp_path / "plain.mp4").read_bytes()
    assert not list(tmp_path.glob(".*partial*"))
    # another setting, other frames or another container is encoded anew
    video_io.write_rgb_video(tmp_path / "crf.mp4", frames, 8.0, crf=30, cache=cache)
    video_io.write_rgb_video(tmp_path / "fps.mp4", frames, 12.0, cache=cache)
    video_io.write_rgb_video(tmp_path / "other.mp4", frames[::-1].copy(), 8.0, cache=cache)
    video_io.write_alpha_video(tmp_path / "a.mkv", frames[..., 0], 8.0, cache=cache)
    assert len(encodes) == 4 and cache.hits == 1
    assert (tmp_path / "crf.mp4").read_bytes() != (tmp_path / "plain.mp4").read_bytes()


def test_each_x264_preset_is_deterministic_and_the_cache_tells_them_apart(tmp_path):
    frames = np.stack([texture(48, 64, seed) for seed in range(6)])
    cache = video_io.EncodeCache()
    for preset in ("veryfast", "medium"):
        video_io.write_rgb_video(tmp_path / f"{preset}.mp4", frames, 8.0, preset=preset)
        video_io.write_rgb_video(tmp_path / f"{preset}-again.mp4", frames.copy(), 8.0, preset=preset)
        video_io.write_rgb_video(tmp_path / f"{preset}-cached.mp4", frames, 8.0, cache=cache, preset=preset)
        assert len({(tmp_path / f"{preset}{tail}.mp4").read_bytes() for tail in ("", "-again", "-cached")}) == 1
    assert cache.hits == 0  # the second preset was encoded, not taken from the first's entry
    assert (tmp_path / "veryfast.mp4").read_bytes() != (tmp_path / "medium.mp4").read_bytes()
    fast, medium = (video_io.read_video(tmp_path / f"{p}.mp4").astype(int) for p in ("veryfast", "medium"))
    assert np.abs(fast - medium).mean() < 3
    import pytest

    with pytest.raises(ValueError, match="x264 preset: one of"):
        video_io.write_rgb_video(tmp_path / "x.mp4", frames, 8.0, preset="quick")


def test_reading_converts_every_frame_as_pyav_does_frame_by_frame(tmp_path):
    frames = np.stack([texture(48, 64, seed) for seed in range(5)])
    video_io.write_rgb_video(tmp_path / "v.mp4", frames, 8.0)
    video_io.write_alpha_video(tmp_path / "a.mkv", frames[..., 1], 8.0)
    for path, fmt in ((tmp_path / "v.mp4", "rgb24"), (tmp_path / "v.mp4", "gray"), (tmp_path / "a.mkv", "gray")):
        with video_io.av.open(str(path)) as container:
            each = np.stack([frame.to_ndarray(format=fmt) for frame in container.decode(video=0)])
        assert np.array_equal(video_io.read_video(path, fmt), each)


def test_the_encode_cache_keeps_to_its_budget():
    cache = video_io.EncodeCache(budget=100)
    for index in range(10):
        cache.put(bytes([index]), b"x" * 20)
    assert cache.get(bytes([0])) is None and cache.get(bytes([9])) == b"x" * 20
    assert sum(len(cache.get(bytes([i])) or b"") for i in range(10)) <= 100
    cache.put(b"big", b"x" * 60)  # over a quarter of the budget: not kept
    assert cache.get(b"big") is None
