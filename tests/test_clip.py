"""CLIP scores through the real open_clip loading path, with a tiny random model saved to a temp file; no network."""

from __future__ import annotations

import hashlib
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import open_clip
import open_clip.pretrained
import pytest
import torch
from conftest import TINY_CLIP_ARCH
from huggingface_hub import constants as hf_constants

from filters.clip import (
    DEFAULT_CLIP,
    ClipScorer,
    ClipSpec,
    ClipUnavailable,
    clip_scores,
    evenly_spaced,
    resolve_weights,
)
from manifests.errors import ConfigError
from manifests.layers import Layer
from manifests.metrics import on_grey
from manifests.models import REGISTRY, Group

CAPTIONS = {"foreground": "a red ball", "background": "a brick wall", "blended": "a red ball before a brick wall"}


@pytest.fixture(scope="module")
def tiny_spec(tiny_clip: str) -> str:
    return tiny_clip


@pytest.fixture(scope="module")
def scorer(tiny_spec: str) -> ClipScorer:
    spec = ClipSpec.parse(tiny_spec)
    return ClipScorer(spec.arch, resolve_weights(spec, allow_download=False))


@pytest.fixture
def no_network(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> list[str]:
    """Empty caches, and every way open_clip could reach the network records the attempt and fails."""
    calls: list[str] = []

    def refuse(name: str):
        def call(*args, **kwargs):
            calls.append(name)
            raise OSError(f"network blocked in tests ({name})")
        return call

    monkeypatch.setattr(hf_constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setenv("HOME", str(tmp_path / "home"))  # open_clip's URL cache is ~/.cache/clip
    monkeypatch.setattr(socket.socket, "connect", refuse("socket.connect"))
    monkeypatch.setattr(open_clip.pretrained, "hf_hub_download", refuse("hf_hub_download"))
    monkeypatch.setattr(open_clip.pretrained, "download_pretrained_from_url", refuse("download_pretrained_from_url"))
    return calls


def frames(num_frames: int = 4, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (num_frames, 48, 64, 3), dtype=np.uint8)


def sample(num_frames: int = 4) -> dict[str, np.ndarray]:
    alpha = np.zeros((num_frames, 48, 64), dtype=np.uint8)
    alpha[:, 12:36, 16:48] = 255
    return {"foreground": frames(num_frames, 1), "alpha": alpha, "background": frames(num_frames, 2),
            "blended": frames(num_frames, 3)}


def unit(vector: np.ndarray) -> np.ndarray:
    return vector / np.linalg.norm(vector)


def test_spec_round_trips(tiny_spec: str) -> None:
    spec = ClipSpec.parse(DEFAULT_CLIP)
    assert (spec.arch, spec.pretrained, spec.tag) == ("ViT-B-32", "laion2b_s34b_b79k", "laion2b_s34b_b79k")
    assert str(spec) == DEFAULT_CLIP
    local = ClipSpec.parse(tiny_spec)
    assert local.arch == TINY_CLIP_ARCH and local.tag is None and str(local) == tiny_spec


@pytest.mark.parametrize("entry", [e.spec for e in REGISTRY.values() if e.group is Group.CLIP])
def test_registry_clip_specs_are_open_clip_models_with_pretrained_tags(entry: str) -> None:
    """`resolve_clip` takes a registry spec's arch and tag without asking open_clip (to keep it unimported)."""
    spec = ClipSpec.parse(entry)
    assert spec.tag == entry.split(":", 2)[2]


def test_resolving_uncached_registry_clip_does_not_import_open_clip(tmp_path: Path) -> None:
    code = ("import sys; from filters.clip import resolve_clip; from manifests.models import Access; "
            "c = resolve_clip('auto', Access(offline=True)); "
            "assert c.weights is None and 'not in the local cache' in c.unavailable, c; "
            "assert 'open_clip' not in sys.modules and 'torch' not in sys.modules, 'imported'")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf"), "HF_HUB_CACHE": str(tmp_path / "hub")}
    subprocess.run([sys.executable, "-c", code], check=True, env=env, cwd=Path(__file__).resolve().parents[1])


@pytest.mark.parametrize("spec", [
    "ViT-B-32:laion2b_s34b_b79k",  # no prefix
    "clip:ViT-B-32:laion2b_s34b_b79k",  # wrong prefix
    "openclip:ViT-B-32",  # no weights
    "openclip:No-Such-Arch:laion2b_s34b_b79k",
    "openclip:ViT-B-32:no_such_tag",
    "openclip:ViT-B-32:/no/such/open_clip_pytorch_model.bin",
])
def test_bad_spec_is_a_config_error_naming_the_option(spec: str) -> None:
    with pytest.raises(ConfigError, match="--clip"):
        ClipSpec.parse(spec)


def test_local_weights_file_resolves_to_itself(tiny_spec: str, no_network: list[str]) -> None:
    assert resolve_weights(ClipSpec.parse(tiny_spec), allow_download=False) == Path(tiny_spec.split(":", 2)[2])
    assert no_network == []


def test_uncached_tag_without_download_says_how_to_get_it_and_makes_no_network_call(no_network: list[str]) -> None:
    with pytest.raises(ClipUnavailable) as error:
        resolve_weights(ClipSpec.parse(DEFAULT_CLIP), allow_download=False)
    message = str(error.value)
    assert "\n" not in message
    assert f"--clip {DEFAULT_CLIP}" in message and "--clip openclip:ViT-B-32:/path/to/" in message
    assert no_network == []


def test_cached_tag_is_found_in_the_hf_cache_without_network(no_network: list[str]) -> None:
    repo = Path(hf_constants.HF_HUB_CACHE) / "models--laion--CLIP-ViT-B-32-laion2B-s34B-b79K"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text("abc123")
    weights = repo / "snapshots" / "abc123" / "open_clip_model.safetensors"
    weights.parent.mkdir(parents=True)
    weights.write_bytes(b"weights")
    assert resolve_weights(ClipSpec.parse(DEFAULT_CLIP), allow_download=False) == weights
    assert no_network == []


def test_failed_download_is_clip_unavailable(no_network: list[str]) -> None:
    with pytest.raises(ClipUnavailable, match="could not download CLIP weights ViT-B-32/laion2b_s34b_b79k"):
        resolve_weights(ClipSpec.parse(DEFAULT_CLIP), allow_download=True)
    assert "hf_hub_download" in no_network


def test_scorer_loads_the_saved_weights_not_a_fresh_init(tiny_spec: str) -> None:
    weights = Path(tiny_spec.split(":", 2)[2])
    torch.manual_seed(1)  # a fresh random init would now differ from the saved one
    loaded = ClipScorer(TINY_CLIP_ARCH, weights)
    saved = torch.load(weights, weights_only=True)
    state = loaded.model.state_dict()
    assert saved.keys() == state.keys()
    assert all(torch.equal(saved[name], state[name]) for name in saved)
    assert loaded.model_id == f"{TINY_CLIP_ARCH}:tiny.pt"
    assert loaded.weights_sha256 == hashlib.sha256(weights.read_bytes()).hexdigest()


def test_embeddings_are_unit_norm_float32(scorer: ClipScorer) -> None:
    images = scorer.embed_images(frames())
    texts = scorer.embed_texts(["a cat", "a dog", "a car"])
    assert images.shape == (4, 32) and texts.shape == (3, 32)
    assert images.dtype == np.float32 and texts.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(images, axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(texts, axis=1), 1.0, atol=1e-5)


def test_identical_frames_are_fully_consistent(scorer: ClipScorer) -> None:
    layers = sample()
    layers["blended"] = np.repeat(layers["blended"][:1], 4, axis=0)
    scores = clip_scores(scorer, **layers, captions=CAPTIONS)
    assert scores.consistency_mean == pytest.approx(1.0, abs=1e-5)
    assert scores.consistency_min == pytest.approx(1.0, abs=1e-5)


def test_different_frames_are_less_consistent(scorer: ClipScorer) -> None:
    scores = clip_scores(scorer, **sample(), captions=CAPTIONS)
    assert scores.consistency_min <= scores.consistency_mean < 1.0 - 1e-4


@pytest.mark.parametrize("layer", [Layer.FOREGROUND, Layer.BACKGROUND, Layer.BLENDED])
def test_text_score_is_cosine_of_mean_layer_embedding_and_caption(scorer: ClipScorer, layer: Layer) -> None:
    layers = sample()
    images = on_grey(layers["foreground"], layers["alpha"]) if layer is Layer.FOREGROUND else layers[layer.value]
    expected = unit(scorer.embed_images(images).mean(axis=0)) @ scorer.embed_texts([CAPTIONS[layer.value]])[0]
    scores = clip_scores(scorer, **layers, captions=CAPTIONS)
    assert getattr(scores, f"text_{layer.value}") == pytest.approx(float(expected), abs=1e-5)


def test_missing_caption_gives_no_text_score(scorer: ClipScorer) -> None:
    scores = clip_scores(scorer, **sample(), captions={"foreground": None, "background": "", "blended": "a ball"})
    assert scores.text_foreground is None and scores.text_background is None
    assert isinstance(scores.text_blended, float)


def test_embedding_is_normalised_mean_of_blended_frames(scorer: ClipScorer) -> None:
    layers = sample()
    scores = clip_scores(scorer, **layers, captions=CAPTIONS)
    expected = unit(scorer.embed_images(layers["blended"]).mean(axis=0))
    assert all(isinstance(x, float) for x in scores.embedding)
    np.testing.assert_allclose(scores.embedding, expected, atol=1e-5)


def test_single_frame_has_no_consistency(scorer: ClipScorer) -> None:
    scores = clip_scores(scorer, **sample(num_frames=1), captions=CAPTIONS)
    assert scores.consistency_mean is None and scores.consistency_min is None
    assert len(scores.embedding) == 32


def test_one_sample_is_one_image_batch_of_evenly_spaced_frames(scorer: ClipScorer,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    batches: list[int] = []
    embed_images = scorer.embed_images
    monkeypatch.setattr(scorer, "embed_images", lambda images: batches.append(len(images)) or embed_images(images))
    clip_scores(scorer, **sample(num_frames=12), captions=CAPTIONS, max_frames=5)
    assert batches == [3 * 5]
    assert evenly_spaced(12, 5).tolist() == [0, 3, 6, 8, 11]


def test_on_grey_blends_over_neutral_grey() -> None:
    foreground = np.full((1, 1, 3, 3), 200, dtype=np.uint8)
    alpha = np.array([[[0, 255, 51]]], dtype=np.uint8)
    grey = on_grey(foreground, alpha)
    assert grey.dtype == np.uint8 and grey.shape == (1, 1, 3, 3)
    assert grey[0, 0, 0].tolist() == [128, 128, 128]  # transparent: grey
    assert grey[0, 0, 1].tolist() == [200, 200, 200]  # opaque: foreground
    assert grey[0, 0, 2].tolist() == [142, 142, 142]  # 0.2 * 200 + 0.8 * 128 = 142.4
