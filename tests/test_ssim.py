"""Temporal SSIM of consecutive frames: frozen, moving and flickering clips, and agreement with skimage."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch
from conftest import moving_disk, shared_data, texture
from pytorch_msssim import ssim
from skimage.metrics import structural_similarity

from filters.ssim import RememberedSSIM, TemporalSSIM, consecutive_ssim, temporal_ssim


def skimage_pairs(frames: np.ndarray) -> np.ndarray:
    channel_axis = -1 if frames.ndim == 4 else None
    return np.array([
        structural_similarity(frames[i], frames[i + 1], channel_axis=channel_axis, data_range=255,
                              gaussian_weights=True, sigma=1.5, use_sample_covariance=False)
        for i in range(len(frames) - 1)
    ])


def real_clip(count: int = 6, size: int = 256) -> np.ndarray:
    files = sorted((shared_data() / "videos" / "davis_blackswan" / "frames").glob("*.jpg"))[:count]
    assert len(files) == count
    return np.stack([cv2.resize(cv2.cvtColor(cv2.imread(str(f)), cv2.COLOR_BGR2RGB), (size, size),
                                interpolation=cv2.INTER_AREA) for f in files])


def test_identical_frames_score_one():
    frames = np.repeat(texture(48, 64, seed=0)[None], 5, axis=0)
    scores = consecutive_ssim(frames)
    assert scores.shape == (4,) and scores.dtype == np.float64
    np.testing.assert_allclose(scores, 1.0, atol=1e-6)
    result = temporal_ssim(frames)
    assert result.mean == pytest.approx(1.0, abs=1e-6) and result.min == pytest.approx(1.0, abs=1e-6)


def test_flicker_lowers_the_min():
    frames, _ = moving_disk(num_frames=24)
    flicker = frames.astype(np.int16)
    flicker[1::2] += 40  # every other frame 40 grey levels brighter
    flicker = np.clip(flicker, 0, 255).astype(np.uint8)
    steady, flickering = temporal_ssim(frames), temporal_ssim(flicker)
    assert steady.min > 0.93  # measured 0.942; with flicker 0.888
    assert flickering.min < steady.min - 0.04
    assert flickering.mean < steady.mean - 0.04


def test_a_cut_stands_out_as_a_drop_and_a_fast_pan_does_not():
    scene = texture(64, 400, seed=7)
    pan = np.stack([scene[:, 12 * t : 12 * t + 96] for t in range(12)])  # fast: every pair shares little
    cut = pan.copy()
    cut[6:] = np.stack([texture(64, 96, seed=8)] * 6)  # another scene from frame 6 on
    slow = np.stack([scene[:, t : t + 96] for t in range(12)])
    slow_cut = slow.copy()
    slow_cut[6:] = cut[6:]
    assert temporal_ssim(pan).min < 0.2  # a bound on `min` would reject a plain fast pan ...
    assert temporal_ssim(pan).drop < 0.1  # ... the drop does not
    assert temporal_ssim(slow).drop < 0.1
    assert temporal_ssim(slow_cut).drop > 0.5


def test_a_moving_clip_scores_below_a_frozen_one():
    frames, _ = moving_disk(num_frames=8)
    frozen = temporal_ssim(np.repeat(frames[:1], 8, axis=0))
    moving = temporal_ssim(frames)
    one, zero = pytest.approx(1.0, abs=1e-6), pytest.approx(0.0, abs=1e-6)
    assert frozen == TemporalSSIM(one, one, zero)
    assert moving.mean < 0.97
    assert moving.min <= moving.mean < frozen.mean


def test_grey_frames_work():
    _, alphas = moving_disk(num_frames=5)
    mattes = np.rint(alphas * 255).astype(np.uint8)
    scores = consecutive_ssim(mattes)
    assert scores.shape == (4,)
    np.testing.assert_allclose(scores, skimage_pairs(mattes), atol=1e-3)
    assert np.all(scores < 1.0)


@pytest.mark.parametrize("count", [0, 1])
def test_fewer_than_two_frames_has_no_score(count):
    frames = np.zeros((count, 32, 32, 3), dtype=np.uint8)
    assert consecutive_ssim(frames).shape == (0,)
    assert temporal_ssim(frames) == TemporalSSIM(None, None, None)


def test_two_channel_frames_are_rejected():
    with pytest.raises(ValueError, match="1, 3 or 4 channels, got 2"):
        consecutive_ssim(np.zeros((3, 16, 16, 2), np.uint8))


def test_frames_smaller_than_the_window_are_rejected():
    with pytest.raises(ValueError, match="smaller than the 11x11 SSIM window"):
        consecutive_ssim(np.zeros((3, 10, 64, 3), dtype=np.uint8))


def test_agrees_with_skimage_on_real_rgb_frames():
    frames = real_clip()
    np.testing.assert_allclose(consecutive_ssim(frames), skimage_pairs(frames), rtol=0, atol=1e-3)


def test_agrees_with_skimage_on_real_grey_frames():
    grey = np.stack([cv2.cvtColor(frame, cv2.COLOR_RGB2GRAY) for frame in real_clip()])
    np.testing.assert_allclose(consecutive_ssim(grey), skimage_pairs(grey), rtol=0, atol=1e-3)


@pytest.mark.parametrize("shape", [(9, 64, 80, 3), (5, 40, 33), (30, 96, 96, 3)])
def test_each_frame_filtered_once_gives_pytorch_msssims_scores(shape):
    """The pairs' SSIM as pytorch_msssim computes it (5 filters a pair), within float32 rounding."""
    frames = np.random.default_rng(sum(shape)).integers(0, 256, shape, dtype=np.uint8)
    frames[1:] = np.clip(frames[:-1] * 0.7 + frames[1:] * 0.3, 0, 255).astype(np.uint8)  # neighbours alike
    x = torch.from_numpy(frames if frames.ndim == 4 else frames[..., None]).permute(0, 3, 1, 2).float()
    expected = ssim(x[:-1], x[1:], data_range=255.0, size_average=False, win_size=11, win_sigma=1.5).double()
    np.testing.assert_allclose(consecutive_ssim(frames), expected.numpy(), rtol=0, atol=1e-5)


def test_remembered_ssim_scores_a_clip_once_by_content(monkeypatch):
    import filters.ssim

    calls = []
    monkeypatch.setattr(filters.ssim, "temporal_ssim", lambda frames: calls.append(1) or temporal_ssim(frames))
    remembered = RememberedSSIM(size=2)
    clips = [np.stack([texture(32, 32, seed + t) for t in range(3)]) for seed in (0, 10, 20)]
    first = remembered(clips[0])
    assert remembered(clips[0].copy()) == first == temporal_ssim(clips[0]) and len(calls) == 1  # same values
    assert remembered(clips[0][..., 1].copy()) != first  # other content, other result
    remembered(clips[1]), remembered(clips[2])  # the oldest falls out (size 2)
    calls.clear()
    remembered(clips[0])
    assert len(calls) == 1
