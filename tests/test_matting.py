"""Weight-free matting: background subtraction, chroma key, given alpha, the guided filter and the metrics."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
from scipy import ndimage
from skimage import data

from datagen.matting import AutoMatting, load_matting
from datagen.matting.bgsub import BackgroundSubtraction
from datagen.matting.chroma import ChromaKey
from datagen.matting.given import GivenAlpha
from datagen.matting.refine import disk, fill_holes, guided_filter, keep_large_components, soft_edge
from datagen.video_clip import VideoClip
from manifests.errors import ConfigError, InputError
from manifests.metrics import alpha_iou, alpha_mae

SUPERSAMPLE = 4


def blob_alpha(size: int, cx: float, cy: float, radius: float) -> np.ndarray:
    """(size, size) anti-aliased alpha of a disk with a smaller disk bulging out of its upper right."""
    fine = (np.arange(size * SUPERSAMPLE) + 0.5) / SUPERSAMPLE
    yy, xx = np.meshgrid(fine, fine, indexing="ij")
    inside = np.hypot(xx - cx, yy - cy) <= radius
    inside |= np.hypot(xx - cx - 0.8 * radius, yy - cy + 0.6 * radius) <= 0.55 * radius
    return cv2.resize(inside.astype(np.float32), (size, size), interpolation=cv2.INTER_AREA)


def object_texture(size: int) -> np.ndarray:
    return cv2.resize(data.astronaut()[30:230, 150:350], (size, size), interpolation=cv2.INTER_AREA)


def composite(alpha: np.ndarray, foreground: np.ndarray, background: np.ndarray, noise: float,
              rng: np.random.Generator) -> np.ndarray:
    weight = alpha[..., None]
    frame = weight * foreground + (1 - weight) * background + rng.normal(0, noise, foreground.shape)
    return np.clip(np.rint(frame), 0, 255).astype(np.uint8)


def moving_object_clip(num_frames: int = 8, size: int = 64, seed: int = 0,
                       path: list[float] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """A textured blob sliding corner to corner over tinted brickwork (static camera), and its exact alpha.

    `path` gives the blob's position in each frame as a fraction of the way (default: even steps).
    """
    rng = np.random.default_rng(seed)
    brick = cv2.resize(data.brick(), (size, size), interpolation=cv2.INTER_AREA).astype(np.float32)
    background = brick[..., None] * np.array([1.0, 0.75, 0.55], np.float32)
    texture = object_texture(size).astype(np.float32)
    radius = size * 0.16
    frames, alphas = [], []
    for fraction in np.linspace(0, 1, num_frames) if path is None else path:
        centre = radius + 2 + (size - 2 * radius - 6) * fraction
        alpha = blob_alpha(size, centre, size - centre, radius)
        shift = np.float32([[1, 0, centre - size / 2], [0, 1, size / 2 - centre]])  # the texture moves along
        moved = cv2.warpAffine(texture, shift, (size, size), borderMode=cv2.BORDER_REFLECT)
        frames.append(composite(alpha, moved, background, 2.0, rng))
        alphas.append(alpha)
    return np.stack(frames), np.stack(alphas)


def screen_clip(colour: tuple[int, int, int], num_frames: int = 1, size: int = 64,
                seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A textured disk in front of an unevenly lit coloured screen, and its exact alpha."""
    rng = np.random.default_rng(seed)
    ramp = np.linspace(0.85, 1.1, size, dtype=np.float32)
    background = np.asarray(colour, np.float32) * ramp[None, :, None] * np.ones((size, 1, 1), np.float32)
    texture = object_texture(size).astype(np.float32)
    frames, alphas = [], []
    for t in range(num_frames):
        alpha = blob_alpha(size, size * (0.4 + 0.1 * t), size * 0.5, size * 0.25)
        frames.append(composite(alpha, texture, background, 2.0, rng))
        alphas.append(alpha)
    return np.stack(frames), np.stack(alphas)


# --- bgsub ------------------------------------------------------------------------------------------


