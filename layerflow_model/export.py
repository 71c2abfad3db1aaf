"""A standard checkpoint: a trained LayerFlow written in diffusers / peft naming (safetensors), and the small pipeline
that samples layers from it with a bare diffusers `CogVideoXTransformer3DModel`.

An export folder holds:
- `pytorch_lora_weights.safetensors`: the `content` adapter as peft keys under `transformer.` (diffusers' default
  LoRA file name), its rsLoRA scaling folded into `lora_B`, so `transformer.load_lora_adapter(folder, ...)` and a
  pipeline's `load_lora_weights` read it with their default scaling of 1. The `motion` adapter is left out: sampling
  never uses it (notes §7).
- `transformer_weights.safetensors`: the transformer weights training changed, in diffusers names (every weight for a
  preset trained from scratch; the base stage's blocks for one started from `pretrained/transformer`).
- `layerflow_embeddings.safetensors`: the layer embedding, the given-frame embedding (and the per-layer sub-clip
  embedding), which `LayerFlowPipeline` adds to the output of the transformer's patch embedding with a forward hook.
- `text_encoder.safetensors` (the toy's tiny T5 only) and `layerflow_config.json` (the model config).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from diffusers import CogVideoXTransformer3DModel
from safetensors.torch import load_file, load_model, save_file, save_model
from torch import nn

from layerflow_model.components import ENCODER_DTYPES, TEXT_FILE, Components, load_checkpoint, tiny_t5_config
from layerflow_model.config import ConfigError, ModelConfig, SampleSettings, Space, TextModel
from layerflow_model.latents import CogVideoXLatents, PixelSpace
from layerflow_model.layout import PROMPT_LAYERS, Task, slots_of
from layerflow_model.model import CONTENT, EMBEDDINGS, MOTION, LayerEmbedding, LayerPatchEmbed, bare_transformer
from layerflow_model.sample import run_task, split_prompts
from layerflow_model.text import TextEncoder
from manifests.layers import Layer

LORA_FILE = "pytorch_lora_weights.safetensors"
TRANSFORMER_FILE = "transformer_weights.safetensors"
EMBEDDINGS_FILE = "layerflow_embeddings.safetensors"
CONFIG_FILE = "layerflow_config.json"
ADAPTER_NAME = "layerflow"  # the name the pipeline loads the content adapter under
_PREFIX = "transformer."


def diffusers_name(name: str) -> str:
    """Our parameter name -> the bare diffusers transformer's: no `transformer.` prefix, no peft `base_layer`, the
    patch embedding unwrapped."""
    return name.removeprefix(_PREFIX).replace(".base_layer.", ".").replace("patch_embed.inner.", "patch_embed.")


def export_checkpoint(checkpoint: Path | str, out: Path | str, use_ema: bool = True) -> dict[str, str]:
    """Write the export folder of a checkpoint (see the module docstring); returns {what: path}."""
    parts, state = load_checkpoint(checkpoint, "cpu", use_ema=use_ema)
    model = parts.model
    lora, weights, embeddings = {}, {}, {}
    for name, tensor in model.saved_state().items():
        tensor = tensor.contiguous().float()
        if f".{MOTION}." in name:
            continue
        if f".{CONTENT}." in name:
            module = name.removeprefix(_PREFIX).split(".lora_")[0]
            if ".lora_B." in name:  # fold the rsLoRA scaling into B: loaders apply a scaling of 1 (alpha = rank)
                tensor = tensor * model.transformer.get_submodule(module).scaling[CONTENT]
            lora[name.replace(f".{CONTENT}.", ".")] = tensor  # transformer.<module>.lora_A.weight
        elif any(e in name for e in EMBEDDINGS):
            embeddings[name.removeprefix(f"{_PREFIX}patch_embed.")] = tensor
        else:
            weights[diffusers_name(name)] = tensor
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    written = {"lora": out / LORA_FILE, "transformer": out / TRANSFORMER_FILE, "embeddings": out / EMBEDDINGS_FILE,
               "config": out / CONFIG_FILE}
    save_file(lora, written["lora"])
    save_file(weights, written["transformer"])
    save_file(embeddings, written["embeddings"])
    if parts.config.text is TextModel.TINY_T5:
        written["text_encoder"] = out / TEXT_FILE
        save_model(parts.text, str(written["text_encoder"]))  # as a checkpoint stores it (T5's tied embedding)
    info = {"model": parts.config.to_dict(), "checkpoint": state["path"], "step": state["step"],
            "adapter": {"rank": parts.config.content_rank, "scaling_folded_into_lora_B": True}}
    written["config"].write_text(json.dumps(info, indent=2, sort_keys=True) + "\n")
    return {k: str(v) for k, v in written.items()}


class HookedDenoiser(nn.Module):
    """A bare diffusers transformer whose patch embedding gets LayerFlow's embeddings through a forward hook; called
    like `LayerFlow`: (clip, text, t, given) -> v. It has no motion adapter (an export leaves it out)."""

    def __init__(self, transformer: CogVideoXTransformer3DModel, signals: LayerPatchEmbed) -> None:
        super().__init__()
        self.transformer = transformer
        self.signals = signals
        transformer.patch_embed.register_forward_hook(
            lambda _module, args, output: signals.add_signals(output, args[0].shape[1], args[1]))

    def forward(self, clip: torch.Tensor, text: torch.Tensor, timestep: torch.Tensor,
                given: torch.Tensor | None = None) -> torch.Tensor:
        self.signals.given = given
        try:
            return self.transformer(hidden_states=clip, encoder_hidden_states=text, timestep=timestep,
                                    return_dict=False)[0]
        finally:
            self.signals.given = None

    def set_motion(self, on: bool) -> None:
        if on:
            raise ValueError("an exported LayerFlow has no motion adapter (sampling never uses it)")


def hook_layerflow(transformer: CogVideoXTransformer3DModel, config: ModelConfig, folder: Path | str
                   ) -> HookedDenoiser:
    """Add the export's embeddings to a bare transformer (its adapter already loaded) as a patch-embedding hook."""
    layers = LayerEmbedding(config.width_dim, len(PROMPT_LAYERS), config.text_tokens)
    signals = LayerPatchEmbed(transformer.patch_embed, layers, config.positions, len(slots_of(config.layout)),
                              config.given_embedding, config.given_projection)
    missing, unexpected = signals.load_state_dict(load_file(Path(folder) / EMBEDDINGS_FILE), strict=False)
    missing = [k for k in missing if not k.startswith("inner.")]  # the transformer's own patch embedding
    if missing or unexpected:
        raise ValueError(f"{folder}: embeddings do not fit the config (missing {missing}, unexpected {unexpected})")
    return HookedDenoiser(transformer, signals.to(transformer.device))


