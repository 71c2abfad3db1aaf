"""The `hf:` captioner on tiny random-initialised transformers models saved to a folder and loaded back by path
through the real code (no downloads): captions, the content-hash cache, batching, errors, a whole build."""

from __future__ import annotations

import json
import shutil
from dataclasses import replace
from pathlib import Path

import fake_models
import numpy as np
import pytest
import torch
from fake_models import WORDS
from transformers import BertConfig, BertModel, BlipForConditionalGeneration, LlavaForConditionalGeneration

from datagen.build import build
from datagen.captioning import INSTRUCTIONS, HfCaptioner, load_captioner
from datagen.pipeline import LocalRunner
from manifests import io
from manifests.errors import ConfigError
from manifests.layers import CAPTIONED_LAYERS, Layer
from manifests.models import ModelUnavailable


@pytest.fixture(autouse=True)
def offline(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # hub look-ups would hang here: nothing may be downloaded
    monkeypatch.setenv("LAYERFLOW_CACHE_DIR", str(tmp_path / "cache"))


@pytest.fixture(scope="module")
def tiny_blip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 1-layer BLIP (16-wide, 32 px images) and its processor with a locally written BERT vocab."""
    folder = tmp_path_factory.mktemp("blip")
    fake_models.tiny_blip(folder)
    return folder


@pytest.fixture(scope="module")
def tiny_llava(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 1-layer LLaVA (CLIP vision tower + Llama) whose processor has a chat template: the chat-VLM path."""
    folder = tmp_path_factory.mktemp("llava")
    fake_models.tiny_llava(folder)
    return folder


def sample_layers(seed: int, frames: int = 3, height: int = 24, width: int = 32) -> dict[Layer, np.ndarray]:
    """Random layers as `read_layers` returns them: (T, H, W, 3) uint8 and a (T, H, W) uint8 alpha."""
    rng = np.random.default_rng(seed)
    rgb = {layer: rng.integers(0, 256, (frames, height, width, 3), dtype=np.uint8) for layer in CAPTIONED_LAYERS}
    return {**rgb, Layer.ALPHA: rng.integers(0, 256, (frames, height, width), dtype=np.uint8)}


@pytest.fixture
def generate_calls(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The batch size of every BLIP / LLaVA `generate` call, whichever captioner instance makes it."""
    calls: list[int] = []
    for model_class in (BlipForConditionalGeneration, LlavaForConditionalGeneration):
        original = model_class.generate

        def counting(self, *args, _original=original, **kwargs):
            calls.append(len(kwargs["pixel_values"]))
            return _original(self, *args, **kwargs)

        monkeypatch.setattr(model_class, "generate", counting)
    return calls


def test_blip_captions_the_three_layers_deterministically(tiny_blip, tmp_path):
    first = load_captioner(f"hf:{tiny_blip}")
    second = HfCaptioner(str(tiny_blip), cache_dir=str(tmp_path / "other"))  # its own cache: captions anew
    layers = sample_layers(0)
    captions = first({}, layers)
    assert first.name == f"hf:{tiny_blip.resolve()}" and not first.is_chat
    assert list(captions) == [Layer.FOREGROUND, Layer.BACKGROUND, Layer.BLENDED]
    for caption in captions.values():
        assert caption is None or (caption == caption.strip() and set(caption.split()) <= set(WORDS))
    assert any(captions.values())
    assert second({}, layers) == captions


def test_the_three_layers_go_through_one_generate_call(tiny_blip, generate_calls):
    load_captioner(f"hf:{tiny_blip}", device="cpu")({}, sample_layers(0))
    assert generate_calls == [3]


def test_cache_hits_never_reach_the_model_and_new_pixels_miss(tiny_blip, generate_calls, tmp_path):
    layers = sample_layers(1)
    captions = load_captioner(f"hf:{tiny_blip}")({}, layers)
    again = load_captioner(f"hf:{tiny_blip}")  # a retried build: a new worker, the same cache folder
    assert again({}, layers) == captions
    assert generate_calls == [3] and "network" not in again.__dict__  # the model was never even loaded
    assert len(list((tmp_path / "cache" / "captions").rglob("*.json"))) == 3

    changed = {**layers, Layer.BACKGROUND: 255 - layers[Layer.BACKGROUND]}  # the blended frame is left as it was
    again({}, changed)
    assert generate_calls == [3, 1]  # only the background image is new


def test_an_empty_caption_is_null_and_cached_as_null(tiny_blip, monkeypatch, generate_calls):
    def nothing(self, pixel_values, **kwargs):  # the model ends at once: [CLS] [SEP]
        generate_calls.append(len(pixel_values))
        return torch.tensor([[2, 3]] * len(pixel_values))

    monkeypatch.setattr(BlipForConditionalGeneration, "generate", nothing)
    layers = sample_layers(2)
    assert set(load_captioner(f"hf:{tiny_blip}")({}, layers).values()) == {None}
    assert set(load_captioner(f"hf:{tiny_blip}")({}, layers).values()) == {None}
    assert generate_calls == [3, 3]  # the first try and its one retry; the second captioner reads the cache


def test_a_chat_vlm_is_asked_per_layer_and_its_prompt_is_cut_from_the_caption(tiny_llava, monkeypatch):
    # The random model loops ("assistant assistant ..."): judged usable here, so no retry (test_caption_quality).
    monkeypatch.setattr("datagen.captioning.degenerate", lambda text: None)
    captioner = load_captioner(f"hf:{tiny_llava}")
    assert captioner.is_chat
    prompts = [captioner.prompts[layer] for layer in CAPTIONED_LAYERS]
    assert prompts[0] == f"user: <image> {INSTRUCTIONS[Layer.FOREGROUND]} assistant:"
    assert len(set(prompts)) == 3  # a different instruction per layer
    seen: list[tuple[torch.Tensor, torch.Tensor]] = []  # (input_ids, returned tokens) of each call
    original = LlavaForConditionalGeneration.generate

    def recording(self, *args, **kwargs):
        tokens = original(self, *args, **kwargs)
        seen.append((kwargs["input_ids"], tokens))
        return tokens

    monkeypatch.setattr(LlavaForConditionalGeneration, "generate", recording)
    layers = sample_layers(3)
    captions = captioner({}, layers)
    [(input_ids, tokens)] = seen  # one call for the three layers
    assert len(input_ids) == 3 and (input_ids[:, -1] == input_ids[0, -1]).all()  # left-padded: prompts end together
    new_words = captioner.processor.batch_decode(tokens[:, input_ids.shape[1] :], skip_special_tokens=True)
    assert list(captions.values()) == [text.strip() or None for text in new_words]
    assert load_captioner(f"hf:{tiny_llava}")({}, layers) == captions and len(seen) == 1


def test_a_model_id_in_the_hub_cache_loads_offline_pinned_to_its_commit(tiny_blip, tmp_path, monkeypatch):
    import huggingface_hub.constants

    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = tmp_path / "hub" / "models--layerflow-test--tiny-blip"  # the hub cache layout, as `hf download` leaves it
    shutil.copytree(tiny_blip, repo / "snapshots" / commit)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    captioner = load_captioner("hf:layerflow-test/tiny-blip")
    assert captioner.name == f"hf:layerflow-test/tiny-blip@{commit}" and captioner.local_only
    layers = sample_layers(4)
    assert captioner({}, layers) == load_captioner(f"hf:{tiny_blip}")({}, layers)  # the same weights


@pytest.mark.parametrize("spec", ["hf:{tmp}/no_such_model", "hf:{tmp}"])
def test_a_folder_that_is_not_a_model_is_a_one_line_config_error(spec, tmp_path):
    with pytest.raises(ConfigError) as error:
        load_captioner(spec.format(tmp=tmp_path))
    message = str(error.value)
    assert "\n" not in message and "save_pretrained" in message and message.startswith("captioner hf:")


def test_a_model_id_not_cached_offline_is_one_line_naming_models_fetch():
    with pytest.raises(ModelUnavailable) as error:
        load_captioner("hf:layerflow-test/no-such-model")  # HF_HUB_OFFLINE=1: nothing may be downloaded
    message = str(error.value)
    assert "\n" not in message and "`layerflow-data models fetch hf:layerflow-test/no-such-model`" in message


def test_a_model_that_does_not_caption_images_is_a_config_error(tmp_path):
    BertModel(BertConfig(vocab_size=8, hidden_size=8, num_hidden_layers=1, num_attention_heads=1,
                         intermediate_size=8)).save_pretrained(tmp_path / "bert")
    with pytest.raises(ConfigError, match="'bert' model is not an image-to-text model"):
        load_captioner(f"hf:{tmp_path / 'bert'}")


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without a GPU")
def test_cuda_without_a_gpu_is_a_config_error(tiny_blip):
    with pytest.raises(ConfigError, match="no CUDA GPU"):
        load_captioner(f"hf:{tiny_blip}", device="cuda")


def test_a_build_writes_the_model_captions_and_records_the_captioner(tiny_source, tmp_path, small_config, tiny_blip,
                                                                     generate_calls):
    config = replace(small_config, captioner=f"hf:{tiny_blip}", clip="none")
    summary = build(str(tiny_source), tmp_path / "ds", config, LocalRunner(progress=False))
    rows = io.read_manifest(tmp_path / "ds").to_pylist()
    name = f"hf:{tiny_blip.resolve()}"
    assert len(rows) == 8 and {row["captioner"] for row in rows} == {name}
    captions = [row[f"caption_{layer.value}"] for row in rows for layer in CAPTIONED_LAYERS]
    assert any(captions) and all(c is None or set(c.split()) <= set(WORDS) for c in captions)  # none from sidecars
    assert summary["backends"]["captioner"] == config.captioner
    assert summary["backends"]["captioner_used"] == {name: 8}
    on_disk = json.loads((tmp_path / "ds" / io.SUMMARY_FILE).read_text())
    assert on_disk["backends"]["captioner_used"] == {name: 8}
    # At most one call per sample; two samples on the same background clip share its (cached) background image.
    cached = list((tmp_path / "cache" / "captions").rglob("*.json"))
    assert max(generate_calls) <= 3 and sum(generate_calls) == len(cached) >= 6

    again = build(str(tiny_source), tmp_path / "again", config, LocalRunner(progress=False))  # a retried build
    assert sum(generate_calls) == len(cached) and again["backends"]["captioner_used"] == {name: 8}
    assert io.read_manifest(tmp_path / "again").to_pylist() == rows
