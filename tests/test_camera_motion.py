"""Camera motion without weights, and bgsub through a moving camera: the estimated path, the stabilised matte and
clean plate, the refusals, the static shortcut, the `eval-layers` JSON, and the real DAVIS clips."""

from __future__ import annotations

import json
import os
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image
from skimage import data
from typer.testing import CliRunner

import cli
from datagen.config import BuildConfig
from datagen.eval_matting import evaluate_matting
from datagen.matting.bgsub import BackgroundSubtraction
from datagen.matting.camera import MotionEstimator
from datagen.video_clip import VideoClip
from manifests.errors import InputError
from manifests.metrics import alpha_iou, psnr

HEIGHT, WIDTH = 96, 128
SUPERSAMPLE = 4


def disk_alpha(cx: float, cy: float, radius: float) -> np.ndarray:
    """(HEIGHT, WIDTH) anti-aliased alpha of a disk."""
    ys = (np.arange(HEIGHT * SUPERSAMPLE) + 0.5) / SUPERSAMPLE
    xs = (np.arange(WIDTH * SUPERSAMPLE) + 0.5) / SUPERSAMPLE
    inside = np.hypot(xs[None] - cx, ys[:, None] - cy) <= radius
    return cv2.resize(inside.astype(np.float32), (WIDTH, HEIGHT), interpolation=cv2.INTER_AREA)


