"""Text encoders and latent spaces, with tiny random T5 / VAE models saved and loaded the real way (no downloads)."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
import torch
from diffusers import AutoencoderKLCogVideoX
from safetensors.torch import load_model, save_model
from transformers import T5Config, T5EncoderModel, T5Tokenizer

from layerflow_model.config import GEOMETRY, Space
from layerflow_model.latents import CogVideoXLatents, PixelSpace
from layerflow_model.text import ByteTokenizer, ModelFolderError, TextEncoder, TinyT5Config

TINY = TinyT5Config(d_model=32, num_layers=1, num_heads=2, d_ff=64, d_kv=16)


def byte_ids(text: str) -> list[int]:
    return [b + 3 for b in text.encode("utf-8")]


def test_byte_tokenizer_appends_eos_then_pads() -> None:
    ids = ByteTokenizer(max_length=6)(["hi", ""])
    assert ids.dtype == torch.long
    assert ids.tolist() == [byte_ids("hi") + [1, 0, 0, 0], [1, 0, 0, 0, 0, 0]]


def test_byte_tokenizer_truncates_bytes_to_leave_room_for_eos() -> None:
    ids = ByteTokenizer(max_length=4)(["abcdef", "é!"])
    assert ids.tolist() == [byte_ids("abc") + [1], byte_ids("é!") + [1]]
    assert max(byte_ids("é!")) < ByteTokenizer.vocab_size


def test_tiny_encoder_shape_and_frozen() -> None:
    encoder = TextEncoder.tiny(TINY, max_length=12)
    embeddings = encoder.encode(["0, a red ball", "1, grass"])
    assert embeddings.shape == (2, 12, 32)
    assert embeddings.dtype == torch.float32
    assert encoder.dim == 32
    assert not any(p.requires_grad for p in encoder.parameters())
    assert encoder.source == "tiny-t5:d32-l1 (random init, seed 0)"


def test_text_encoder_stays_in_eval_mode_under_a_training_parent() -> None:
    parent = torch.nn.ModuleDict({"text": TextEncoder.tiny(TINY, max_length=8)}).train()
    assert not any(module.training for module in parent["text"].modules())


def test_tiny_encoder_is_deterministic_and_batch_independent() -> None:
    encoder = TextEncoder.tiny(TINY, max_length=12)
    both = encoder.encode(["a", "b"])
    torch.testing.assert_close(both[:1], encoder.encode(["a"]), atol=1e-5, rtol=0)
    torch.testing.assert_close(both[1:], encoder.encode(["b"]), atol=1e-5, rtol=0)
    torch.testing.assert_close(both, TextEncoder.tiny(TINY, max_length=12).encode(["a", "b"]), atol=0, rtol=0)


def test_tiny_encoder_distinguishes_strings() -> None:
    embeddings = TextEncoder.tiny(TINY, max_length=12).encode(["0, a cat", "0, a dog"])
    assert (embeddings[0] - embeddings[1]).abs().max() > 1e-3


def test_tiny_encoder_seed_picks_weights_without_touching_global_rng() -> None:
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    seed0 = TextEncoder.tiny(TINY, max_length=8).encode(["a"])
    assert torch.equal(torch.rand(3), expected)
    seed1 = TextEncoder.tiny(replace(TINY, seed=1), max_length=8).encode(["a"])
    assert (seed0 - seed1).abs().max() > 1e-3


def test_tiny_encoder_state_dict_round_trips() -> None:
    trained = TextEncoder.tiny(replace(TINY, seed=7), max_length=8)
    restored = TextEncoder.tiny(TINY, max_length=8)
    restored.load_state_dict(trained.state_dict())
    assert torch.equal(restored.encode(["0, a cat"]), trained.encode(["0, a cat"]))


def test_tiny_encoder_round_trips_through_safetensors(tmp_path: Path) -> None:
    # T5 ties shared.weight to encoder.embed_tokens.weight: safetensors' save_file refuses that, save_model dedupes it.
    trained = TextEncoder.tiny(replace(TINY, seed=7), max_length=8)
    save_model(trained, tmp_path / "text.safetensors")
    restored = TextEncoder.tiny(TINY, max_length=8)
    load_model(restored, tmp_path / "text.safetensors")
    assert torch.equal(restored.encode(["0, a cat"]), trained.encode(["0, a cat"]))


def test_encode_of_no_prompts_is_empty() -> None:
    assert TextEncoder.tiny(TINY, max_length=8).encode([]).shape == (0, 8, 32)


def offline_t5_tokenizer() -> T5Tokenizer:
    """A real T5 (Unigram) tokenizer built from a hand-written vocabulary instead of a downloaded spiece.model."""
    words = ["a", "cat", "dog", "red", "ball", "on", "the", "grass"]
    vocab = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("▁", -2.0)] + [("▁" + w, -1.0) for w in words]
    return T5Tokenizer(vocab=vocab, extra_ids=0)


@pytest.fixture
def t5_folder(tmp_path: Path) -> tuple[Path, T5EncoderModel]:
    tokenizer = offline_t5_tokenizer()
    config = T5Config(
        vocab_size=len(tokenizer),
        d_model=32,
        d_kv=8,
        d_ff=64,
        num_layers=1,
        num_heads=4,
        feed_forward_proj="gated-gelu",
        dropout_rate=0.0,
        pad_token_id=0,
        eos_token_id=1,
        decoder_start_token_id=0,
    )
    model = T5EncoderModel(config).eval()
    tokenizer.save_pretrained(tmp_path / "tokenizer")
    model.save_pretrained(tmp_path / "text_encoder")
    return tmp_path, model


def test_from_folder_encodes_like_the_cogvideox_pipeline(t5_folder: tuple[Path, T5EncoderModel]) -> None:
    folder, model = t5_folder
    encoder = TextEncoder.from_folder(folder, max_length=16)
    assert encoder.source == str(folder) and encoder.dim == 32
    embeddings = encoder.encode(["a red cat", "the dog on the grass"])
    assert embeddings.shape == (2, 16, 32)
    # "a red cat" -> ▁a ▁red ▁cat </s>, then <pad> to 16; fed to T5 without an attention mask.
    ids = torch.tensor([[4, 7, 5, 1] + [0] * 12])
    with torch.no_grad():
        expected = model(input_ids=ids).last_hidden_state
    torch.testing.assert_close(embeddings[:1], expected, atol=1e-5, rtol=0)


def test_from_folder_names_the_missing_text_encoder(tmp_path: Path) -> None:
    offline_t5_tokenizer().save_pretrained(tmp_path / "tokenizer")
    with pytest.raises(ModelFolderError, match="text_encoder/"):
        TextEncoder.from_folder(tmp_path, max_length=16)


def test_pixel_space_is_identity() -> None:
    space = PixelSpace()
    video = torch.rand(2, 5, 3, 8, 12) * 2 - 1
    assert torch.equal(space.encode(video), video)
    assert torch.equal(space.decode(space.encode(video)), video)
    assert space.latent_frames(5) == 5 and space.latent_size(8, 12) == (8, 12)
    assert space.channels == 3 and list(space.parameters()) == []
    pixel = GEOMETRY[Space.PIXEL]  # the one table the model config reads too
    assert (space.channels, space.spatial_ratio, space.temporal_ratio) == (
        pixel.channels, pixel.spatial_ratio, pixel.temporal_ratio)


@pytest.fixture(scope="module")
def vae_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny CogVideoX VAE: three blocks give the real model's 4x temporal ratio (at 4x spatial, not 8x)."""
    torch.manual_seed(0)
    vae = AutoencoderKLCogVideoX(
        block_out_channels=(8, 8, 16),
        down_block_types=("CogVideoXDownBlock3D",) * 3,
        up_block_types=("CogVideoXUpBlock3D",) * 3,
        layers_per_block=1,
        latent_channels=4,
        norm_num_groups=4,
        temporal_compression_ratio=4,
        sample_height=32,
        sample_width=32,
    )
    folder = tmp_path_factory.mktemp("cogvideox")
    vae.save_pretrained(folder / "vae")
    return folder


