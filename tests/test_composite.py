"""Compositing: placement inside the frame, the blend invariant, frozen-frame triplets."""

from __future__ import annotations

import numpy as np
from conftest import moving_disk, texture

from datagen.composite import Placement, blend, choose_placement, copy_paste, freeze, object_box
from manifests.video_io import quantise


def test_blend_invariant_holds_on_the_stored_alpha():
    rng = np.random.default_rng(0)
    fg = rng.integers(0, 256, (2, 8, 8, 3), dtype=np.uint8)
    bg = rng.integers(0, 256, (2, 8, 8, 3), dtype=np.uint8)
    alpha = rng.random((2, 8, 8)).astype(np.float32)
    layers = blend(fg, alpha, bg)
    a = layers.alpha.astype(np.float64)[..., None] / 255.0
    expected = np.rint(a * fg + (1 - a) * bg)
    assert layers.alpha.dtype == np.uint8 and np.array_equal(layers.alpha, quantise(alpha))
    assert np.array_equal(layers.blended, expected.astype(np.uint8))


def test_placement_keeps_the_object_inside_the_frame():
    _, alpha = moving_disk(6, 64, 96)
    for seed in range(30):
        placement = choose_placement(alpha, (48, 80), np.random.default_rng(seed), (0.5, 1.0))
        placed = copy_paste(np.zeros((6, 64, 96, 3), np.uint8), alpha, np.zeros((6, 48, 80, 3), np.uint8),
                            placement).alpha
        assert placed[:, 0, :].max() == 0 and placed[:, -1, :].max() == 0
        assert placed[:, :, 0].max() == 0 and placed[:, :, -1].max() == 0
        # nothing of the object is lost off-canvas: total alpha scales with the area
        assert abs(placed.astype(float).sum() / 255 - alpha.sum() * placement.scale**2) < 0.05 * alpha.sum()


def test_placement_is_seeded():
    _, alpha = moving_disk(4, 32, 32)
    a = choose_placement(alpha, (32, 32), np.random.default_rng(7), (0.5, 1.0))
    b = choose_placement(alpha, (32, 32), np.random.default_rng(7), (0.5, 1.0))
    c = choose_placement(alpha, (32, 32), np.random.default_rng(8), (0.5, 1.0))
    assert a == b and a != c


def test_empty_alpha_has_no_box_and_identity_placement():
    alpha = np.zeros((3, 16, 16), np.float32)
    assert object_box(alpha) is None
    assert choose_placement(alpha, (16, 16), np.random.default_rng(0), (0.5, 1.0)) == Placement()


def test_copy_paste_moves_with_the_foreground():
    frames, alpha = moving_disk(4, 32, 48)
    bg = np.repeat(texture(32, 48, 5)[None], 4, axis=0)
    layers = copy_paste(frames, alpha, bg, Placement())
    assert layers.blended.shape == (4, 32, 48, 3)
    centres = [np.nonzero(a > 128)[1].mean() for a in layers.alpha]
    assert np.all(np.diff(centres) > 0)


def test_freeze_repeats_one_frame():
    _, alpha = moving_disk(1, 32, 32)
    fg = texture(32, 32, 1)
    bg = texture(32, 32, 2)
    layers = freeze(fg, alpha[0], bg, Placement(), 5)
    assert layers.blended.shape == (5, 32, 32, 3)
    assert all(np.array_equal(layers.blended[0], frame) for frame in layers.blended)
    assert np.array_equal(layers.alpha[3], quantise(alpha[0]))
