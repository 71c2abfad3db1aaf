"""Alpha quality scores on hand-made mattes."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import moving_disk

from filters.alpha import alpha_quality, consecutive_iou


def test_a_still_matte_is_stable_and_binary():
    alpha = np.zeros((4, 10, 10), np.uint8)
    alpha[:, 2:6, 2:6] = 255
    quality = alpha_quality(alpha)
    assert quality.coverage_mean == pytest.approx(0.16)
    assert (quality.iou_mean, quality.iou_min) == (1.0, 1.0)
    assert (quality.empty_frames, quality.full_frames, quality.soft_fraction) == (0.0, 0.0, 0.0)


def test_iou_of_consecutive_masks_drops_when_the_object_jumps():
    alpha = np.zeros((3, 10, 10), np.uint8)
    alpha[0, 0:4, 0:4] = 255
    alpha[1, 0:4, 2:6] = 255  # half overlaps: 8 / 24
    alpha[2, 6:10, 6:10] = 255  # no overlap
    assert consecutive_iou(alpha).tolist() == pytest.approx([8 / 24, 0.0])
    assert alpha_quality(alpha).iou_min == 0.0


def test_empty_and_full_frames_are_counted():
    alpha = np.zeros((4, 6, 6), np.uint8)
    alpha[1] = 255
    alpha[2, 0, 0] = 1  # one faint pixel: not empty
    quality = alpha_quality(alpha)
    assert quality.empty_frames == 0.5  # frames 0 and 3
    assert quality.full_frames == 0.25  # frame 1
    assert consecutive_iou(np.zeros((2, 3, 3), np.uint8)).tolist() == [1.0]  # nothing on both sides agrees


def test_soft_fraction_counts_partly_transparent_foreground_pixels():
    _, alpha = moving_disk(num_frames=3)
    quality = alpha_quality(alpha)
    assert 0.0 < quality.soft_fraction < 0.3  # an anti-aliased rim around a solid disk
    assert alpha_quality(np.zeros((2, 4, 4), np.uint8)).soft_fraction is None


def test_a_single_frame_has_no_temporal_scores():
    quality = alpha_quality(np.full((1, 4, 4), 128, np.uint8))
    assert quality.iou_mean is None and quality.iou_min is None
    assert quality.soft_fraction == 1.0
    assert set(quality.columns()) >= {"alpha_iou_min", "alpha_soft_fraction", "alpha_coverage_mean"}