def test_bgsub_recovers_a_moving_object():
    frames, truth = moving_object_clip()
    matte = BackgroundSubtraction()(VideoClip(frames=frames))
    assert alpha_iou(matte.alpha, truth) >= 0.9
    assert alpha_mae(matte.alpha, truth) < 0.03


def test_bgsub_output_is_float32_alpha_in_unit_range():
    frames, _ = moving_object_clip(num_frames=5)
    matte = BackgroundSubtraction()(VideoClip(frames=frames))
    assert matte.alpha.shape == (5, 64, 64) and matte.alpha.dtype == np.float32
    assert matte.alpha.min() >= 0.0 and matte.alpha.max() <= 1.0
    assert matte.backend.name == "bgsub"


def test_bgsub_is_deterministic():
    frames, _ = moving_object_clip(num_frames=5)
    first = BackgroundSubtraction()(VideoClip(frames=frames)).alpha
    second = BackgroundSubtraction()(VideoClip(frames=frames.copy())).alpha
    assert np.array_equal(first, second)


def test_bgsub_soft_values_only_near_the_edge():
    frames, _ = moving_object_clip()
    backend = BackgroundSubtraction()
    alpha = backend(VideoClip(frames=frames)).alpha
    soft = (alpha > 0) & (alpha < 1)
    assert soft.any()
    for t in range(len(alpha)):
        hard = alpha[t] >= 0.5
        to_boundary = np.maximum(ndimage.distance_transform_edt(hard), ndimage.distance_transform_edt(~hard))
        # The band is edge_radius px around the mask before refinement, whose edge may move a few px.
        assert to_boundary[soft[t]].max() <= 2 * backend.edge_radius
    # away from the edge the matte is exactly 0 or 1
    assert (alpha == 1.0).sum() > 100 and (alpha == 0.0).sum() > 0.8 * alpha.size


def test_bgsub_keeps_a_static_clip_empty():
    rng = np.random.default_rng(3)
    still = moving_object_clip(num_frames=3)[0][:1]
    noisy = np.clip(still + rng.normal(0, 2.0, (6, 64, 64, 3)), 0, 255).astype(np.uint8)
    assert BackgroundSubtraction()(VideoClip(frames=noisy)).alpha.max() == 0.0


def test_bgsub_handles_an_object_present_in_most_frames():
    # A short path: pixels in the middle are covered in 11 of 12 frames, so a per-pixel median takes the
    # object for background there (IoU 0.82); its texture keeps changing while the background stays put.
    path = list(np.linspace(0.25, 0.75, 12))
    frames, truth = moving_object_clip(num_frames=len(path), path=path)
    assert (truth >= 0.5).sum(axis=0).max() == 11
    matte = BackgroundSubtraction()(VideoClip(frames=frames))
    assert alpha_iou(matte.alpha, truth) >= 0.9


def test_bgsub_stabilises_a_panning_camera_instead_of_refusing_it():
    # Once refused ("the camera probably moves"): a pan over an empty scene now mattes as (nearly) nothing.
    rng = np.random.default_rng(0)
    scene = cv2.resize(data.coffee(), (240, 160), interpolation=cv2.INTER_AREA).astype(np.float32)
    crops = [scene[40:104, 8 * t : 8 * t + 64] + rng.normal(0, 2.0, (64, 64, 3)) for t in range(12)]
    frames = np.clip(np.rint(crops), 0, 255).astype(np.uint8)  # the camera pans 8 px a frame
    matte = BackgroundSubtraction()(VideoClip(frames))
    assert matte.camera["stabilised"] is True and matte.camera["pan_px"] == pytest.approx(8.0, abs=0.1)
    assert matte.alpha.mean() < 0.01


def test_bgsub_records_a_static_camera_and_a_clean_plate():
    frames, truth = moving_object_clip(num_frames=8)
    matte = BackgroundSubtraction()(VideoClip(frames=frames))
    assert matte.camera["stabilised"] is False and matte.camera["extent_px"] < 1.0
    assert matte.background.shape == frames.shape
    clear = truth == 0
    assert np.abs(matte.background[clear].astype(float) - frames[clear].astype(float)).mean() < 3.0


