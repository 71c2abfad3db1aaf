"""The LayerFlow denoiser: diffusers' CogVideoX transformer with a layer embedding on the prompt tokens and two
named LoRA adapters (`motion`, `content`) on its attention projections.

Read top to bottom: the layer embedding, the patch embedding that adds it, the adapters, then the model.
"""

from __future__ import annotations

import re
import warnings
from pathlib import Path

import torch
from diffusers import CogVideoXTransformer3DModel
from peft import LoraConfig
from peft.tuners.tuners_utils import BaseTunerLayer
from torch import nn

from layerflow_model.config import ModelConfig, Positions, Stage
from layerflow_model.layout import PROMPT_LAYERS, slots_of
from layerflow_model.text import require_subfolder

MOTION, CONTENT = "motion", "content"  # adapter names
ADAPTER_TARGETS = ("to_q", "to_k", "to_v", "to_out.0")  # attention projections of every block (notes §7)
# The parameters LayerFlow adds to the patch embedding (none of them is in a bare CogVideoX transformer): the base
# stage trains them all, the content stage the first two (`LayerFlow.stage_parameters`), the export carries them all.
CONTENT_EMBEDDINGS = ("patch_embed.layers.", "patch_embed.given_embedding")
EMBEDDINGS = (*CONTENT_EMBEDDINGS, "patch_embed.slot_embedding", "patch_embed.given_projection")


class LayerEmbedding(nn.Module):
    """`LayerNorm(Linear(1 -> d)(i))`, one vector per prompt index i, added to every token of prompt i (notes §4.3)."""

    def __init__(self, dim: int, prompts: int, tokens_per_prompt: int) -> None:
        super().__init__()
        self.proj = nn.Linear(1, dim)
        self.norm = nn.LayerNorm(dim)
        self.prompts = prompts
        self.tokens_per_prompt = tokens_per_prompt

    def forward(self) -> torch.Tensor:
        index = torch.arange(self.prompts, device=self.proj.weight.device, dtype=self.proj.weight.dtype)
        per_prompt = self.norm(self.proj(index[:, None]))  # (P, D)
        return per_prompt.repeat_interleave(self.tokens_per_prompt, dim=0)  # (P * n, D)