def test_cogvideox_latents_load_from_folder(vae_folder: Path) -> None:
    space = CogVideoXLatents.from_folder(vae_folder)
    assert (space.channels, space.spatial_ratio, space.temporal_ratio) == (4, 4, 4)
    assert space.source == str(vae_folder)
    assert not any(p.requires_grad for p in space.parameters())
    video = torch.rand(1, 9, 3, 32, 32) * 2 - 1
    latents = space.encode(video, torch.Generator().manual_seed(0))
    assert latents.shape == (1, space.latent_frames(9), 4, *space.latent_size(32, 32)) == (1, 3, 4, 8, 8)
    decoded = space.decode(latents)
    assert decoded.shape == video.shape
    assert decoded.min() >= -1 and decoded.max() <= 1


@pytest.mark.parametrize("frames", [1, 8, 9, 16, 17])
def test_cogvideox_latent_frames_match_the_vae(vae_folder: Path, frames: int) -> None:
    space = CogVideoXLatents.from_folder(vae_folder)
    latents = space.encode(torch.zeros(1, frames, 3, 8, 8))
    assert latents.shape[1] == space.latent_frames(frames)
    assert space.decode(latents).shape[1] == frames


def test_cogvideox_rejects_clips_that_do_not_round_trip(vae_folder: Path) -> None:
    space = CogVideoXLatents.from_folder(vae_folder)
    assert space.latent_frames(4) == 1
    with pytest.raises(ValueError, match="frames=4"):
        space.encode(torch.zeros(1, 4, 3, 8, 8))
    with pytest.raises(ValueError, match="height=10"):
        space.encode(torch.zeros(1, 8, 3, 10, 8))