def test_bgsub_rejects_a_clip_of_two_frames():
    frames, _ = moving_object_clip(num_frames=3)
    with pytest.raises(InputError, match="at least 3 frames"):
        BackgroundSubtraction()(VideoClip(frames=frames[:2]))


# --- chroma -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(("colour", "name"), [((40, 175, 70), "green"), ((20, 70, 190), "blue")])
def test_chroma_recovers_a_disk_on_a_screen(colour, name):
    frames, truth = screen_clip(colour)
    matte = ChromaKey()(VideoClip(frames=frames))
    assert alpha_iou(matte.alpha, truth) >= 0.95
    assert matte.alpha.shape == (1, 64, 64) and matte.alpha.dtype == np.float32
    assert matte.backend.name == f"chroma:{name}"


def test_chroma_with_a_named_key_matches_auto_detection():
    frames, _ = screen_clip((40, 175, 70), num_frames=3)
    clip = VideoClip(frames=frames)
    assert np.array_equal(load_matting("chroma:green")(clip).alpha, load_matting("chroma")(clip).alpha)


def test_chroma_rejects_a_clip_without_that_screen():
    frames, _ = screen_clip((40, 175, 70))
    with pytest.raises(InputError, match="no blue screen"):
        ChromaKey(key="blue")(VideoClip(frames=frames))
    with pytest.raises(InputError, match="no green or blue screen"):
        ChromaKey()(VideoClip(frames=moving_object_clip(num_frames=3)[0]))


def test_chroma_drops_a_speck_smaller_than_min_area():
    frames, truth = screen_clip((40, 175, 70))
    frames[0, 10:12, 30:32] = (200, 40, 200)  # 4 px of not-screen, far from the disk
    kept = ChromaKey(open_px=0, min_area=0.0)(VideoClip(frames=frames)).alpha
    dropped = ChromaKey(open_px=0, min_area=0.003)(VideoClip(frames=frames)).alpha  # 0.003 of 64x64: 12.3 px
    assert (kept[0, 8:14, 28:34] >= 0.5).sum() == 4
    assert (dropped[0, 8:14, 28:34] >= 0.5).sum() == 0
    assert alpha_iou(dropped, truth) >= 0.95  # the disk stays


def test_bgsub_drops_a_speck_smaller_than_min_area():
    frames, truth = moving_object_clip()
    frames[2, 58:60, 4:6] = 255 - frames[2, 58:60, 4:6]  # 4 px change in one frame, far from the object's path
    kept = BackgroundSubtraction(min_area=0.0)(VideoClip(frames=frames)).alpha
    dropped = BackgroundSubtraction(min_area=0.003)(VideoClip(frames=frames)).alpha  # 0.003 of 64x64: 12.3 px
    assert (kept[2, 48:64, 0:16] >= 0.5).sum() == 4
    assert (dropped[2, 48:64, 0:16] >= 0.5).sum() == 0
    assert alpha_iou(dropped, truth) >= 0.9  # the object stays


# --- component cleanup ------------------------------------------------------------------------------


def test_keep_large_components_drops_components_below_the_area_and_joins_diagonals():
    mask = np.zeros((10, 10), bool)
    mask[1:4, 1:4] = True  # 9 px
    mask[6, 6] = mask[7, 7] = True  # 2 px touching at a corner: one 8-connected component
    mask[8, 1] = True  # 1 px
    out = keep_large_components(mask, min_fraction=0.02)  # 0.02 of 100 px: 2 px, kept at exactly 2
    expected = mask.copy()
    expected[8, 1] = False
    assert out.dtype == bool and np.array_equal(out, expected)
    assert np.array_equal(keep_large_components(mask, 0.03), mask & (np.arange(10)[:, None] < 5))
    assert not keep_large_components(mask, 0.1).any()


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_keep_large_components_matches_a_scipy_reference(seed):
    mask = np.random.default_rng(seed).random((32, 48)) > 0.6  # many blobs of many sizes
    labels, _ = ndimage.label(mask, structure=np.ones((3, 3)))
    areas = np.bincount(labels.ravel())
    expected = (areas >= 0.004 * mask.size)[labels] & mask  # 0.004 of 1536 px: 6.1 px
    out = keep_large_components(mask.astype(np.uint8), 0.004)
    assert 0 < out.sum() < mask.sum()
    assert np.array_equal(out, expected)


