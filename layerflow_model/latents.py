"""The space the diffusion runs in: raw pixels (toy preset) or the frozen CogVideoX 3D VAE's latents."""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from pathlib import Path

import torch
from diffusers import AutoencoderKLCogVideoX

from layerflow_model.config import GEOMETRY, Space
from layerflow_model.text import require_subfolder


class LatentSpace(torch.nn.Module, ABC):
    """Maps videos (B, T, 3, H, W) in [-1, 1] to latents (B, T', C, h, w) and back. Frozen."""

    def __init__(self, channels: int, spatial_ratio: int, temporal_ratio: int, source: str):
        super().__init__()
        self.channels = channels
        self.spatial_ratio = spatial_ratio
        self.temporal_ratio = temporal_ratio
        self.source = source

    @abstractmethod
    def posterior(self, video: torch.Tensor) -> torch.Tensor:
        """(B, T, 3, H, W) in [-1, 1] -> (B, K, latent_frames(T), channels, *latent_size(H, W)), float32: the
        latent's mean and, where encoding is random (K = 2), its standard deviation; K = 1 where it is exact."""

    def encode(self, video: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """(B, T, 3, H, W) in [-1, 1] -> (B, latent_frames(T), channels, *latent_size(H, W))."""
        return draw_latents(self.posterior(video), generator)

    @abstractmethod
    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """(B, T', C, h, w) -> (B, T, 3, H, W) clamped to [-1, 1]."""

    @abstractmethod
    def latent_frames(self, frames: int) -> int:
        """How many latent frames `encode` makes of a clip of `frames` frames."""

    def latent_size(self, height: int, width: int) -> tuple[int, int]:
        return height // self.spatial_ratio, width // self.spatial_ratio

    def train(self, mode: bool = True) -> LatentSpace:
        # Frozen: a parent's .train() must leave the autoencoder in eval mode.
        return super().train(False)


def draw_latents(posterior: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """(B, K, F, C, h, w) posterior (see `LatentSpace.posterior`) -> (B, F, C, h, w) latents: the mean plus the
    standard deviation times noise drawn on the CPU from `generator` (none drawn when K = 1)."""
    if posterior.shape[1] == 1:
        return posterior[:, 0]
    mean, std = posterior.unbind(1)
    noise = torch.randn(mean.shape, generator=generator, device="cpu").to(mean.device, mean.dtype)
    return mean + std * noise


class PixelSpace(LatentSpace):
    """The identity: the toy preset diffuses RGB pixels directly."""

    def __init__(self):
        geometry = GEOMETRY[Space.PIXEL]
        super().__init__(channels=geometry.channels, spatial_ratio=geometry.spatial_ratio,
                         temporal_ratio=geometry.temporal_ratio, source="pixels")

    def posterior(self, video: torch.Tensor) -> torch.Tensor:
        return video[:, None].float()  # (B, 1, T, 3, H, W): exact

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        return latents.clamp(-1, 1)

    def latent_frames(self, frames: int) -> int:
        return frames


class CogVideoXLatents(LatentSpace):
    """The frozen causal 3D VAE of CogVideoX (diffusers `AutoencoderKLCogVideoX`), latents scaled for diffusion.

    Encodes whatever clip it is given; the caller encodes each layer's sub-clip on its own.
    """

    def __init__(self, vae: AutoencoderKLCogVideoX, source: str):
        levels = len(vae.config.block_out_channels) - 1
        # Only blocks with a downsampler compress time, so a VAE with few blocks compresses less than its config says.
        temporal_levels = min(levels, int(math.log2(vae.config.temporal_compression_ratio)))
        super().__init__(
            channels=vae.config.latent_channels,
            spatial_ratio=2**levels,
            temporal_ratio=2**temporal_levels,
            source=source,
        )
        self.vae = vae.eval().requires_grad_(False)
        self.scaling_factor = float(vae.config.scaling_factor)

    @classmethod
    def from_folder(
        cls, path: str | Path, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32
    ) -> CogVideoXLatents:
        """Load `vae/` from a CogVideoX diffusers folder."""
        vae = AutoencoderKLCogVideoX.from_pretrained(require_subfolder(path, "vae"), torch_dtype=dtype).to(device)
        return cls(vae, source=str(path))

    def latent_frames(self, frames: int) -> int:
        # Measured on diffusers 0.42 with temporal ratio 4: 1->1, 4->1, 8->2, 9->3, 12->3, 16->4, 17->5, 24->6, 25->7.
        # Each downsampler maps n frames to ceil(n / 2) (odd n keep frame 0 apart), and the encoder's 8-frame chunks
        # (the remainder joins the first chunk) do not change that total.
        return math.ceil(frames / self.temporal_ratio)

    def check_clip(self, frames: int, height: int, width: int) -> None:
        """Raise unless decode(encode(clip)) gives back a clip of the same shape.

        The decoder upsamples latents in pairs (a pair gives 8 frames, an odd first triple 9, a lone latent 1), so
        only 1, 8k and 8k+1 frames survive the round trip; 4 frames come back as 1 and 12 as 9.
        """
        chunk = self.vae.num_sample_frames_batch_size
        if frames != 1 and frames % chunk not in (0, 1):
            raise ValueError(f"frames={frames}: the CogVideoX VAE only round-trips 1, {chunk}k or {chunk}k+1 frames")
        if height % self.spatial_ratio or width % self.spatial_ratio:
            raise ValueError(f"height={height}, width={width}: both must be multiples of {self.spatial_ratio}")

    def posterior(self, video: torch.Tensor) -> torch.Tensor:
        """(B, T, 3, H, W) -> (B, 2, T', C, h, w): mean and standard deviation of the posterior, times the VAE's
        scaling factor, float32 (a cached posterior is then sampled afresh at every visit, as encoding would)."""
        self.check_clip(video.shape[1], video.shape[3], video.shape[4])
        x = video.to(self.vae.device, self.vae.dtype).permute(0, 2, 1, 3, 4)  # (B, 3, T, H, W)
        with torch.no_grad():
            dist = self.vae.encode(x).latent_dist
        stats = torch.stack([dist.mean, dist.std], dim=1).float() * self.scaling_factor  # (B, 2, C, T', h, w)
        return stats.permute(0, 1, 3, 2, 4, 5)  # (B, 2, T', C, h, w)

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """(B, T', C, h, w) -> (B, T, 3, H, W) in [-1, 1], float32."""
        z = latents.to(self.vae.device, self.vae.dtype).permute(0, 2, 1, 3, 4) / self.scaling_factor  # (B, C, T', h, w)
        with torch.no_grad():
            video = self.vae.decode(z).sample  # (B, 3, T, H, W)
        return video.permute(0, 2, 1, 3, 4).float().clamp(-1, 1)  # (B, T, 3, H, W)