class LayerFlowPipeline:
    """Sample layers from an export folder with a bare diffusers transformer:

        pipe = LayerFlowPipeline.from_export("export/", pretrained="CogVideoX-2b")
        layers = pipe("generate", "a cat; a lawn; a cat on a lawn")  # {Layer: float array in [0, 1]}
    """

    def __init__(self, parts: Components) -> None:
        self.parts = parts

    @classmethod
    def from_export(cls, folder: Path | str, pretrained: str | None = None, device: str | torch.device = "cpu"
                    ) -> LayerFlowPipeline:
        folder = Path(folder)
        data = json.loads((folder / CONFIG_FILE).read_text())["model"]
        config = ModelConfig.from_dict({**data, "pretrained": pretrained or data.get("pretrained")})
        dtype = ENCODER_DTYPES[config.encoder_dtype]  # as `build` loads them for `sample`
        if config.text is TextModel.T5:
            text = TextEncoder.from_folder(config.pretrained_folder(), config.text_tokens, device=device, dtype=dtype)
        else:
            text = TextEncoder.tiny(tiny_t5_config(config), config.text_tokens)
            load_model(text, str(folder / TEXT_FILE))
        latents = (CogVideoXLatents.from_folder(config.pretrained_folder(), device=device, dtype=dtype)
                   if config.space is Space.COGVIDEOX_VAE else PixelSpace())
        transformer = bare_transformer(config, text.dim)
        # A transformer from the pretrained folder takes the changed weights; one built from config takes them all.
        missing, unexpected = transformer.load_state_dict(load_file(folder / TRANSFORMER_FILE), strict=False)
        if unexpected or (missing and not config.load_transformer):
            raise ConfigError(f"{folder}: transformer weights do not fit (missing {missing[:3]}, unexpected "
                              f"{unexpected[:3]})")
        transformer.load_lora_adapter(str(folder), weight_name=LORA_FILE, adapter_name=ADAPTER_NAME)
        denoiser = hook_layerflow(transformer, config, folder)
        return cls(Components(config, denoiser, text, latents).to(device))

    def __call__(self, task: Task | str, prompts: str | list[str], given: dict[Layer, np.ndarray] | None = None,
                 settings: SampleSettings | None = None) -> dict[Layer, np.ndarray]:
        """One layered clip for `task` (float layers in [0, 1]); `given`: the task's input layers, (T, H, W[, 3])."""
        return run_task(self.parts, Task(task), split_prompts(prompts), given, settings or SampleSettings())