def camera_clip(count: int = 12, pan: tuple[float, float] = (3.0, 1.0), shake: float = 1.0, seed: int = 0,
                ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """A hand-held camera over a photo (scikit-image's coffee) with a textured disk crossing the frame.

    Returns the frames (T, H, W, 3) uint8, the disk's exact alpha (T, H, W), the clean background (T, H, W, 3) and
    the camera's offsets (T, 2): frame t shows the scene from (x, y) = offsets[t] on.
    """
    rng = np.random.default_rng(seed)
    scene = cv2.resize(data.coffee(), (300, 200), interpolation=cv2.INTER_AREA).astype(np.float32)
    texture = cv2.resize(data.astronaut()[0:200, 100:300], (WIDTH, HEIGHT)).astype(np.float32)
    steps = np.arange(count)[:, None]
    offsets = np.array([40.0, 40.0]) + steps * np.asarray(pan) + rng.normal(0, shake, (count, 2))
    frames, alphas, backgrounds = [], [], []
    for t, (x, y) in enumerate(offsets):
        view = cv2.warpAffine(scene, np.float32([[1, 0, -x], [0, 1, -y]]), (WIDTH, HEIGHT), flags=cv2.INTER_LINEAR)
        alpha = disk_alpha(20 + 88 * t / (count - 1), 48 + 10 * np.sin(t), 16)
        frame = alpha[..., None] * texture + (1 - alpha[..., None]) * view + rng.normal(0, 1.5, view.shape)
        frames.append(np.clip(np.rint(frame), 0, 255).astype(np.uint8))
        alphas.append(alpha)
        backgrounds.append(np.clip(np.rint(view), 0, 255).astype(np.uint8))
    return np.stack(frames), np.stack(alphas), np.stack(backgrounds), offsets


# --- estimating the motion ---------------------------------------------------------------------------


def test_a_panning_shaking_camera_is_estimated_to_a_fraction_of_a_pixel():
    frames, _, _, offsets = camera_clip()
    motion = MotionEstimator()(frames)
    reference = (len(frames) - 1) // 2
    # The centre of frame t shows the scene at centre + offsets[t], which the reference shows at
    # centre + offsets[t] - offsets[reference].
    truth = np.array([(WIDTH - 1) / 2, (HEIGHT - 1) / 2]) + offsets - offsets[reference]
    assert np.abs(motion.path - truth).max() < 0.3
    speed = float(np.mean(np.linalg.norm(np.diff(offsets, axis=0), axis=1)))
    assert motion.pan_px == pytest.approx(speed, abs=0.2)
    assert motion.shake_px > 0.3 and motion.residual_px < 0.3


def test_the_static_test_passes_a_locked_off_camera_and_not_a_moving_one():
    still, _, _, _ = camera_clip(pan=(0.0, 0.0), shake=0.0)
    found = MotionEstimator().static(still, 1.0)
    assert found is not None and found.extent_px < 0.2
    assert np.array_equal(found.matrices, np.broadcast_to(np.eye(3), (len(still), 3, 3)))
    moving, _, _, _ = camera_clip()
    assert MotionEstimator().static(moving, 1.0) is None


# --- bgsub through a moving camera ----------------------------------------------------------------------


def test_stabilised_bgsub_mattes_an_object_filmed_by_a_moving_camera():
    frames, truth, background, _ = camera_clip()
    matte = BackgroundSubtraction()(VideoClip(frames=frames))
    assert matte.camera["stabilised"] is True and matte.camera["pan_px"] > 2.5
    assert alpha_iou(matte.alpha, truth) >= 0.9
    # The clean plate is the background warped back to each frame: close to the true one where it shows.
    clear = truth == 0
    assert matte.background.shape == frames.shape and psnr(background[clear], matte.background[clear]) > 28


def test_a_clip_whose_motion_cannot_be_estimated_and_that_changes_everywhere_is_refused_in_one_line():
    frames = np.random.default_rng(0).integers(0, 256, (8, HEIGHT, WIDTH, 3), dtype=np.uint8)  # noise
    with pytest.raises(InputError) as refused:
        BackgroundSubtraction()(VideoClip(frames=frames))
    message = str(refused.value)
    assert message.startswith("bgsub: camera motion cannot be estimated between frames 0 and 1")
    assert "differs from a static background" in message and "\n" not in message


def test_a_clip_too_flat_to_track_falls_back_to_the_static_model():
    """Nothing to track is not a moving camera: a flat (or tiny) locked-off clip gets the static model, and the
    row says the motion could not be estimated."""
    frames = np.full((8, HEIGHT, WIDTH, 3), 120, np.uint8)
    frames[:, 10:20, 10:20] = 250  # a still square: no corners move, but too few to track
    matte = BackgroundSubtraction()(VideoClip(frames=frames))
    assert matte.alpha.max() == 0  # nothing moves against the background
    assert matte.camera["stabilised"] is False and "cannot be estimated" in matte.camera["unestimated"]


def test_a_static_clip_skips_stabilisation(monkeypatch):
    frames, truth, background, _ = camera_clip(pan=(0.0, 0.0), shake=0.0)

    def no_estimation(self, frames):
        raise AssertionError("a static clip must not be stabilised")

    monkeypatch.setattr(MotionEstimator, "__call__", no_estimation)
    matte = BackgroundSubtraction()(VideoClip(frames=frames))
    assert matte.camera["stabilised"] is False and matte.camera["extent_px"] < 1.0
    assert alpha_iou(matte.alpha, truth) >= 0.9
    assert psnr(background[truth == 0], matte.background[truth == 0]) > 35


# --- eval-layers -----------------------------------------------------------------------------------------


def write_truth_layout(root: Path) -> tuple[Path, Path]:
    """`videos/pan/NNNNN.png` (a frame folder) and `truth/pan/{NNNNN.png, background/NNNNN.png}`."""
    frames, alphas, backgrounds, _ = camera_clip()
    videos, truth = root / "videos" / "pan", root / "truth" / "pan"
    (truth / "background").mkdir(parents=True)
    videos.mkdir(parents=True)
    for t, (frame, alpha, background) in enumerate(zip(frames, alphas, backgrounds, strict=True)):
        Image.fromarray(frame).save(videos / f"{t:05d}.png")
        Image.fromarray(np.rint(alpha * 255).astype(np.uint8)).save(truth / f"{t:05d}.png")
        Image.fromarray(background).save(truth / "background" / f"{t:05d}.png")
    return videos.parent, truth.parent


@pytest.mark.parametrize("command", ["eval-layers", "eval-matting"])
def test_eval_layers_prints_the_old_and_the_new_keys(tmp_path, command):
    videos, truth = write_truth_layout(tmp_path)
    result = CliRunner().invoke(cli.app, [command, "--videos", str(videos), "--masks", str(truth), "--matting",
                                          "bgsub", "--size", f"{HEIGHT}x{WIDTH}", "--frames", "12", "--fps", "24"])
    assert result.exit_code == 0, result.output
    line = json.loads(result.output.strip().splitlines()[-1])
    assert {"backend", "size", "frames", "fps", "videos", "mean_iou", "mean_mae"} <= set(line)  # today's keys
    assert {"mean_plate_psnr_inside", "mean_plate_psnr_outside", "by_camera"} <= set(line)  # the new ones
    video = line["videos"]["pan"]
    assert {"iou", "mae", "frames", "camera", "plate_psnr_inside", "plate_psnr_outside"} <= set(video)
    assert video["iou"] >= 0.9 and video["camera"]["stabilised"] is True
    assert video["plate_psnr_outside"] > video["plate_psnr_inside"] > 15
    assert line["by_camera"] == {"stabilised": {"mean_iou": video["iou"], "mean_mae": video["mae"],
                                                "mean_plate_psnr_inside": video["plate_psnr_inside"],
                                                "mean_plate_psnr_outside": video["plate_psnr_outside"],
                                                "videos": 1}}


# --- the real DAVIS clips --------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["davis_blackswan", "davis_dance-twirl", "davis_car-shadow"])
def test_bgsub_mattes_the_hand_held_davis_clips(name):
    root = os.environ.get("LAYERFLOW_TEST_DATA")
    if not root:
        pytest.skip("LAYERFLOW_TEST_DATA is not set (CI sets it to ../shared/data)")
    videos = Path(root) / "videos"
    # Small and short, to keep the test fast: 16 frames at 12 fps (1.3 s of each clip) at 120x214.
    config = BuildConfig(frames=16, fps=12.0, size=(120, 214))
    result = evaluate_matting(str(videos / name), str(videos), "bgsub", config)
    assert "errors" not in result, result.get("errors")
    scores = result["videos"][name]
    assert scores["camera"]["stabilised"] is True
    assert scores["iou"] >= 0.5, scores
