"""The demo source: its layout, determinism, exact ground-truth alpha and refusal to overwrite."""

from __future__ import annotations

import json
import re
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image

from datagen.demo import FPS, FRAME_COUNT, HEIGHT, WIDTH, DemoManifest, make_demo_source
from datagen.matting.camera import MotionEstimator
from manifests.errors import ConfigError
from manifests.video_io import read_video, video_info


@pytest.fixture(scope="session")
def demo(tmp_path_factory: pytest.TempPathFactory) -> DemoManifest:
    return make_demo_source(tmp_path_factory.mktemp("demo") / "out", seed=0)


def _ground_truth(folder: Path) -> np.ndarray:
    return np.stack([np.asarray(Image.open(path)) for path in sorted(folder.glob("[0-9]*.png"))])


def _layers(truth: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The true alpha (T, H, W, 1) in 0..1, straight foreground colour and clean background (T, H, W, 3), float."""
    alpha = _ground_truth(truth)[..., None].astype(np.float32) / 255.0
    foreground = _ground_truth(truth / "foreground").astype(np.float32)
    if (truth / "background").is_dir():
        background = _ground_truth(truth / "background").astype(np.float32)
    else:  # a static camera: one clean plate
        still = np.asarray(Image.open(truth / "background.png")).astype(np.float32)
        background = np.repeat(still[None], len(alpha), axis=0)
    return alpha, foreground, background


def _json(path: Path) -> dict:
    return json.loads(path.read_text(encoding="utf-8"))


def _files(root: Path) -> dict[str, bytes]:
    """Every PNG and JSON file under `root`, by relative path."""
    paths = [p for p in sorted(root.rglob("*")) if p.suffix in (".png", ".json")]
    return {str(p.relative_to(root)): p.read_bytes() for p in paths}


def test_layout_and_counts(demo: DemoManifest) -> None:
    assert demo.counts == {"foreground_videos": 6, "moving_camera_videos": 3, "background_videos": 4,
                           "layered_images": 6, "ground_truth_frames": 6 * 48}
    assert (demo.frame_count, demo.fps) == (48, 24.0)
    frame_names = [f"{i:05d}.png" for i in range(FRAME_COUNT)]
    for video, truth, camera in zip(demo.foreground_videos, demo.ground_truth, demo.cameras, strict=True):
        assert re.fullmatch(r"fg_\d\d_[a-z_]+\.mp4", video.name) and video.parent == demo.root / "foreground"
        assert video_info(video) == (FRAME_COUNT, FPS, HEIGHT, WIDTH)
        sidecar = _json(video.with_suffix(".json"))
        assert sidecar["role"] == "foreground" and len(sidecar["foreground"]) > 10
        assert truth == demo.root / "ground_truth" / video.stem
        plate = ["background"] if camera == "moving" else ["background.png"]
        assert sorted(p.name for p in truth.iterdir()) == sorted([*frame_names, *plate, "foreground"])
        layers = ["foreground", "background"] if camera == "moving" else ["foreground"]
        assert all([p.name for p in sorted((truth / layer).iterdir())] == frame_names for layer in layers)
        with Image.open(truth / "00000.png") as first, Image.open(truth / "foreground" / "00000.png") as colour:
            assert (first.mode, first.size, colour.mode, colour.size) == ("L", (WIDTH, HEIGHT), "RGB", (WIDTH, HEIGHT))
    for video in demo.background_videos:
        assert re.fullmatch(r"bg_\d\d_[a-z_]+\.mp4", video.name) and video.parent == demo.root / "backgrounds"
        assert video_info(video) == (FRAME_COUNT, FPS, HEIGHT, WIDTH)
        sidecar = _json(video.with_suffix(".json"))
        assert sidecar["role"] == "background" and len(sidecar["background"]) > 10
    for folder in demo.layered_images:
        assert re.fullmatch(r"li_\d\d_[a-z_]+", folder.name) and folder.parent == demo.root / "layered"
        names = sorted(p.name for p in folder.iterdir())
        assert names == ["background.png", "captions.json", "foreground.png"]
    assert len({p.name for p in demo.foreground_videos}) == 6


def test_same_seed_gives_identical_files_and_frames(demo: DemoManifest, tmp_path: Path) -> None:
    again = make_demo_source(tmp_path / "again", seed=0)
    assert _files(again.root) == _files(demo.root)
    for first, second in ((demo.foreground_videos[1], again.foreground_videos[1]),
                          (demo.background_videos[0], again.background_videos[0])):
        assert np.array_equal(read_video(first), read_video(second))


def test_another_seed_changes_placements_and_paths(demo: DemoManifest, tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()  # an existing but empty folder is fine
    other = make_demo_source(tmp_path / "empty", seed=1)
    assert [p.name for p in other.foreground_videos] == [p.name for p in demo.foreground_videos]
    for ours, theirs in zip(demo.ground_truth, other.ground_truth, strict=True):
        assert not np.array_equal(_ground_truth(ours), _ground_truth(theirs))
    for ours, theirs in zip(demo.layered_images, other.layered_images, strict=True):
        assert (ours / "foreground.png").read_bytes() != (theirs / "foreground.png").read_bytes()
    assert not np.array_equal(read_video(demo.background_videos[0], indices=[0]),
                              read_video(other.background_videos[0], indices=[0]))


def test_ground_truth_is_a_soft_moving_cut_out(demo: DemoManifest) -> None:
    for truth in demo.ground_truth:
        alpha = _ground_truth(truth).astype(np.float64) / 255.0
        assert alpha.shape == (FRAME_COUNT, HEIGHT, WIDTH)
        for frame in alpha[::8]:
            rows, cols = np.nonzero(frame)
            box_area = (np.ptp(rows) + 1) * (np.ptp(cols) + 1)
            assert frame.sum() / box_area < 0.9, f"{truth.name}: the cut-out looks rectangular"
            assert 0.02 < frame.mean() < 0.4, truth.name
        soft = (alpha > 0) & (alpha < 1)
        assert soft.sum() > 20 * FRAME_COUNT, f"{truth.name}: edges are not anti-aliased"
        border = np.concatenate([alpha[:, 0], alpha[:, -1], alpha[:, :, 0], alpha[:, :, -1]], axis=1)
        assert border.max() == 0, f"{truth.name}: the object touches the frame border"
        # A temporal-median background needs every pixel uncovered for most of the clip.
        assert (alpha > 0).mean(axis=0).max() <= 0.45, f"{truth.name}: the object does not move far enough"
        assert np.abs(alpha[1:] - alpha[:-1]).sum(axis=(1, 2)).min() > 100, f"{truth.name}: the object stops"


def test_ground_truth_recomposes_the_video(demo: DemoManifest) -> None:
    """alpha * foreground + (1 - alpha) * background is the frame, up to sensor noise and H.264 (about 5 levels on
    the finest texture); the background alone is far off where the alpha is 255, and a moving camera's background
    of another frame is far off everywhere."""
    for video, truth, camera in zip(demo.foreground_videos, demo.ground_truth, demo.cameras, strict=True):
        frames = read_video(video).astype(np.float32)
        alpha, foreground, background = _layers(truth)
        assert np.all(foreground[alpha[..., 0] == 0] == 0), f"{video.name}: colour where there is no object"
        error = float(np.abs(frames - (alpha * foreground + (1 - alpha) * background)).mean())
        assert error < 6.0, f"{video.name}: the layers do not recompose the frame ({error:.2f})"
        covered = np.broadcast_to(alpha == 1, frames.shape)
        assert np.abs(frames - background)[covered].mean() > 25.0, f"{video.name}: the object is not where its alpha is"
        clear = np.broadcast_to(alpha == 0, frames.shape)
        if camera == "static":
            assert np.array_equal(background[0], background[-1])
        else:
            shifted = np.abs(frames[4:] - background[:-4])[clear[4:]].mean()
            assert shifted > 3 * error, f"{video.name}: the background does not move with the camera"


def test_moving_cameras_pan_and_shake_like_the_hand_held_davis_clips(demo: DemoManifest) -> None:
    """DAVIS blackswan, dance-twirl and car-shadow (whole clips at 854x480, 24 fps) measured pan 0.8-1.4% of the
    width per frame and shake 0.1-0.5% with `datagen.matting.camera`; static cameras stay static."""
    for video, camera in zip(demo.foreground_videos, demo.cameras, strict=True):
        frames = read_video(video)
        if camera == "static":
            assert MotionEstimator().static(frames, 1.0) is not None, video.name
            continue
        motion = MotionEstimator()(frames)
        assert 0.007 <= motion.pan_px / WIDTH <= 0.014, f"{video.name}: pan {motion.pan_px:.2f} px per frame"
        assert 0.001 <= motion.shake_px / WIDTH <= 0.006, f"{video.name}: shake {motion.shake_px:.2f} px"


def test_background_videos_pan_slowly(demo: DemoManifest) -> None:
    for video in demo.background_videos:
        frames = read_video(video).astype(np.float32).mean(axis=3)
        window = cv2.createHanningWindow((WIDTH, HEIGHT), cv2.CV_32F)
        (dx, dy), _ = cv2.phaseCorrelate(frames[0], frames[-1], window)
        speed = float(np.hypot(dx, dy)) / (FRAME_COUNT - 1)
        assert 0.45 < speed < 1.05, f"{video.name}: pans {speed:.2f} px per frame"


def test_layered_images(demo: DemoManifest) -> None:
    for folder in demo.layered_images:
        with Image.open(folder / "foreground.png") as fg, Image.open(folder / "background.png") as bg:
            assert (fg.mode, bg.mode) == ("RGBA", "RGB")
            assert fg.size == bg.size == (WIDTH, HEIGHT)
            alpha = np.asarray(fg)[..., 3].astype(np.float64) / 255.0
        assert 0.08 <= alpha.mean() <= 0.5, f"{folder.name}: coverage {alpha.mean():.2f}"
        assert ((alpha > 0) & (alpha < 1)).sum() > 100, f"{folder.name}: hard edges"
        captions = _json(folder / "captions.json")
        assert set(captions) == {"foreground", "background", "blended"}
        assert all(isinstance(text, str) and len(text) > 5 for text in captions.values())
        assert captions["blended"] not in (captions["foreground"], captions["background"])


def test_refuses_a_non_empty_output(demo: DemoManifest, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=re.escape(str(demo.root))):
        make_demo_source(demo.root, seed=0)
    occupied = tmp_path / "occupied"
    occupied.mkdir()
    (occupied / "notes.txt").write_text("keep me", encoding="utf-8")
    with pytest.raises(ConfigError, match="new path"):
        make_demo_source(occupied)
    assert [p.name for p in occupied.iterdir()] == ["notes.txt"]
    with pytest.raises(ConfigError, match="seed"):
        make_demo_source(tmp_path / "fresh", seed=-1)
