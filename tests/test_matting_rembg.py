"""The rembg backend on tiny random networks exported to ONNX here: never a download, never a real checkpoint."""

from __future__ import annotations

import hashlib
import logging
import shutil
from pathlib import Path

import cv2
import numpy as np
import onnxruntime
import pooch
import pytest
from conftest import moving_disk
from fake_models import export_saliency_onnx as export  # also imported from here by other test modules
from PIL import Image

from datagen.matting import auto_learned_spec, load_matting, rembg_backend, uses_gpu
from datagen.matting.refine import soft_edge
from datagen.matting.rembg_backend import CUDA, MODELS, RembgMatting
from datagen.video_clip import VideoClip
from manifests.errors import ConfigError
from manifests.models import ModelUnavailable

NUM_FRAMES, HEIGHT, WIDTH = 3, 40, 56  # not square, so a swapped height and width would show
CPU_ONLY = "CPUExecutionProvider"


@pytest.fixture(autouse=True)
def no_downloads(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """Every rembg download goes through pooch: make it fail, and point rembg's cache at an empty folder."""
    def refuse(*args, **kwargs):
        raise AssertionError(f"rembg tried to download {args[:1]}")

    monkeypatch.setattr(pooch, "retrieve", refuse)
    home = tmp_path / "u2net_home"
    home.mkdir()
    monkeypatch.setenv("U2NET_HOME", str(home))
    return home


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("onnx")
    return {
        "dynamic": export(folder / "tiny.onnx"),
        "fixed": export(folder / "tiny_fixed.onnx", dynamic_batch=False),
        "small": export(folder / "tiny_64.onnx", size=64),
    }


@pytest.fixture(scope="module")
def frames() -> np.ndarray:
    return moving_disk(NUM_FRAMES, HEIGHT, WIDTH, seed=3)[0]


class CountingSession:
    """Wraps an onnxruntime session and records the batch size of every `run`."""

    def __init__(self, session) -> None:
        self.session, self.batches = session, []

    def __getattr__(self, name: str):
        return getattr(self.session, name)

    def run(self, output_names, feeds):
        self.batches.append(next(iter(feeds.values())).shape[0])
        return self.session.run(output_names, feeds)


# --- running ----------------------------------------------------------------------------------------


def test_custom_onnx_mattes_a_clip_and_names_itself(models, frames):
    backend = load_matting(f"rembg:{models['dynamic']}")
    matte = backend(VideoClip(frames=frames))
    assert matte.alpha.shape == (NUM_FRAMES, HEIGHT, WIDTH) and matte.alpha.dtype == np.float32
    assert matte.alpha.min() == 0.0 and matte.alpha.max() == 1.0
    assert 0.0 < matte.alpha.mean() < 1.0
    assert matte.backend.name == "rembg:tiny.onnx" and matte.backend.model_id == "tiny.onnx"
    assert matte.backend.weights_sha256 == hashlib.sha256(models["dynamic"].read_bytes()).hexdigest()
    assert matte.backend.device == "cpu"


def test_matting_is_deterministic(models, frames):
    first = load_matting(f"rembg:{models['dynamic']}")(VideoClip(frames=frames)).alpha
    second = load_matting(f"rembg:{models['dynamic']}")(VideoClip(frames=frames)).alpha
    np.testing.assert_array_equal(first, second)


def test_refine_off_returns_the_bilinear_upsampled_network_mask(models, frames):
    backend = RembgMatting(model=str(models["dynamic"]), refine=False)
    small = backend.network_masks(frames)
    expected = np.stack([cv2.resize(m, (WIDTH, HEIGHT), interpolation=cv2.INTER_LINEAR) for m in small])
    np.testing.assert_allclose(backend(VideoClip(frames=frames)).alpha, np.clip(expected, 0, 1), atol=1e-6)


def test_refine_on_soft_edges_the_network_mask(models, frames):
    soft = RembgMatting(model=str(models["dynamic"]), refine=False)(VideoClip(frames=frames)).alpha
    refined = RembgMatting(model=str(models["dynamic"]))(VideoClip(frames=frames)).alpha
    np.testing.assert_array_equal(refined, soft_edge(frames, soft, radius=4, eps=1e-3))
    # Away from the 0.5 contour the alpha is exactly 0 or 1, where the raw network mask is mostly in between.
    assert np.isin(refined, (0.0, 1.0)).mean() > np.isin(soft, (0.0, 1.0)).mean() + 0.3


# --- agreement with rembg's own sessions --------------------------------------------------------------


def rembg_masks(session, frames: np.ndarray) -> np.ndarray:
    """(T, H, W) uint8: rembg's own `predict`, one frame at a time."""
    return np.stack([np.asarray(session.predict(Image.fromarray(frame))[0]) for frame in frames])


def as_rembg_output(masks: np.ndarray, height: int, width: int) -> np.ndarray:
    """Our (T, S, S) network masks through rembg's last step: uint8, then a LANCZOS resize to the frame."""
    return np.stack([
        np.asarray(Image.fromarray((m * 255).astype(np.uint8)).resize((width, height), Image.Resampling.LANCZOS))
        for m in masks
    ])


def test_batched_custom_model_agrees_with_rembg_u2net_custom(models, frames, no_downloads):
    from rembg import new_session

    path = Path(shutil.copy(models["dynamic"], no_downloads / "tiny.onnx"))  # rembg reads custom models only there
    theirs = rembg_masks(new_session("u2net_custom", model_path=str(path), providers=[CPU_ONLY]), frames)
    ours = RembgMatting(model=str(path)).network_masks(frames)
    diff = np.abs(as_rembg_output(ours, HEIGHT, WIDTH).astype(int) - theirs)
    assert diff.max() <= 1  # one uint8 level: batched and single-image convolutions round differently



# One model per preprocessing family: a tiny network under the model's name in the cache stands in for it.
@pytest.mark.parametrize("name", ["u2net", "isnet-general-use", "isnet-anime", "bria-rmbg", "birefnet-general"])
def test_batched_named_model_agrees_with_rembg_session(name, frames, no_downloads):
    from rembg import new_session

    export(no_downloads / f"{name}.onnx", size=MODELS[name].size)
    theirs = rembg_masks(new_session(name, providers=[CPU_ONLY]), frames)
    backend = load_matting(f"rembg:{name}")
    ours = backend.network_masks(frames)
    assert backend.info.name == f"rembg:{name}" and backend.info.model_id == name
    assert np.abs(as_rembg_output(ours, HEIGHT, WIDTH).astype(int) - theirs).max() <= 1


# --- batching ------------------------------------------------------------------------------------------


def test_dynamic_batch_runs_the_clip_in_one_call_and_fixed_batch_frame_by_frame(models, frames):
    dynamic, fixed = RembgMatting(model=str(models["dynamic"])), RembgMatting(model=str(models["fixed"]))
    assert dynamic.dynamic_batch and not fixed.dynamic_batch
    dynamic.session, fixed.session = CountingSession(dynamic.session), CountingSession(fixed.session)
    batched, single = dynamic.network_masks(frames), fixed.network_masks(frames)
    assert dynamic.session.batches == [NUM_FRAMES] and fixed.session.batches == [1] * NUM_FRAMES
    np.testing.assert_allclose(batched, single, atol=1e-5)


def test_max_batch_splits_a_long_clip(models):
    clip_frames = moving_disk(5, HEIGHT, WIDTH)[0]
    backend = RembgMatting(model=str(models["dynamic"]), max_batch=2)
    backend.session = CountingSession(backend.session)
    assert backend.network_masks(clip_frames).shape == (5, 320, 320)
    assert backend.session.batches == [2, 2, 1]


# --- configuration errors -------------------------------------------------------------------------------


@pytest.mark.skipif(CUDA in onnxruntime.get_available_providers(), reason="this onnxruntime offers CUDA")
def test_cuda_without_a_cuda_onnxruntime_is_a_one_line_config_error(models):
    with pytest.raises(ConfigError, match="CUDAExecutionProvider") as error:
        RembgMatting(model=str(models["dynamic"]), device="cuda")
    message = str(error.value)
    assert "\n" not in message and "onnxruntime-gpu" in message and "device cpu" in message


@pytest.mark.filterwarnings("ignore:Specified provider")  # onnxruntime's own note on the fallback
def test_cuda_that_the_session_cannot_load_is_a_config_error(models, monkeypatch):
    # A listed provider whose libraries fail to load: onnxruntime then quietly builds a CPU session.
    monkeypatch.setattr(onnxruntime, "get_available_providers", lambda: [CUDA, CPU_ONLY])
    with pytest.raises(ConfigError, match="could not load it") as error:
        RembgMatting(model=str(models["dynamic"]), device="cuda")
    assert "\n" not in str(error.value)


@pytest.mark.filterwarnings("ignore:Specified provider")
def test_auto_reports_the_cpu_when_cuda_cannot_load(models, monkeypatch, caplog):
    monkeypatch.setattr(onnxruntime, "get_available_providers", lambda: [CUDA, CPU_ONLY])
    with caplog.at_level(logging.WARNING):
        backend = RembgMatting(model=str(models["dynamic"]), device="auto")
    assert backend.info.device == "cpu" and "running on the CPU" in caplog.text


def test_unknown_model_name_lists_the_known_ones():
    with pytest.raises(ConfigError, match="rembg:u2net-xl.*unknown rembg model") as error:
        load_matting("rembg:u2net-xl")
    assert "isnet-general-use" in str(error.value) and "birefnet-general" in str(error.value)


def test_missing_weights_offline_name_the_fetch_command_and_rembg_never_downloads(no_downloads):
    with pytest.raises(ModelUnavailable, match="not in the local cache") as error:
        load_matting("rembg:isnet-general-use")  # HF_HUB_OFFLINE=1 (conftest): the registry may not fetch either
    message = str(error.value)
    assert "`layerflow-data models fetch rembg:isnet-general-use`" in message and "\n" not in message


def test_auto_uses_the_best_cached_rembg_model_and_given_alpha_first(no_downloads, frames):
    assert auto_learned_spec() is None  # an empty cache: auto stays weight-free
    assert load_matting("auto")(VideoClip(frames=frames)).backend.name == "bgsub"
    export(no_downloads / "u2netp.onnx")
    export(no_downloads / "u2net.onnx", seed=1)  # both cached: u2net ranks above u2netp
    assert auto_learned_spec() == "rembg:u2net" and uses_gpu("auto")
    auto = load_matting("auto", "cpu")
    matte = auto(VideoClip(frames=frames))
    assert matte.backend.name == "rembg:u2net" and matte.backend.device == "cpu"
    assert matte.backend.weights_sha256 == hashlib.sha256((no_downloads / "u2net.onnx").read_bytes()).hexdigest()
    alpha = np.zeros(frames.shape[:3], np.float32)
    assert auto(VideoClip(frames=frames, alpha=alpha)).backend.name == "given"  # a clip's own alpha wins


def test_auto_without_any_rembg_cache_folder_does_not_import_rembg(monkeypatch, tmp_path):
    for name in ("U2NET_HOME", "REMBG_HOME", "XDG_DATA_HOME"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))  # ~/.rembg and ~/.u2net do not exist
    monkeypatch.setattr(rembg_backend, "cached_model", lambda model: pytest.fail("rembg was consulted"))
    assert auto_learned_spec() is None and not uses_gpu("auto")


def test_missing_model_file_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_matting(f"rembg:{tmp_path / 'absent.onnx'}")


def test_input_size_other_than_the_preprocessing_is_a_config_error(models):
    with pytest.raises(ConfigError, match="64x64 images.*320x320"):
        RembgMatting(model=str(models["small"]))
