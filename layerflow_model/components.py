"""The model with its frozen encoders (text, latent space), built from a config, and checkpoints on disk.

A checkpoint is a folder: `model.safetensors` (what training can change), `text_encoder.safetensors` (the
toy's tiny T5, which has no folder to come from), `ema.safetensors` (optional), `optimizer.pt`, `state.json`
(step, stage) and `config.json` (the resolved model and training config).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file, load_model, save_file, save_model

from layerflow_model.cache import EncoderCache
from layerflow_model.config import ConfigError, EncoderDtype, ModelConfig, Space, TextModel, TrainConfig
from layerflow_model.latents import CogVideoXLatents, LatentSpace, PixelSpace, draw_latents
from layerflow_model.layout import join_slots, slots_of, split_slots
from layerflow_model.model import LayerFlow
from layerflow_model.text import TextEncoder, TinyT5Config

MODEL_FILE = "model.safetensors"
TEXT_FILE = "text_encoder.safetensors"
EMA_FILE = "ema.safetensors"
OPTIMIZER_FILE = "optimizer.pt"
STATE_FILE = "state.json"
CONFIG_FILE = "config.json"
CHECKPOINT_PREFIX = "checkpoint-"
ENCODER_DTYPES = {EncoderDtype.FP32: torch.float32, EncoderDtype.BF16: torch.bfloat16,
                  EncoderDtype.FP16: torch.float16}


@dataclass
class Components:
    config: ModelConfig
    model: LayerFlow
    text: TextEncoder
    latents: LatentSpace

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def to(self, device: torch.device | str) -> Components:
        self.model.to(device)
        self.text.to(device)
        self.latents.to(device)
        return self

    def encode_prompts(self, prompts: list[list[str]], drop: torch.Tensor | None = None,
                       cache: EncoderCache | None = None) -> torch.Tensor:
        """B lists of three prompts -> (B, 3 * n, D). An empty prompt, or one dropped by `drop` (B, 3) bool, is
        all zeros: the unconditional embedding (notes §4.4)."""
        b, layers = len(prompts), len(prompts[0])
        flat = [p for row in prompts for p in row]
        if cache is None:
            embeds = self.text.encode(flat)
        else:
            embeds = cache.get_or_compute(flat, lambda idx: self.text.encode([flat[i] for i in idx]))
        embeds = embeds.to(self.device)  # (B * 3, n, D)
        empty = torch.tensor([p == "" for p in flat], device=self.device)
        if drop is not None:
            empty = empty | drop.to(self.device).reshape(-1)
        embeds = torch.where(empty.view(-1, 1, 1), torch.zeros_like(embeds), embeds)
        return embeds.reshape(b, layers * embeds.shape[1], embeds.shape[2])  # "(b L) n d -> b (L n) d"

    def posterior(self, clips: torch.Tensor) -> torch.Tensor:
        """(B, S*T, 3, H, W) pixels -> (B, K, S*T', C, h, w) (see `LatentSpace.posterior`); each layer sub-clip is
        encoded on its own, so a given layer's latents never depend on the layers to be generated."""
        parts = split_slots(clips.to(self.device), self.config.layout)
        return join_slots({slot: self.latents.posterior(x) for slot, x in parts.items()}, self.config.layout)

    def encode_clip(self, clips: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """(B, S*T, 3, H, W) pixels -> (B, S*T', C, h, w), a draw from `posterior`."""
        return draw_latents(self.posterior(clips), generator)

    def text_cache(self, folder: Path | str) -> EncoderCache:
        dtype = self.config.encoder_dtype.value
        return EncoderCache(Path(folder) / "text", f"{self.text.source}|{self.config.text_tokens}|{dtype}")

    def latent_cache(self, folder: Path | str) -> EncoderCache:
        """Posteriors (not draws) of clip crops, keyed by `Pick.key`."""
        return EncoderCache(Path(folder) / "latents", f"{self.latents.source}|{self.config.space.value}|posterior|"
                                                      f"{self.config.encoder_dtype.value}")

    def decode_clip(self, latents: torch.Tensor) -> torch.Tensor:
        parts = split_slots(latents, self.config.layout)
        return join_slots({slot: self.latents.decode(x) for slot, x in parts.items()}, self.config.layout)

    def latent_shape(self, batch: int) -> tuple[int, int, int, int, int]:
        c = self.config
        return (batch, len(slots_of(c.layout)) * c.latent_frames, c.latent_channels, c.height // c.spatial_ratio,
                c.width // c.spatial_ratio)


def tiny_t5_config(config: ModelConfig) -> TinyT5Config:
    return TinyT5Config(d_model=config.tiny_t5_d_model, num_layers=config.tiny_t5_layers)


def build(config: ModelConfig, device: torch.device | str = "cpu", seed: int = 0) -> Components:
    """Encoders from the pretrained folder in `config.encoder_dtype` (or the tiny T5 and pixel space), the denoiser
    from config, in float32."""
    dtype = ENCODER_DTYPES[config.encoder_dtype]
    if config.needs_pretrained:
        folder = config.pretrained_folder()
        if not folder.is_dir():
            raise ConfigError(f"pretrained: {folder} is not a folder")
    if config.text is TextModel.T5:
        text = TextEncoder.from_folder(config.pretrained_folder(), config.text_tokens, device=device, dtype=dtype)
    else:
        text = TextEncoder.tiny(tiny_t5_config(config), config.text_tokens)
    if config.space is Space.COGVIDEOX_VAE:
        latents = CogVideoXLatents.from_folder(config.pretrained_folder(), device=device, dtype=dtype)
    else:
        latents = PixelSpace()
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = LayerFlow.from_config(config, text.dim)
    return Components(config, model, text, latents).to(device)


# Checkpoints ----------------------------------------------------------------------------------------------------


def checkpoint_dir(out: Path, step: int) -> Path:
    return Path(out) / f"{CHECKPOINT_PREFIX}{step:07d}"


def latest_checkpoint(path: Path) -> Path | None:
    """`path` itself if it is a checkpoint, else the highest-step checkpoint inside it (None if there is none)."""
    path = Path(path)
    if (path / STATE_FILE).exists():
        return path
    found = sorted(p for p in path.glob(f"{CHECKPOINT_PREFIX}*") if (p / STATE_FILE).exists()) if path.is_dir() else []
    return found[-1] if found else None


def resolve_checkpoint(path: Path | str) -> Path:
    found = latest_checkpoint(Path(path))
    if found is None:
        raise ConfigError(f"{path}: no checkpoint there (a checkpoint folder has {STATE_FILE} and {MODEL_FILE})")
    return found


def read_config(checkpoint: Path) -> tuple[ModelConfig, dict | None]:
    data = json.loads((Path(checkpoint) / CONFIG_FILE).read_text())
    return ModelConfig.from_dict(data["model"]), data.get("train")


def save_checkpoint(path: Path, parts: Components, train: TrainConfig | None, state: dict,
                    optimizer: torch.optim.Optimizer | None = None, ema: dict[str, torch.Tensor] | None = None
                    ) -> Path:
    """Write a checkpoint folder atomically (a temporary folder renamed into place)."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.partial")
    if tmp.exists():
        for f in tmp.iterdir():
            f.unlink()
    tmp.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous().cpu() for k, v in parts.model.saved_state().items()}, tmp / MODEL_FILE)
    if parts.config.text is TextModel.TINY_T5:
        save_model(parts.text, str(tmp / TEXT_FILE))  # handles T5's tied embedding, unlike save_file
    if ema is not None:
        save_file({k: v.contiguous().cpu() for k, v in ema.items()}, tmp / EMA_FILE)
    if optimizer is not None:
        torch.save(optimizer.state_dict(), tmp / OPTIMIZER_FILE)
    (tmp / STATE_FILE).write_text(json.dumps(state, indent=2, sort_keys=True) + "\n")
    data = {"model": parts.config.to_dict(), "train": train.to_dict() if train else None}
    (tmp / CONFIG_FILE).write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
    if path.exists():
        for f in path.iterdir():
            f.unlink()
        path.rmdir()
    tmp.rename(path)
    return path


def load_checkpoint(path: Path | str, device: torch.device | str = "cpu", use_ema: bool = True,
                    pretrained: str | None = None) -> tuple[Components, dict]:
    """Build the model a checkpoint describes and load its weights (the EMA weights when present and asked for).
    `pretrained` points a GPU preset at this machine's CogVideoX-2b folder when it moved."""
    checkpoint = resolve_checkpoint(path)
    config, _ = read_config(checkpoint)
    if pretrained:
        config = ModelConfig.from_dict({**config.to_dict(), "pretrained": pretrained})
    parts = build(config, device)
    parts.model.load_saved_state(load_file(checkpoint / MODEL_FILE), checkpoint / MODEL_FILE)
    if use_ema and (checkpoint / EMA_FILE).exists():
        parts.model.load_state_dict(load_file(checkpoint / EMA_FILE), strict=False)
    if config.text is TextModel.TINY_T5:
        load_model(parts.text, str(checkpoint / TEXT_FILE), device=str(parts.device))
    state = json.loads((checkpoint / STATE_FILE).read_text())
    state["path"] = str(checkpoint)
    return parts.to(device), state

