"""The standard checkpoint: an export in diffusers / peft naming that a bare diffusers CogVideoXTransformer3DModel
loads with `load_lora_adapter`, and the pipeline that samples the same layers as `layerflow-data sample`."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from layerflow_model.components import build, load_checkpoint, save_checkpoint
from layerflow_model.config import SampleSettings, Stage, preset
from layerflow_model.export import LORA_FILE, TRANSFORMER_FILE, LayerFlowPipeline, export_checkpoint, hook_layerflow
from layerflow_model.layout import Layout, Task, condition_mask
from layerflow_model.model import bare_transformer
from layerflow_model.sample import run_task, sample_to_folder
from manifests.layers import Layer
from manifests.video_io import quantise


def cogvideox_folder(root: Path) -> Path:
    """A CogVideoX-2b-shaped diffusers folder: the real transformer config at 2 blocks, a T5 with the real
    4096-d output and an 8x/4x VAE with 16 latent channels, all tiny where the transformer reads nothing."""
    from diffusers import AutoencoderKLCogVideoX, CogVideoXTransformer3DModel
    from transformers import T5Config, T5EncoderModel, T5Tokenizer

    torch.manual_seed(0)
    words = ["a", "cat", "lawn", "on", "the"]
    vocab = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("▁", -2.0)] + [("▁" + w, -1.0) for w in words]
    tokenizer = T5Tokenizer(vocab=vocab, extra_ids=0)
    tokenizer.save_pretrained(root / "tokenizer")
    T5EncoderModel(T5Config(vocab_size=len(tokenizer), d_model=4096, d_kv=8, d_ff=16, num_layers=1, num_heads=2,
                            feed_forward_proj="gated-gelu", dropout_rate=0.0, pad_token_id=0, eos_token_id=1,
                            decoder_start_token_id=0)).save_pretrained(root / "text_encoder")
    AutoencoderKLCogVideoX(block_out_channels=(8, 8, 16, 16), down_block_types=("CogVideoXDownBlock3D",) * 4,
                           up_block_types=("CogVideoXUpBlock3D",) * 4, layers_per_block=1, latent_channels=16,
                           norm_num_groups=4, temporal_compression_ratio=4).save_pretrained(root / "vae")
    CogVideoXTransformer3DModel(num_layers=2).save_pretrained(root / "transformer")  # 2b defaults: 1920 wide, 30 heads
    return root


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> tuple:
    """A cogvideox-2b-geometry model (2 blocks, continuous positions) whose trainable parts all moved away from
    their start, as a checkpoint, and its export."""
    root = tmp_path_factory.mktemp("export")
    folder = cogvideox_folder(root / "CogVideoX-2b")
    config = preset("cogvideox-2b", pretrained=str(folder), depth=2, height=32, width=48, frames=8, text_tokens=16)
    parts = build(config)
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():  # stand-ins for trained weights: the base block, the content adapter, the embeddings
        for stage in (Stage.BASE, Stage.CONTENT):
            for p in parts.model.stage_parameters(stage).values():
                p.add_(torch.randn(p.shape, generator=generator) * 0.02)
    checkpoint = save_checkpoint(root / "run" / "checkpoint-0000001", parts, None, {"step": 1})
    return config, parts, checkpoint, export_checkpoint(checkpoint, root / "export"), root


def test_export_uses_peft_keys_with_diffusers_names(trained):
    _, parts, _, written, _ = trained
    lora = load_file(written["lora"])
    assert lora and all(k.startswith("transformer.transformer_blocks.1.attn1.") for k in lora)
    assert all(k.endswith((".lora_A.weight", ".lora_B.weight")) for k in lora)  # no adapter names, no motion
    weights = load_file(written["transformer"])
    assert "transformer_blocks.1.attn1.to_q.weight" in weights and not any("base_layer" in k for k in weights)
    assert not any(k.startswith("transformer_blocks.0.") for k in weights)  # only the blocks training changed
    assert set(load_file(written["embeddings"])) == {"layers.proj.weight", "layers.proj.bias", "layers.norm.weight",
                                                    "layers.norm.bias", "given_embedding"}


def test_a_bare_diffusers_transformer_with_load_lora_adapter_gives_the_same_denoiser_output(trained):
    from diffusers import CogVideoXTransformer3DModel

    config, parts, _, written, _ = trained
    export = Path(written["lora"]).parent
    transformer = bare_transformer(config, parts.text.dim)
    assert type(transformer) is CogVideoXTransformer3DModel
    transformer.load_state_dict(load_file(export / TRANSFORMER_FILE), strict=False)
    transformer.load_lora_adapter(str(export), weight_name=LORA_FILE, adapter_name="layerflow")
    hooked = hook_layerflow(transformer, config, export)
    clip = torch.randn(2, 4 * 2, 16, 4, 6, generator=torch.Generator().manual_seed(2))
    text = parts.encode_prompts([["0, a cat", "1, a lawn", "2, a cat on a lawn"], ["0, a cat", "", ""]])
    t = torch.tensor([100, 800])
    given = condition_mask(Layout.RGBA, Task.DECOMPOSE, 2)
    parts.model.eval()
    with torch.no_grad():
        ours, theirs = parts.model(clip, text, t, given), hooked(clip, text, t, given)
        unhooked = transformer(hidden_states=clip, encoder_hidden_states=text, timestep=t, return_dict=False)[0]
    assert (ours - theirs).abs().max() <= 1e-5
    assert (ours - unhooked).abs().max() > 1e-3  # the embeddings matter: the hook is what makes them equal


def test_the_exported_pipeline_samples_what_layerflow_data_sample_writes(trained):
    config, _, checkpoint, written, root = trained
    pipe = LayerFlowPipeline.from_export(Path(written["lora"]).parent, pretrained=config.pretrained)
    settings = SampleSettings(steps=2, cfg=3.0, seed=5)
    prompts = "a cat; a lawn; a cat on a lawn"
    layers = pipe("generate", prompts, settings=settings)
    sample_to_folder(checkpoint, "generate", prompts, root / "sampled", settings=settings, device="cpu")
    pngs = sorted((root / "sampled" / "foreground_rgba").glob("*.png"))
    written_rgba = np.stack([np.asarray(Image.open(p)) for p in pngs])
    ours = quantise(np.concatenate([layers[Layer.FOREGROUND], layers[Layer.ALPHA][..., None]], axis=-1))
    assert written_rgba.shape == (8, 32, 48, 4) and np.abs(ours.astype(int) - written_rgba).max() <= 1
    blend = {Layer.BLENDED: layers[Layer.BLENDED]}
    decomposed = pipe("decompose", "a cat; a lawn", blend, settings)
    reference = run_task(load_checkpoint(checkpoint)[0], Task.DECOMPOSE, {Layer.FOREGROUND: "a cat",
                                                                 Layer.BACKGROUND: "a lawn"}, blend, settings)
    for layer in Layer:
        assert np.abs(decomposed[layer] - reference[layer]).max() <= 1e-4, layer


def test_a_toy_export_carries_its_text_encoder_and_all_transformer_weights(tmp_path):
    tiny = {"depth": 2, "heads": 2, "head_dim": 8, "height": 16, "width": 16, "frames": 2, "text_tokens": 8,
            "tiny_t5_d_model": 16, "tiny_t5_layers": 1, "motion_rank": 2, "content_rank": 4, "time_embed_dim": 16}
    parts = build(preset("toy", **tiny))
    with torch.no_grad():
        for p in parts.model.stage_parameters(Stage.CONTENT).values():
            p.add_(0.05)
    checkpoint = save_checkpoint(tmp_path / "checkpoint-0000001", parts, None, {"step": 1})
    export_checkpoint(checkpoint, tmp_path / "export")
    pipe = LayerFlowPipeline.from_export(tmp_path / "export")
    settings = SampleSettings(steps=2, seed=3)
    ours = pipe("generate", "a cat; a lawn; a cat on a lawn", settings=settings)
    reference = run_task(parts, Task.GENERATE, {Layer.FOREGROUND: "a cat", Layer.BACKGROUND: "a lawn",
                                                Layer.BLENDED: "a cat on a lawn"}, None, settings)
    for layer in Layer:
        assert np.abs(ours[layer] - reference[layer]).max() <= 1e-5, layer


def test_the_export_command_writes_what_the_library_writes(trained, tmp_path):
    from typer.testing import CliRunner

    import cli

    _, _, checkpoint, written, _ = trained
    result = CliRunner().invoke(cli.app, ["export", str(checkpoint), "--out", str(tmp_path / "cli")])
    assert result.exit_code == 0, result.output
    assert LORA_FILE in result.output and str(tmp_path / "cli") in result.output
    ours, theirs = load_file(tmp_path / "cli" / LORA_FILE), load_file(written["lora"])
    assert ours.keys() == theirs.keys() and all(torch.equal(ours[k], theirs[k]) for k in ours)
