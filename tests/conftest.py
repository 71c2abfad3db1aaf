"""Shared fixtures: tiny synthetic sources written on the fly (a moving textured disk, layered images)."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image

from datagen.config import BuildConfig
from manifests.video_io import write_rgb_video

TEST_DATA_ENV = "LAYERFLOW_TEST_DATA"


def shared_data() -> Path:
    """The real test data folder, or skip: it is not part of the repository."""
    value = os.environ.get(TEST_DATA_ENV)
    if not value:
        pytest.skip(f"{TEST_DATA_ENV} is not set (CI sets it to ../shared/data)")
    path = Path(value)
    if not path.is_dir():
        pytest.skip(f"{TEST_DATA_ENV}={value} is not a folder")
    return path


def texture(height: int, width: int, seed: int) -> np.ndarray:
    """A smooth random colour texture (bilinear blow-up of an 8x coarser random grid)."""
    rng = np.random.default_rng(seed)
    coarse = rng.integers(0, 255, (height // 8 + 2, width // 8 + 2, 3), dtype=np.uint8)
    return cv2.resize(coarse, (width, height), interpolation=cv2.INTER_LINEAR)


def moving_disk(num_frames: int = 24, height: int = 64, width: int = 96, seed: int = 0):
    """Frames of a textured disk moving left to right over a static texture, and its exact alpha."""
    background = texture(height, width, seed)
    object_texture = 255 - texture(height, width, seed + 1)
    yy, xx = np.mgrid[:height, :width]
    radius = height / 5
    frames, alphas = [], []
    for t in range(num_frames):
        cx = radius + 1 + (width - 2 * radius - 2) * t / max(1, num_frames - 1)
        cy = height / 2
        alpha = np.clip(radius - np.hypot(xx - cx, yy - cy) + 0.5, 0.0, 1.0).astype(np.float32)
        frame = alpha[..., None] * object_texture + (1 - alpha[..., None]) * background
        frames.append(np.rint(frame).astype(np.uint8))
        alphas.append(alpha)
    return np.stack(frames), np.stack(alphas)


def write_video(path: Path, num_frames: int = 24, height: int = 64, width: int = 96, seed: int = 0,
                fps: float = 24.0) -> Path:
    frames, _ = moving_disk(num_frames, height, width, seed)
    write_rgb_video(path, frames, fps)
    return path


def write_rgba(path: Path, height: int = 48, width: int = 48, seed: int = 0, alpha_value: float | None = None):
    rgb = texture(height, width, seed)
    yy, xx = np.mgrid[:height, :width]
    alpha = np.clip(height / 3 - np.hypot(xx - width / 2, yy - height / 2), 0, 1)
    if alpha_value is not None:
        alpha = np.full((height, width), alpha_value)
    rgba = np.dstack([rgb, np.rint(alpha * 255).astype(np.uint8)])
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(rgba, "RGBA").save(path)
    return path


def write_layered(folder: Path, seed: int = 0, captions: dict | None = None) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    write_rgba(folder / "foreground.png", 64, 96, seed)
    Image.fromarray(texture(64, 96, seed + 7)).save(folder / "background.png")
    if captions:
        (folder / "captions.json").write_text(json.dumps(captions))
    return folder


@pytest.fixture(scope="session", autouse=True)
def no_real_model_caches(tmp_path_factory: pytest.TempPathFactory):
    """No test reads or fills the user's model caches or reaches the real hub: HF_HOME, the project cache and
    rembg's homes point into a temporary folder, and the hub is offline unless a test points it at a stand-in
    server (tests/hub_server.py)."""
    root = tmp_path_factory.mktemp("model-caches")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("HF_HUB_OFFLINE", "1")
        patch.setenv("HF_HOME", str(root / "hf"))
        patch.setenv("HF_HUB_CACHE", str(root / "hf" / "hub"))
        patch.setenv("LAYERFLOW_CACHE_DIR", str(root / "layerflow"))
        patch.setenv("U2NET_HOME", str(root / "u2net"))
        patch.delenv("REMBG_HOME", raising=False)
        from huggingface_hub import constants  # it reads its environment once, at import

        patch.setattr(constants, "HF_HUB_OFFLINE", True)
        patch.setattr(constants, "HF_HUB_CACHE", str(root / "hf" / "hub"))
        patch.setattr(constants, "HF_HOME", str(root / "hf"))
        yield


@pytest.fixture(autouse=True)
def ray_left_as_found():
    """What one test does to Ray in this process does not reach the next: a Ray it left running is shut down, the
    `RAY_*` variables Ray sets in the driver (its auth mode, ...) are restored, and Ray Data's process-wide context is
    replaced by a fresh one."""
    before = {key: value for key, value in os.environ.items() if key.startswith("RAY_")}
    yield
    ray = sys.modules.get("ray")
    if ray is not None and ray.is_initialized():
        ray.shutdown()
    for key in [key for key in os.environ if key.startswith("RAY_") and key not in before]:
        del os.environ[key]
    os.environ.update(before)
    if "ray.data" in sys.modules:
        sys.modules["ray.data"].DataContext._set_current(sys.modules["ray.data"].DataContext())


@pytest.fixture
def small_config() -> BuildConfig:
    return BuildConfig(frames=4, fps=8.0, size=(32, 48), matting="auto", seed=0)


@pytest.fixture
def tiny_source(tmp_path: Path) -> Path:
    """Two foreground videos (with sidecars), one background video, one layered image, one RGBA image."""
    root = tmp_path / "src"
    write_video(root / "fg_a.mp4", seed=1)
    (root / "fg_a.json").write_text(json.dumps({"foreground": "a red disk"}))
    write_video(root / "fg_b.mp4", seed=2)
    (root / "fg_b.txt").write_text("a spotted ball")
    write_video(root / "plates" / "bg_c.mp4", seed=3)
    (root / "plates" / "bg_c.json").write_text(json.dumps({"role": "background", "background": "a wall"}))
    write_layered(root / "layered" / "one", seed=4,
                  captions={"foreground": "a coin", "background": "grass", "blended": "a coin on grass"})
    write_rgba(root / "stickers" / "star.png", seed=5)
    Image.fromarray(texture(40, 40, 9)).save(root / "stickers" / "paper.jpg")
    return root


# The smallest `toy` model the tests train and sample (`preset("toy", **TINY)`): seconds per step on a CPU.
TINY = {"depth": 2, "heads": 2, "head_dim": 8, "height": 16, "width": 16, "frames": 2, "text_tokens": 8,
        "tiny_t5_d_model": 16, "tiny_t5_layers": 1, "motion_rank": 2, "content_rank": 4, "patch_size": 4,
        "time_embed_dim": 16}

TINY_CLIP_ARCH = "layerflow-test-tiny"
TINY_CLIP_CONFIG = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "patch_size": 16, "head_width": 16},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1},  # BPE vocab
}


@pytest.fixture(scope="session")
def tiny_clip(tmp_path_factory: pytest.TempPathFactory) -> str:
    """`openclip:layerflow-test-tiny:<file>`: a registered tiny open_clip architecture and its seeded random weights,
    loaded by the same code path as real weights (no download)."""
    import open_clip
    import torch

    folder = tmp_path_factory.mktemp("clip")
    config = folder / f"{TINY_CLIP_ARCH}.json"
    config.write_text(json.dumps(TINY_CLIP_CONFIG))
    open_clip.add_model_config(config)
    torch.manual_seed(0)
    weights = folder / "tiny.pt"
    torch.save(open_clip.create_model(TINY_CLIP_ARCH).state_dict(), weights)
    return f"openclip:{TINY_CLIP_ARCH}:{weights}"