def test_disk_is_the_elliptic_structuring_element():
    assert np.array_equal(disk(1), [[0, 1, 0], [1, 1, 1], [0, 1, 0]])
    assert np.array_equal(disk(2), [[0, 0, 1, 0, 0],
                                    [1, 1, 1, 1, 1],
                                    [1, 1, 1, 1, 1],
                                    [1, 1, 1, 1, 1],
                                    [0, 0, 1, 0, 0]])


# --- given and auto ---------------------------------------------------------------------------------


def test_given_returns_the_clip_alpha_clipped_to_unit_range():
    frames, truth = moving_object_clip(num_frames=3)
    raw = truth * 1.2 - 0.1
    matte = GivenAlpha()(VideoClip(frames=frames, alpha=raw))
    assert matte.alpha.dtype == np.float32 and matte.backend.name == "given"
    assert np.allclose(matte.alpha, np.clip(raw, 0, 1))


def test_given_without_alpha_raises_input_error():
    frames, _ = moving_object_clip(num_frames=3)
    with pytest.raises(InputError, match="source has no alpha channel or mask folder"):
        GivenAlpha()(VideoClip(frames=frames))


def test_auto_uses_given_alpha_when_the_clip_has_one():
    frames, truth = moving_object_clip(num_frames=3)
    matte = load_matting("auto")(VideoClip(frames=frames, alpha=truth))
    assert matte.backend.name == "given" and np.array_equal(matte.alpha, truth)


def test_auto_falls_back_to_bgsub_without_alpha():
    frames, truth = moving_object_clip()
    matte = load_matting("auto")(VideoClip(frames=frames))
    assert matte.backend.name == "bgsub" and alpha_iou(matte.alpha, truth) >= 0.9


# --- load_matting -----------------------------------------------------------------------------------


@pytest.mark.parametrize(("spec", "backend_class"), [
    ("auto", AutoMatting), ("given", GivenAlpha), ("bgsub", BackgroundSubtraction), ("chroma", ChromaKey),
])
def test_load_matting_builds_each_known_backend(spec, backend_class):
    assert isinstance(load_matting(spec), backend_class)


@pytest.mark.parametrize(("spec", "key"), [("chroma:green", "green"), ("chroma:blue", "blue")])
def test_load_matting_passes_the_chroma_key(spec, key):
    assert load_matting(spec).key == key


@pytest.mark.parametrize("spec", ["magic", "bgsub:fast", "chroma:red"])
def test_load_matting_rejects_a_bad_spec_naming_it(spec):
    with pytest.raises(ConfigError, match=spec):
        load_matting(spec)


def test_load_matting_lists_the_known_specs_for_an_unknown_one():
    with pytest.raises(ConfigError, match="known: auto, given, bgsub, chroma, chroma:green, chroma:blue"):
        load_matting("magic")


def test_load_matting_names_the_sam2_configs_for_an_unknown_one():
    with pytest.raises(ConfigError, match="'sam2:tiny'.*unknown sam2 config 'tiny'.*sam2.1_hiera_t"):
        load_matting("sam2:tiny")


# --- guided filter and soft edge --------------------------------------------------------------------


@pytest.mark.parametrize("guide_shape", [(32, 32, 3), (32, 32)])
def test_guided_filter_keeps_a_constant_source_constant(guide_shape):
    guide = np.random.default_rng(0).integers(0, 256, guide_shape, dtype=np.uint8)
    out = guided_filter(guide, np.full((32, 32), 0.3, np.float32), radius=3, eps=1e-3)
    assert out.shape == (32, 32) and out.dtype == np.float32
    assert np.allclose(out, 0.3, atol=1e-5)