def test_cogvideox_encode_is_a_scaled_posterior_sample(vae_folder: Path) -> None:
    space = CogVideoXLatents.from_folder(vae_folder)
    video = torch.rand(1, 8, 3, 8, 8) * 2 - 1
    latents = space.encode(video, torch.Generator().manual_seed(3))
    with torch.no_grad():
        posterior = space.vae.encode(video.permute(0, 2, 1, 3, 4)).latent_dist
    scale = space.vae.config.scaling_factor
    mean, std = (x.permute(0, 2, 1, 3, 4) * scale for x in (posterior.mean, posterior.std))  # (B, T', C, h, w)
    torch.testing.assert_close(space.posterior(video), torch.stack([mean, std], dim=1), atol=1e-6, rtol=0)
    expected = mean + std * torch.randn(mean.shape, generator=torch.Generator().manual_seed(3))
    torch.testing.assert_close(latents, expected, atol=1e-6, rtol=0)
    assert not torch.equal(latents, space.encode(video, torch.Generator().manual_seed(4)))


def test_a_bf16_vae_gives_the_fp32_posterior_to_bf16_precision(vae_folder: Path) -> None:
    video = torch.rand(1, 8, 3, 8, 8) * 2 - 1
    full = CogVideoXLatents.from_folder(vae_folder).posterior(video)
    half = CogVideoXLatents.from_folder(vae_folder, dtype=torch.bfloat16).posterior(video)
    assert half.dtype == torch.float32  # outputs are float32 whatever the encoder's dtype
    assert (half - full).abs().max() <= 0.05 * full.abs().max()  # bf16 keeps 8 bits of mantissa


def test_cogvideox_latents_name_the_missing_vae(tmp_path: Path) -> None:
    with pytest.raises(ModelFolderError, match="vae/"):
        CogVideoXLatents.from_folder(tmp_path)
