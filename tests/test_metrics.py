"""The shared measures in `manifests.metrics`: each against a value worked out by hand, and the bootstrap interval
against what it must cover."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from manifests.metrics import (
    alpha_dtssd,
    alpha_gradient_error,
    alpha_mse,
    alpha_sad,
    bootstrap_interval,
    masked_psnr,
    masked_ssim,
)


def disc(frames: int = 4, size: int = 32, radius: float = 8.0, shift: float = 0.0) -> np.ndarray:
    ys, xs = np.mgrid[:size, :size]
    return np.stack([((xs - 16 - shift * t) ** 2 + (ys - 16) ** 2 <= radius**2).astype(np.float32)
                     for t in range(frames)])


def test_sad_and_mse_count_the_differing_pixels():
    truth = np.zeros((2, 10, 10), np.float32)
    pred = truth.copy()
    pred[:, :5, :4] = 0.5  # 20 pixels off by 0.5 in each frame
    assert alpha_sad(pred, truth) == pytest.approx(20 * 0.5 / 1000)
    assert alpha_mse(pred, truth) == pytest.approx(40 * 0.25 / 200 * 1000)
    assert alpha_sad(truth, truth) == 0.0
    # uint8 mattes are read as 0..255
    assert alpha_sad((pred * 255).astype(np.uint8), truth) == pytest.approx(alpha_sad(pred, truth), rel=1e-2)


def test_gradient_error_grows_as_the_edge_blurs():
    truth = disc()
    soft, softer = (np.stack([ndimage.gaussian_filter(frame, sigma) for frame in truth]) for sigma in (1.0, 3.0))
    assert alpha_gradient_error(truth, truth) == 0.0
    assert 0.0 < alpha_gradient_error(soft, truth) < alpha_gradient_error(softer, truth)


def test_dtssd_is_zero_for_steady_error_and_grows_with_flicker():
    truth = disc(frames=6, shift=1.0)
    steady = np.clip(truth + 0.2, 0, 1)  # wrong, but wrong the same way in every frame where it can be
    flicker = truth.copy()
    flicker[::2] = 0.0  # the object vanishes every other frame
    assert alpha_dtssd(truth, truth) == 0.0
    assert alpha_dtssd(flicker, truth) > 10 * max(alpha_dtssd(steady, truth), 1e-3)
    assert alpha_dtssd(truth[:1], truth[:1]) is None


def test_masked_psnr_and_ssim_look_only_inside_the_mask():
    rng = np.random.default_rng(0)
    reference = rng.integers(0, 256, (3, 24, 24, 3)).astype(np.uint8)
    estimate = reference.copy()
    mask = np.zeros((3, 24, 24), bool)
    mask[:, 4:12, 4:12] = True
    estimate[~mask] = 0  # wrong everywhere outside the mask
    assert masked_psnr(reference, estimate, mask) == 100.0
    assert masked_psnr(reference, estimate, ~mask) < 10.0
    assert masked_ssim(reference, estimate, mask[:, :, :]) > masked_ssim(reference, estimate, ~mask)
    assert masked_psnr(reference, estimate, np.zeros_like(mask)) is None
    assert masked_ssim(reference, estimate, np.zeros_like(mask)) is None


def test_bootstrap_interval_covers_the_mean_and_narrows_with_more_samples():
    rng = np.random.default_rng(1)
    few = rng.normal(0.5, 0.1, size=(8, 3))
    many = rng.normal(0.5, 0.1, size=(200, 3))
    mean, low, high = bootstrap_interval(few)
    assert low <= mean <= high
    _, low_many, high_many = bootstrap_interval(many)
    assert low_many <= 0.5 <= high_many
    assert high_many - low_many < (high - low) / 2
    # deterministic for a seed; a constant has a zero-width interval
    assert bootstrap_interval(few) == bootstrap_interval(few)
    assert bootstrap_interval(np.full((5, 3), 2.0)) == (2.0, 2.0, 2.0)


def test_bootstrap_interval_leaves_out_measures_that_do_not_apply():
    values = np.array([[1.0, 1.0], [np.nan, np.nan], [3.0, np.nan]])
    mean, low, high = bootstrap_interval(values)
    assert mean == pytest.approx(2.0)  # the mean of the per-sample means, 1 and 3
    assert 1.0 <= low <= high <= 3.0
    assert bootstrap_interval(np.full((3, 2), np.nan)) is None