def test_guided_filter_snaps_a_feathered_edge_to_the_guide_edge():
    guide = np.zeros((16, 32, 3), np.uint8)
    guide[:, 16:] = (200, 120, 40)
    ramp = np.clip((np.arange(32) - 15.5) / 8 + 0.5, 0, 1).astype(np.float32)  # 0 -> 1 over 8 px
    out = guided_filter(guide, np.tile(ramp, (16, 1)), radius=4, eps=1e-3)
    assert ramp[16] - ramp[15] == pytest.approx(0.125)
    assert np.all(out[:, 16] - out[:, 15] > 0.5)  # the step now sits on the guide's colour edge


def test_soft_edge_stays_in_range_and_crisp_outside_the_band():
    frames, truth = moving_object_clip(num_frames=3)
    hard = truth >= 0.5
    alpha = soft_edge(frames, hard, radius=3, eps=1e-3, band=2)
    assert alpha.dtype == np.float32 and alpha.min() >= 0.0 and alpha.max() <= 1.0
    for t in range(3):
        to_boundary = np.maximum(ndimage.distance_transform_edt(hard[t]), ndimage.distance_transform_edt(~hard[t]))
        far = to_boundary > 3
        assert far.sum() > 0.5 * far.size
        assert np.array_equal(alpha[t][far], hard[t][far].astype(np.float32))
    assert ((alpha > 0) & (alpha < 1)).any()


def test_soft_edge_leaves_an_empty_mask_empty():
    frames, _ = moving_object_clip(num_frames=3)
    assert soft_edge(frames, np.zeros((3, 64, 64), bool)).max() == 0.0


# --- metrics ----------------------------------------------------------------------------------------


def test_metrics_of_identical_alphas():
    _, truth = moving_object_clip(num_frames=3)
    assert alpha_iou(truth, truth) == 1.0 and alpha_mae(truth, truth) == 0.0


def test_iou_of_disjoint_masks_is_zero():
    pred, gt = np.zeros((4, 4), np.float32), np.zeros((4, 4), np.float32)
    pred[:, :2], gt[:, 2:] = 1.0, 1.0
    assert alpha_iou(pred, gt) == 0.0


def test_iou_of_two_empty_masks_is_one():
    assert alpha_iou(np.zeros((2, 4, 4)), np.zeros((2, 4, 4))) == 1.0


def test_metrics_of_a_known_partial_overlap():
    pred, gt = np.zeros((4, 4), np.float32), np.zeros((4, 4), np.float32)
    pred[:, 0:2], gt[:, 1:3] = 1.0, 0.8  # overlap 4 px, union 12 px
    assert alpha_iou(pred, gt) == pytest.approx(1 / 3)
    assert alpha_mae(pred, gt) == pytest.approx((4 * 1.0 + 4 * 0.2 + 4 * 0.8) / 16)


def test_iou_is_averaged_over_frames():
    pred, gt = np.zeros((2, 4, 4), np.float32), np.zeros((2, 4, 4), np.float32)
    pred[0, 0, 0] = gt[0, 0, 0] = 1.0  # frame 0: a 1-px object found exactly
    gt[1] = 1.0  # frame 1: a 16-px object missed
    assert alpha_iou(pred, gt) == pytest.approx(0.5)  # per frame 1 and 0, not the pooled 1 / 17


def test_fill_holes_fills_what_scipy_fills():
    rng = np.random.default_rng(7)
    for case in range(200):
        height, width = rng.integers(1, 48, 2)
        mask = rng.random((height, width)) < rng.uniform(0.1, 0.9)
        if case % 2:
            mask = ndimage.binary_dilation(mask)  # larger shapes with real holes
        for given in (mask, mask.astype(np.uint8)):
            assert np.array_equal(fill_holes(given), ndimage.binary_fill_holes(given))
    ring = np.zeros((9, 9), bool)
    ring[2:7, 2:7], ring[3:6, 3:6] = True, False
    assert fill_holes(ring)[4, 4] and not fill_holes(ring)[0, 0]
    assert fill_holes(np.ones((3, 3), bool)).all() and not fill_holes(np.zeros((3, 3), bool)).any()