class LayerPatchEmbed(nn.Module):
    """CogVideoX's patch embedding (text projection, patches, 3D sin-cos positions) plus the layer embedding.

    The sin-cos table gives text positions zero, so adding the layer embedding here is adding it "together
    with the position embedding", as the original does.

    Visual positions, by `Positions`: CONTINUOUS (the original) runs the time index on across sub-clips and
    gives visual tokens no layer signal (notes §5). PER_LAYER restarts time in every sub-clip, so the same
    pixel of every layer has the same position, and adds a learned sub-clip embedding (a deviation, notes
    §12.3): a model trained from scratch then finds the given layer's matching pixels by position at once.
    """

    def __init__(self, inner: nn.Module, layers: LayerEmbedding, positions: Positions, slots: int,
                 given_embedding: bool = True, given_projection: bool = False) -> None:
        super().__init__()
        self.inner = inner
        self.layers = layers
        self.positions = Positions(positions)
        self.slots = slots
        if self.positions is Positions.PER_LAYER:
            inner.use_positional_embeddings = False  # positions are added here instead
            self.slot_embedding = nn.Parameter(torch.zeros(slots, inner.embed_dim))
        # "This frame is given": one learned vector added to every visual token of a clean condition frame, so the
        # multi-task network knows which slots to copy from and which to generate. Zero at init: a fresh one (or a
        # pretrained transformer) starts unchanged.
        self.given_embedding = nn.Parameter(torch.zeros(inner.embed_dim)) if given_embedding else None
        # Pixel-aligned conditioning (a deviation, `ModelConfig.given_projection`): the given slots' patch embeddings
        # at one frame and pixel, side by side (zeros for slots not given), projected and added to the tokens of
        # every slot at that frame and pixel, as image-conditioned diffusion models concatenate the condition on
        # the channels. A model trained from scratch does not otherwise learn to route the given blend's pixels to
        # the alpha slot within a CPU budget: attention must first single out 1 token of 560 (QK-norm caps its
        # logits near sqrt(head_dim)). Zero at init, so a fresh projection leaves the model unchanged.
        self.given_projection = nn.Linear(slots * inner.embed_dim, inner.embed_dim) if given_projection else None
        if self.given_projection is not None:
            nn.init.zeros_(self.given_projection.weight)
            nn.init.zeros_(self.given_projection.bias)
        self.given: torch.Tensor | None = None  # (F,) bool of the current call; set by LayerFlow.forward
        self._table: dict[tuple[int, int, int], torch.Tensor] = {}

    def _per_layer_positions(self, frames: int, height: int, width: int) -> torch.Tensor:
        """(S * frames * h' * w', D): one sub-clip's sin-cos table, repeated for every sub-clip."""
        key = (frames, height, width)
        if key not in self._table:
            inner = self.inner
            pre_compression = (frames - 1) * inner.temporal_compression_ratio + 1
            table = inner._get_positional_embeddings(height, width, pre_compression)[0, inner.max_text_seq_length:]
            self._table[key] = table.repeat(self.slots, 1)
        return self._table[key]

    def forward(self, text_embeds: torch.Tensor, image_embeds: torch.Tensor) -> torch.Tensor:
        embeds = self.inner(text_embeds, image_embeds)  # (B, L_text + N_visual, D)
        return self.add_signals(embeds, text_embeds.shape[1], image_embeds)

    def add_signals(self, embeds: torch.Tensor, text_len: int, image_embeds: torch.Tensor) -> torch.Tensor:
        """What LayerFlow adds to the output of CogVideoX's patch embedding (also applied, as a forward hook, to a
        bare diffusers transformer by `export.LayerFlowPipeline`). image_embeds: the (B, F, C, h, w) input."""
        text = embeds[:, :text_len] + self.layers().to(embeds.dtype)  # (B, L_text, D)
        visual = embeds[:, text_len:]  # (B, N_visual, D)
        projected = self._projected_given(visual, image_embeds.shape[1]) if self.given_projection is not None else 0
        if self.positions is Positions.PER_LAYER:
            frames, height, width = image_embeds.shape[1] // self.slots, image_embeds.shape[-2], image_embeds.shape[-1]
            table = self._per_layer_positions(frames, height, width).to(visual.device, visual.dtype)
            per_slot = visual.shape[1] // self.slots
            visual = visual + table + self.slot_embedding.to(visual.dtype).repeat_interleave(per_slot, dim=0)
        if self.given_embedding is not None:
            visual = visual + given_tokens(self.given, image_embeds.shape[1], visual) * self.given_embedding.to(
                visual.dtype)
        return torch.cat([text, visual + projected], dim=1)

    def _projected_given(self, visual: torch.Tensor, frames: int) -> torch.Tensor:
        """(B, N_visual, D): the projection of the given slots' patch embeddings, the same for every slot."""
        b, n, d = visual.shape
        per_slot = visual.view(b, self.slots, n // self.slots, d)  # slots outermost, as `layout.pack` orders frames
        mask = torch.zeros(frames) if self.given is None else self.given
        given_slot = mask.to(visual.device, visual.dtype).view(self.slots, -1)[:, 0]  # (S,): a slot is given whole
        side_by_side = (per_slot * given_slot.view(1, -1, 1, 1)).permute(0, 2, 1, 3).reshape(b, n // self.slots, -1)
        projected = self.given_projection(side_by_side)  # (B, N_visual / S, D)
        return projected.repeat(1, self.slots, 1)


def given_tokens(given: torch.Tensor | None, frames: int, visual: torch.Tensor) -> torch.Tensor:
    """(N_visual, 1): 1.0 on the tokens of given frames (frames outermost, as CogVideoX orders them), else 0.0.
    Always a tensor, never skipped, so the given embedding is in every graph (DDP needs a gradient for it)."""
    mask = torch.zeros(frames) if given is None else given
    per_frame = visual.shape[1] // frames
    return mask.to(visual.device, visual.dtype).repeat_interleave(per_frame)[:, None]


def transformer_kwargs(config: ModelConfig) -> dict:
    """The diffusers constructor arguments that follow from our config (the rest keep CogVideoX-2b's values)."""
    total_latent_frames = len(slots_of(config.layout)) * config.latent_frames
    ratio = config.geometry.temporal_ratio
    return {
        "num_attention_heads": config.heads,
        "attention_head_dim": config.head_dim,
        "in_channels": config.latent_channels,
        "out_channels": config.latent_channels,
        "num_layers": config.depth,
        "patch_size": config.patch_size,
        "time_embed_dim": config.time_embed_dim,
        "sample_height": config.height // config.spatial_ratio,
        "sample_width": config.width // config.spatial_ratio,
        # The position table is sized for the whole layered clip: its time index runs on across sub-clips.
        "sample_frames": (total_latent_frames - 1) * ratio + 1,
        "temporal_compression_ratio": ratio,
        "max_text_seq_length": config.text_length,
        "spatial_interpolation_scale": config.spatial_interpolation_scale,
        "use_rotary_positional_embeddings": False,
    }


def every_nth_block(depth: int, every: int) -> list[int]:
    """Blocks every-1, 2*every-1, ... (5, 11, 17, 23, 29 for 30 blocks and every 6, as the original); the last
    block when the model is shallower than `every`."""
    return [i for i in range(depth) if i % every == every - 1] or [depth - 1]


def lora_target(config: ModelConfig) -> str:
    """A peft regex naming the attention projections of every `lora_every`-th block."""
    blocks = "|".join(str(i) for i in every_nth_block(config.depth, config.lora_every))
    names = "|".join(re.escape(name) for name in ADAPTER_TARGETS)
    return rf"transformer_blocks\.({blocks})\.attn1\.({names})"


def bare_transformer(config: ModelConfig, text_dim: int) -> CogVideoXTransformer3DModel:
    """The plain diffusers transformer of a config: the pretrained folder's (`load_transformer`), else one built from
    the config, whose weights a checkpoint then sets."""
    kwargs = transformer_kwargs(config)
    if config.load_transformer:
        folder = require_subfolder(config.pretrained_folder(), "transformer")
        return CogVideoXTransformer3DModel.from_pretrained(folder, **kwargs)
    return CogVideoXTransformer3DModel(text_embed_dim=text_dim, **kwargs)


def lora_config(config: ModelConfig, rank: int) -> LoraConfig:
    return LoraConfig(r=rank, lora_alpha=config.lora_alpha, use_rslora=True, target_modules=lora_target(config),
                      init_lora_weights=True)


class LayerFlow(nn.Module):
    """The denoiser: (clip, prompt embeddings, timestep) -> v-prediction for every frame of the clip."""

    def __init__(self, config: ModelConfig, transformer: CogVideoXTransformer3DModel, text_dim: int) -> None:
        super().__init__()
        self.config = config
        if transformer.config.text_embed_dim != text_dim:
            raise ValueError(f"the transformer reads {transformer.config.text_embed_dim}-d text, the encoder gives "
                             f"{text_dim}-d")
        layers = LayerEmbedding(config.width_dim, len(PROMPT_LAYERS), config.text_tokens)
        transformer.patch_embed = LayerPatchEmbed(transformer.patch_embed, layers, config.positions,
                                                  len(slots_of(config.layout)), config.given_embedding,
                                                  config.given_projection)
        for name, rank in ((MOTION, config.motion_rank), (CONTENT, config.content_rank)):
            # B starts at zero, so a fresh adapter leaves the model unchanged. rsLoRA: the scaling is
            # lora_alpha / sqrt(rank), so one learning rate suits every rank (see `ModelConfig.lora_alpha`).
            with warnings.catch_warnings():  # peft warns that a second adapter is a second adapter: it is meant
                warnings.filterwarnings("ignore", message="Already found a `peft_config`")
                transformer.add_adapter(lora_config(config, rank), adapter_name=name)
        self.transformer = transformer
        self.set_motion(False)

    @classmethod
    def from_config(cls, config: ModelConfig, text_dim: int) -> LayerFlow:
        """A randomly initialised model, or (`load_transformer`) the transformer of the pretrained folder."""
        return cls(config, bare_transformer(config, text_dim), text_dim)

    @property
    def layer_embedding(self) -> LayerEmbedding:
        return self.transformer.patch_embed.layers

    def forward(self, clip: torch.Tensor, text: torch.Tensor, timestep: torch.Tensor,
                given: torch.Tensor | None = None) -> torch.Tensor:
        """clip (B, F, C, h, w), given slots clean; text (B, 3 * n, D_text); timestep (B,); given (F,) bool, the
        clean condition frames (None: nothing given) -> v (B, F, C, h, w)."""
        patch = self.transformer.patch_embed
        patch.given = given
        try:
            return self.transformer(hidden_states=clip, encoder_hidden_states=text, timestep=timestep,
                                    return_dict=False)[0]
        finally:
            patch.given = None

    # Adapters -------------------------------------------------------------------------------------------------

    def adapter_layers(self) -> list[BaseTunerLayer]:
        return [m for m in self.transformer.modules() if isinstance(m, BaseTunerLayer)]

    def set_motion(self, on: bool) -> None:
        """The motion gate: on for frozen clips in training, always off for sampling (notes §7)."""
        active = [MOTION, CONTENT] if on else [CONTENT]
        grads = {p: p.requires_grad for p in self.parameters()}
        for layer in self.adapter_layers():
            layer.set_adapter(active)
        for p, flag in grads.items():  # peft's set_adapter also flips requires_grad; the stage decides that
            p.requires_grad_(flag)
        self.motion_on = on

    def stage_parameters(self, stage: Stage) -> dict[str, nn.Parameter]:
        """The parameters a stage trains, by name: base trains the network (or every `base_every`-th block and
        the embeddings), motion only its adapter, content its adapter and the layer and given embeddings (as the
        original's RGBA content stage trains its `txt_embedder`, notes §7). The toy's `given_projection` trains in
        base only: fine-tuned with the content adapter, held-out decomposition lost (alpha IoU 0.259 against 0.286 when
        it is left alone, docs/toy-model.md)."""
        named = dict(self.named_parameters())
        if stage is Stage.MOTION:
            return {n: p for n, p in named.items() if f".{MOTION}." in n}
        if stage is Stage.CONTENT:
            return {n: p for n, p in named.items() if f".{CONTENT}." in n or any(e in n for e in CONTENT_EMBEDDINGS)}
        lora = re.compile(rf"\.({MOTION}|{CONTENT})\.")
        block = re.compile(r"transformer_blocks\.(\d+)\.")
        blocks = set(every_nth_block(self.config.depth, self.config.base_every))

        def trains(name: str) -> bool:
            if lora.search(name):
                return False
            if self.config.base_every == 1 or any(e in name for e in EMBEDDINGS):
                return True
            match = block.search(name)
            return bool(match) and int(match.group(1)) in blocks

        return {n: p for n, p in named.items() if trains(n)}

    def freeze_for(self, stage: Stage) -> dict[str, nn.Parameter]:
        """requires_grad on exactly the parameters of `stage`; returns them."""
        trained = self.stage_parameters(stage)
        for name, p in self.named_parameters():
            p.requires_grad_(name in trained)
        return trained

    def saved_state(self) -> dict[str, torch.Tensor]:
        """What a checkpoint stores: everything any stage can change (all of it unless the transformer came from
        the pretrained folder, whose frozen weights are loaded from there again)."""
        if not self.config.load_transformer:
            return {n: t.detach() for n, t in self.state_dict().items()}
        changed = set()
        for stage in Stage:
            changed |= set(self.stage_parameters(stage))
        return {n: t.detach() for n, t in self.state_dict().items() if n in changed}

    def load_saved_state(self, state: dict[str, torch.Tensor], source: Path | str) -> None:
        missing, unexpected = self.load_state_dict(state, strict=False)
        if unexpected:
            raise ValueError(f"{source}: unexpected weights for this model config: {', '.join(unexpected[:5])}")
        expected = set(self.saved_state())
        lost = sorted(expected & set(missing))
        if lost:
            raise ValueError(f"{source}: {len(lost)} weights missing, e.g. {', '.join(lost[:5])}")
