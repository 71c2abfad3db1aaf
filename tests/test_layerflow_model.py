"""The compact LayerFlow model: layout, layer embedding, adapters and stages, objective, sampler conditions."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import torch
from conftest import TINY

from layerflow_model.components import build
from layerflow_model.config import (
    GEOMETRY,
    ConfigError,
    Geometry,
    ModelConfig,
    Sampler,
    SampleSettings,
    Space,
    Stage,
    TrainConfig,
    preset,
)
from layerflow_model.diffusion import Diffusion, masked_mse, sample
from layerflow_model.layout import (
    PROMPT_OF_SLOT,
    Layout,
    Slot,
    Task,
    condition_mask,
    given_layers,
    pack,
    premultiply_on_grey,
    prompts_for,
    slots_of,
    split_slots,
    unpack,
    unpremultiply_from_grey,
)
from layerflow_model.model import CONTENT, MOTION, transformer_kwargs
from layerflow_model.sample import INPUT_LAYERS, run_task
from layerflow_model.train import ema_decay, prompt_drop
from manifests.layers import Layer


def tiny_config(**overrides) -> ModelConfig:
    return preset("toy", **{**TINY, **overrides})


def random_layers(frames: int = 3, size: int = 8, seed: int = 0) -> dict[Layer, np.ndarray]:
    rng = np.random.default_rng(seed)
    fg = rng.random((frames, size, size, 3), dtype=np.float32)
    bg = rng.random((frames, size, size, 3), dtype=np.float32)
    alpha = rng.random((frames, size, size), dtype=np.float32)
    alpha[:, :2] = 0.0  # some fully transparent rows
    alpha[:, -2:] = 1.0
    blended = alpha[..., None] * fg + (1 - alpha[..., None]) * bg
    return {Layer.FOREGROUND: fg, Layer.ALPHA: alpha, Layer.BACKGROUND: bg, Layer.BLENDED: blended}


def test_premultiply_round_trip_recovers_colour_where_alpha_is_above_eps():
    layers = random_layers()
    fg, alpha = layers[Layer.FOREGROUND], layers[Layer.ALPHA]
    on_grey = premultiply_on_grey(fg, alpha)
    assert np.allclose(on_grey[alpha == 0], 0.5)  # transparent pixels are mid-grey
    back = unpremultiply_from_grey(on_grey, alpha)
    visible = alpha > 0.01
    assert np.allclose(back[visible], fg[visible], atol=1e-4)
    assert (back[alpha == 0] == 0).all()


def test_pack_orders_sub_clips_and_maps_alpha_to_minus_one_plus_one():
    layers = random_layers(frames=3)
    clip = pack(layers, Layout.RGBA)
    assert clip.shape == (12, 3, 8, 8)  # 4 sub-clips x 3 frames
    parts = split_slots(clip, Layout.RGBA)
    assert list(parts) == [Slot.FOREGROUND, Slot.ALPHA, Slot.BACKGROUND, Slot.BLENDED]
    alpha = torch.from_numpy(layers[Layer.ALPHA])
    assert torch.allclose(parts[Slot.ALPHA][:, 0], alpha * 2 - 1)
    background = torch.from_numpy(layers[Layer.BACKGROUND]) * 2 - 1
    assert torch.allclose(parts[Slot.BACKGROUND].permute(0, 2, 3, 1), background)
    assert pack(layers, Layout.RGB).shape == (9, 3, 8, 8)


def test_pack_unpack_round_trip():
    layers = random_layers()
    out = unpack(pack(layers, Layout.RGBA), Layout.RGBA)
    for layer in (Layer.ALPHA, Layer.BACKGROUND, Layer.BLENDED):
        assert np.allclose(out[layer], layers[layer], atol=1e-5), layer
    visible = layers[Layer.ALPHA] > 0.01
    assert np.allclose(out[Layer.FOREGROUND][visible], layers[Layer.FOREGROUND][visible], atol=1e-3)
    rgb = unpack(pack(layers, Layout.RGB), Layout.RGB)
    assert Layer.ALPHA not in rgb  # the RGB layout carries no matte
    assert np.allclose(rgb[Layer.FOREGROUND], premultiply_on_grey(layers[Layer.FOREGROUND], layers[Layer.ALPHA]),
                       atol=1e-5)


def test_condition_mask_marks_exactly_the_given_slots():
    mask = condition_mask(Layout.RGBA, Task.FG2BG, 2)
    assert mask.tolist() == [True, True, True, True, False, False, False, False]  # fg and alpha given
    assert condition_mask(Layout.RGBA, Task.DECOMPOSE, 1).tolist() == [False, False, False, True]
    assert condition_mask(Layout.RGB, Task.BG2FG, 1).tolist() == [False, True, False]
    assert not condition_mask(Layout.RGBA, Task.GENERATE, 3).any()


def test_input_layers_are_the_given_slots_as_dataset_layers():
    assert INPUT_LAYERS == {
        Task.GENERATE: (),
        Task.DECOMPOSE: (Layer.BLENDED,),
        Task.FG2BG: (Layer.FOREGROUND, Layer.ALPHA),
        Task.BG2FG: (Layer.BACKGROUND,),
    }
    assert given_layers(Layout.RGBA, Task.FG2BG) == (Layer.FOREGROUND, Layer.ALPHA)
    assert given_layers(Layout.RGB, Task.FG2BG) == (Layer.FOREGROUND,)  # the RGB layout carries no matte


def test_run_task_asks_for_the_given_layers_of_its_layout():
    foreground = {Layer.FOREGROUND: np.full((2, 16, 16, 3), 0.25, np.float32)}
    settings = SampleSettings(steps=1, cfg=1.0)
    with pytest.raises(ConfigError, match="needs the alpha layer"):
        run_task(build(tiny_config()), Task.FG2BG, {}, foreground, settings)
    out = run_task(build(tiny_config(layout=Layout.RGB)), Task.FG2BG, {}, foreground, settings)
    assert Layer.ALPHA not in out and out[Layer.BACKGROUND].shape == (2, 16, 16, 3)


def test_prompts_carry_the_index_prefix_and_decompose_empties_the_blend_prompt():
    captions = {Layer.FOREGROUND: "a cat", Layer.BACKGROUND: "a lawn", Layer.BLENDED: "a cat on a lawn"}
    assert prompts_for(captions) == ["0, a cat", "1, a lawn", "2, a cat on a lawn"]
    assert prompts_for(captions, Task.DECOMPOSE) == ["0, a cat", "1, a lawn", ""]


def test_an_empty_caption_is_the_zero_dropped_embedding_not_the_bare_index():
    captions = {Layer.FOREGROUND: "a cat", Layer.BACKGROUND: "", Layer.BLENDED: "  "}
    assert prompts_for(captions) == ["0, a cat", "", ""]
    parts = build(tiny_config())
    text = parts.encode_prompts([prompts_for(captions)]).view(3, parts.config.text_tokens, -1)
    assert (text[1:] == 0).all() and (text[0] != 0).any()
    assert (parts.encode_prompts([["1"]]) != 0).any()  # what an empty caption used to become: not the zero embedding
    assert PROMPT_OF_SLOT[Slot.ALPHA] == PROMPT_OF_SLOT[Slot.FOREGROUND] == 0


def test_layer_embedding_is_one_vector_per_prompt_and_differs_across_prompts():
    parts = build(tiny_config())
    embedding = parts.model.layer_embedding()  # (3 * n, D)
    n = parts.config.text_tokens
    assert embedding.shape == (3 * n, parts.config.width_dim)
    blocks = embedding.view(3, n, -1)
    for i in range(3):
        assert torch.equal(blocks[i], blocks[i, :1].expand(n, -1))  # identical within a prompt
    assert not torch.allclose(blocks[0, 0], blocks[1, 0])
    assert not torch.allclose(blocks[1, 0], blocks[2, 0])
    module = parts.model.layer_embedding
    assert torch.allclose(blocks[0, 0], module.norm(module.proj.bias), atol=1e-6)  # index 0: LN(bias)


def test_continuous_positions_add_the_layer_embedding_to_prompt_tokens_only():
    parts = build(tiny_config(positions="continuous"))
    patch = parts.model.transformer.patch_embed
    text = torch.randn(1, parts.config.text_length, parts.text.dim)
    video = torch.randn(1, 4 * parts.config.frames, 3, 16, 16)
    with torch.no_grad():
        with_layers = patch(text, video)
        plain = patch.inner(text, video)
    t = parts.config.text_length
    assert torch.allclose(with_layers[:, :t] - plain[:, :t], patch.layers()[None], atol=1e-6)
    assert torch.equal(with_layers[:, t:], plain[:, t:])  # visual tokens get no layer signal (notes §5)


def test_per_layer_positions_repeat_in_every_sub_clip_plus_a_sub_clip_embedding():
    parts = build(tiny_config(positions="per-layer"))
    patch = parts.model.transformer.patch_embed
    with torch.no_grad():
        patch.slot_embedding.normal_()
        text = torch.zeros(1, parts.config.text_length, parts.text.dim)
        video = torch.zeros(1, 4 * 2, 3, 16, 16)  # zero pixels: what remains is bias + positions
        visual = patch(text, video)[0, parts.config.text_length:].view(4, -1, parts.config.width_dim)
    without_slot = visual - patch.slot_embedding[:, None]
    for slot in range(1, 4):
        assert torch.allclose(without_slot[slot], without_slot[0], atol=1e-6)  # same pixel, same position
    frames = without_slot[0].view(2, 16, -1)
    assert not torch.allclose(frames[0], frames[1])  # time still differs within a sub-clip


def test_empty_and_dropped_prompts_are_all_zero_embeddings():
    parts = build(tiny_config())
    prompts = [["0, a cat", "1, a lawn", ""], ["0, a dog", "1, snow", "2, a dog in snow"]]
    drop = torch.tensor([[False, False, False], [False, True, False]])
    text = parts.encode_prompts(prompts, drop).view(2, 3, parts.config.text_tokens, -1)
    assert (text[0, 2] == 0).all() and (text[1, 1] == 0).all()
    assert (text[0, 0] != 0).any() and (text[1, 2] != 0).any()


def test_given_embedding_is_added_to_the_tokens_of_given_frames_only():
    parts = build(tiny_config(positions="continuous"))
    patch = parts.model.transformer.patch_embed
    with torch.no_grad():
        patch.given_embedding.normal_()
    text = torch.randn(1, parts.config.text_length, parts.text.dim)
    video = torch.randn(1, 4 * 2, 3, 16, 16)
    given = condition_mask(Layout.RGBA, Task.DECOMPOSE, 2)  # the last two frames (the blend)
    with torch.no_grad():
        plain = patch(text, video)
        patch.given = given
        marked = patch(text, video)
        patch.given = None
    visual = (marked - plain)[0, parts.config.text_length:].view(8, 16, -1)  # (frames, tokens per frame, D)
    assert torch.allclose(visual[given], patch.given_embedding.expand(2, 16, -1), atol=1e-6)
    n = parts.config.text_length
    assert (visual[~given] == 0).all() and torch.equal(marked[:, :n], plain[:, :n])
    clip, t = torch.randn(1, 8, 3, 16, 16), torch.tensor([400])
    with torch.no_grad():  # the model tells the task's given slots apart, and nothing is given by default
        assert not torch.allclose(parts.model(clip, text, t, given), parts.model(clip, text, t))
        assert torch.equal(parts.model(clip, text, t), parts.model(clip, text, t, torch.zeros(8, dtype=torch.bool)))
    assert "given_embedding" not in dict(build(tiny_config(given_embedding=False)).model.named_parameters())


def test_given_projection_puts_the_given_slots_pixels_on_every_slot_at_the_same_frame_and_pixel():
    parts = build(tiny_config(positions="continuous", given_embedding=False))
    patch = parts.model.transformer.patch_embed
    text = torch.randn(1, parts.config.text_length, parts.text.dim)
    video = torch.randn(1, 4 * 2, 3, 16, 16)  # RGBA: 4 slots of 2 frames, 16 tokens a frame
    given = condition_mask(Layout.RGBA, Task.DECOMPOSE, 2)  # the blend, the last slot
    n = parts.config.text_length
    with torch.no_grad():
        patch.given = given
        # zero at init: the visual tokens are the inner patch embedding's, as without the projection
        assert torch.equal(patch(text, video)[:, n:], patch.inner(text, video)[:, n:])
        patch.given_projection.weight.normal_()
        marked = patch(text, video)
        patch.given = None
        plain = patch(text, video)
        inner = patch.inner(text, video)[0, n:].view(4, 2, 16, -1)  # (slot, frame, token, D)
    added = (marked - plain)[0, n:].view(4, 2, 16, -1)
    weight = patch.given_projection.weight  # (D, 4 * D): the slots side by side, blend last
    blend_part = weight[:, 3 * inner.shape[-1]:]
    expected = inner[3] @ blend_part.T  # (frame, token, D): only the blend's own frame and pixel
    for slot in range(4):  # the same on every slot, at that slot's frame and pixel
        assert torch.allclose(added[slot], expected, atol=1e-4)
    assert torch.equal(plain[0, n:].view(4, 2, 16, -1), inner)  # nothing given: nothing added (zero bias)
    fg2bg = condition_mask(Layout.RGBA, Task.FG2BG, 2)  # foreground and alpha: both slots feed the projection
    with torch.no_grad():
        patch.given = fg2bg
        two = (patch(text, video) - plain)[0, n:].view(4, 2, 16, -1)
        patch.given = None
    d = inner.shape[-1]
    both = inner[0] @ weight[:, :d].T + inner[1] @ weight[:, d:2 * d].T
    assert torch.allclose(two[2], both, atol=1e-4)
    trains = parts.model.stage_parameters
    assert "transformer.patch_embed.given_projection.weight" in trains(Stage.BASE)
    assert "transformer.patch_embed.given_projection.weight" not in trains(Stage.MOTION)
    assert "transformer.patch_embed.given_projection.weight" not in trains(Stage.CONTENT)  # base only
    assert not preset("cogvideox-2b").given_projection and preset("toy").given_projection
    assert "given_projection" not in str(dict(build(tiny_config(given_projection=False)).model.named_parameters()))
    older = {k: v for k, v in tiny_config().to_dict().items() if k != "given_projection"}
    assert ModelConfig.from_dict(older).given_projection is False  # a checkpoint from before keeps its shape


def test_adapters_are_scaled_by_alpha_over_the_square_root_of_their_rank():
    parts = build(tiny_config(motion_rank=4, content_rank=16, lora_alpha=2.0))
    layer = parts.model.adapter_layers()[0]
    assert layer.scaling[MOTION] == pytest.approx(2.0 / 2) and layer.scaling[CONTENT] == pytest.approx(2.0 / 4)


def test_joint_prompt_drop_zeroes_all_three_prompts_of_a_sample_together():
    generator = torch.Generator().manual_seed(0)
    drop = prompt_drop(4000, tiny_config(prompt_dropout=0.0, joint_prompt_dropout=0.5), generator)
    assert ((drop.all(dim=1)) | (~drop).all(dim=1)).all()  # all or none
    assert 0.45 < drop[:, 0].float().mean() < 0.55
    independent = prompt_drop(4000, tiny_config(prompt_dropout=0.1, joint_prompt_dropout=0.0), generator)
    assert independent.all(dim=1).float().mean() < 0.005  # 0.1 ** 3: why the joint drop exists
    assert 0.08 < independent.float().mean() < 0.12
    assert 0.09 < prompt_drop(4000, tiny_config(), generator).all(dim=1).float().mean() < 0.12  # default: 10 %
    with pytest.raises(ConfigError, match="joint_prompt_dropout"):
        tiny_config(joint_prompt_dropout=1.0)


def test_ema_decay_warms_up_from_the_first_step():
    config = TrainConfig(manifest="m", out="o", ema=0.999)
    assert [round(ema_decay(config, k), 4) for k in (0, 1, 90)] == [0.1, round(2 / 11, 4), 0.91]
    assert ema_decay(config, 100_000) == 0.999
    assert ema_decay(TrainConfig(manifest="m", out="o", ema=0.999, ema_warmup=False), 0) == 0.999


def _randomise_adapter(parts, name: str) -> None:
    with torch.no_grad():
        for n, p in parts.model.named_parameters():
            if f".{name}." in n:
                p.normal_(0, 0.5)


def test_motion_gate_off_means_the_motion_adapter_contributes_exactly_zero():
    parts = build(tiny_config())
    _randomise_adapter(parts, CONTENT)
    clip = torch.randn(2, 4 * 2, 3, 16, 16)
    text = torch.randn(2, parts.config.text_length, parts.text.dim)
    t = torch.tensor([10, 700])
    parts.model.eval()
    with torch.no_grad():
        before = parts.model(clip, text, t)
        _randomise_adapter(parts, MOTION)
        parts.model.set_motion(False)
        gated_off = parts.model(clip, text, t)
        parts.model.set_motion(True)
        gated_on = parts.model(clip, text, t)
    assert torch.equal(before, gated_off)
    assert not torch.allclose(gated_on, gated_off)


def test_fresh_adapters_leave_the_model_unchanged():
    parts = build(tiny_config())
    clip = torch.randn(1, 8, 3, 16, 16)
    text = torch.randn(1, parts.config.text_length, parts.text.dim)
    t = torch.tensor([500])
    with torch.no_grad():
        off = parts.model(clip, text, t)
        parts.model.set_motion(True)
        on = parts.model(clip, text, t)
    assert torch.equal(off, on)  # B = 0 at init


@pytest.mark.parametrize("stage", list(Stage))
def test_only_the_stage_parameters_get_gradients(stage):
    parts = build(tiny_config())
    _randomise_adapter(parts, MOTION)  # non-zero adapters, so every path carries gradient
    _randomise_adapter(parts, CONTENT)
    trained = parts.model.freeze_for(stage)
    parts.model.set_motion(True)
    clip = torch.randn(1, 8, 3, 16, 16)
    text = torch.randn(1, parts.config.text_length, parts.text.dim)
    parts.model(clip, text, torch.tensor([300])).square().mean().backward()
    with_grad = {n for n, p in parts.model.named_parameters() if p.grad is not None and p.grad.abs().sum() > 0}
    assert with_grad, "nothing trained"
    assert with_grad <= set(trained)
    if stage is Stage.MOTION:
        assert all(f".{MOTION}." in n for n in with_grad)
    elif stage is Stage.CONTENT:
        assert all(f".{CONTENT}." in n or "patch_embed.layers." in n for n in with_grad)
        assert any("patch_embed.layers." in n for n in with_grad)  # the layer embedding trains in content too
    else:
        assert not any(f".{MOTION}." in n or f".{CONTENT}." in n for n in with_grad)
        assert any("patch_embed.layers." in n for n in with_grad)  # the layer embedding trains in base


def test_base_every_trains_only_every_nth_block_and_the_layer_embedding():
    parts = build(tiny_config(depth=4, base_every=2, lora_every=2))
    names = set(parts.model.stage_parameters(Stage.BASE))
    blocks = {int(n.split("transformer_blocks.")[1].split(".")[0]) for n in names if "transformer_blocks." in n}
    assert blocks == {1, 3}
    assert any("patch_embed.layers." in n for n in names)
    lora_blocks = {int(n.split("transformer_blocks.")[1].split(".")[0])
                   for n in parts.model.stage_parameters(Stage.CONTENT) if "transformer_blocks." in n}
    assert lora_blocks == {1, 3}


def test_v_loss_equals_mse_to_the_velocity_and_the_weighted_x0_loss():
    diffusion = Diffusion(snr_shift=3.0)
    x0 = torch.randn(3, 4, 3, 8, 8, dtype=torch.float64)
    noise = torch.randn_like(x0)
    t = torch.tensor([0, 400, 900])
    prediction = torch.randn_like(x0)
    everything = torch.ones(4, dtype=torch.bool).view(1, -1, 1, 1, 1)
    v = diffusion.velocity(x0, noise, t)
    assert torch.allclose(masked_mse(prediction, v, everything), ((prediction - v) ** 2).mean().float(), rtol=1e-6)
    # The original's loss: w * (D - x0)^2 with D = sqrt(a) x_t - sqrt(1-a) F and w = 1 / (1 - a) (notes §8).
    a = diffusion.alphas_cumprod.double()[t].view(-1, 1, 1, 1, 1)
    x_t = diffusion.add_noise(x0, noise, t)
    denoised = a.sqrt() * x_t - (1 - a).sqrt() * prediction
    weighted = ((denoised - x0) ** 2 / (1 - a)).mean()
    assert torch.allclose(weighted, ((prediction - v) ** 2).mean(), rtol=1e-6)
    # and the scheduler agrees on the target
    assert torch.allclose(diffusion.scheduler.get_velocity(x0.float(), noise.float(), t), v.float(), atol=1e-5)


def test_schedule_has_zero_terminal_snr():
    a = Diffusion(snr_shift=3.0).alphas_cumprod
    assert a[-1] < 1e-6 and a[0] > 0.99


def test_condition_frames_get_no_loss():
    diffusion = Diffusion(snr_shift=1.0)
    given = condition_mask(Layout.RGBA, Task.DECOMPOSE, 2)
    x0 = torch.randn(2, 8, 3, 4, 4)
    text = torch.zeros(2, 3, 4)
    seen = {}

    def model(x, _text, _t, _given):
        seen["input"] = x
        out = torch.zeros_like(x, requires_grad=True)
        seen["out"] = out
        return out

    diffusion.loss(model, x0, text, given, torch.Generator().manual_seed(0)).backward()
    grad = seen["out"].grad
    assert (grad[:, given] == 0).all() and (grad[:, ~given] != 0).any()
    assert torch.equal(seen["input"][:, given], x0[:, given])  # the condition is never noised


@pytest.mark.parametrize("sampler", list(Sampler))
@pytest.mark.parametrize("task", [Task.DECOMPOSE, Task.FG2BG, Task.BG2FG])
def test_condition_slots_of_the_output_equal_the_input_bit_for_bit(task, sampler):
    parts = build(tiny_config())
    given = condition_mask(Layout.RGBA, task, 2)
    condition = torch.rand(1, 8, 3, 16, 16) * 2 - 1
    text = parts.encode_prompts([["0, a", "1, b", "2, c"]])
    out = sample(parts.model, text, (1, 8, 3, 16, 16), given=given, condition=condition, steps=3, cfg=4.0,
                 sampler=sampler, generator=torch.Generator().manual_seed(0))
    assert torch.equal(out[:, given], condition[:, given])
    assert not torch.equal(out[:, ~given], condition[:, ~given])
    assert torch.isfinite(out).all()


def test_guidance_with_every_prompt_empty_runs_one_pass_a_step_and_changes_nothing():
    parts = build(tiny_config())
    given = condition_mask(Layout.RGBA, Task.DECOMPOSE, 2)
    condition = torch.rand(1, 8, 3, 16, 16) * 2 - 1
    batches = []

    def counted(x, text, t, mask):
        batches.append(x.shape[0])
        return parts.model(x, text, t, mask)

    def run(prompts, cfg):
        batches.clear()
        out = sample(counted, parts.encode_prompts([prompts]), (1, 8, 3, 16, 16), given=given,
                     condition=condition, steps=3, cfg=cfg, generator=torch.Generator().manual_seed(0))
        return out, list(batches)

    empty, passes = run(["", "", ""], 4.0)
    assert passes == [1, 1, 1]  # no unconditional branch: it would be the same all-zero prompts
    assert torch.equal(empty, run(["", "", ""], 1.0)[0])
    guided, passes = run(["0, a", "", ""], 4.0)
    assert passes == [2, 2, 2]  # one prompt given: both branches
    assert not torch.equal(guided, run(["0, a", "", ""], 1.0)[0])


def test_sampling_is_reproducible_with_a_seed():
    parts = build(tiny_config())
    text = parts.encode_prompts([["0, a", "1, b", "2, c"]])
    mask = condition_mask(Layout.RGBA, Task.GENERATE, 2)

    def run(seed):
        return sample(parts.model, text, (1, 8, 3, 16, 16), given=mask, steps=2,
                      generator=torch.Generator().manual_seed(seed))

    assert torch.equal(run(1), run(1))
    assert not torch.equal(run(1), run(2))


def test_config_errors_name_the_field():
    with pytest.raises(ConfigError, match="height and width"):
        preset("toy", height=30)
    with pytest.raises(ConfigError, match="unknown"):
        preset("nope")
    with pytest.raises(ConfigError, match="pretrained"):
        build(preset("cogvideox-2b"))
    assert preset("cogvideox-2b").tokens() == 22278  # 3 x 226 text + 16 latent frames x 1350 (notes §1)
    assert preset("cogvideox-2b-320x480").tokens() == 678 + 16 * 600  # 40x60 latents, 20x30 patches


def test_the_2b_presets_checkpoint_gradients_by_default():
    assert preset("cogvideox-2b").gradient_checkpointing and preset("cogvideox-2b-320x480").gradient_checkpointing
    assert not preset("toy").gradient_checkpointing and not preset("small").gradient_checkpointing
    assert len(slots_of(Layout.RGBA)) == 4


def test_geometry_table_gives_the_config_its_latent_shape():
    assert {Space.PIXEL: Geometry(spatial_ratio=1, temporal_ratio=1, channels=3),
                        Space.COGVIDEOX_VAE: Geometry(spatial_ratio=8, temporal_ratio=4, channels=16)} == GEOMETRY
    toy, small = preset("toy"), preset("small")  # toy: 2 pixel frames; small: 16 frames through the VAE
    assert (toy.spatial_ratio, toy.latent_frames, toy.latent_channels) == (1, 2, 3)
    assert (small.spatial_ratio, small.latent_frames, small.latent_channels) == (8, 4, 16)
    assert [GEOMETRY[Space.COGVIDEOX_VAE].latent_frames(n) for n in (1, 4, 8, 9, 16)] == [1, 1, 2, 3, 4]


def test_transformer_kwargs_read_the_geometry_table():
    small = transformer_kwargs(preset("small"))  # 4 sub-clips x 4 latent frames of 32x32x16 latents
    assert (small["in_channels"], small["sample_height"], small["temporal_compression_ratio"]) == (16, 32, 4)
    assert small["sample_frames"] == (16 - 1) * 4 + 1
    toy = transformer_kwargs(preset("toy"))  # 4 sub-clips x 2 pixel frames of 32x32x3
    assert (toy["in_channels"], toy["sample_height"], toy["temporal_compression_ratio"]) == (3, 32, 1)
    assert toy["sample_frames"] == 8


def test_sample_settings_check_their_fields_and_take_sampler_names():
    assert SampleSettings(sampler="dpm").sampler is Sampler.DPM
    assert SampleSettings() == SampleSettings(steps=25, cfg=5.0, sampler=Sampler.DDIM, seed=0)
    with pytest.raises(ConfigError, match="steps"):
        SampleSettings(steps=0)
    with pytest.raises(ConfigError, match="cfg"):
        SampleSettings(cfg=-1.0)


def test_importing_the_config_loads_no_torch():
    # The CLI reads its defaults from the config module; torch takes seconds to import.
    code = "import layerflow_model.config, sys; print('torch' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "False"
