"""The objective and the sampler around any denoiser: v-prediction on the CogVideoX schedule, in-context
conditions (clean, never noised, no loss), constant classifier-free guidance.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager

import torch
from diffusers import CogVideoXDDIMScheduler, CogVideoXDPMScheduler

from layerflow_model.config import Precision, Sampler

# (clip, text, t, given) -> v; given (F,) bool marks the clean condition frames.
Denoiser = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


def autocast_dtype(precision: Precision, device: torch.device) -> torch.dtype | None:
    """bf16 where asked, or (auto) on a GPU; None (float32) otherwise."""
    if precision is Precision.BF16 or (precision is Precision.AUTO and device.type == "cuda"):
        return torch.bfloat16
    return None


def autocast(precision: Precision, device: torch.device) -> AbstractContextManager:
    """The autocast context the denoiser runs under, in training, sampling and eval alike."""
    dtype = autocast_dtype(Precision(precision), device)
    return torch.autocast(device.type, dtype=dtype, enabled=dtype is not None)


def scheduler_kwargs(snr_shift: float) -> dict:
    """CogVideoX-2b's scheduler config (scaled-linear betas, zero terminal SNR, trailing steps, v-prediction)."""
    return {
        "num_train_timesteps": 1000,
        "beta_start": 0.00085,
        "beta_end": 0.012,
        "beta_schedule": "scaled_linear",
        "prediction_type": "v_prediction",
        "rescale_betas_zero_snr": True,
        "snr_shift_scale": snr_shift,
        "timestep_spacing": "trailing",
        "set_alpha_to_one": True,
        "clip_sample": False,
    }


def make_scheduler(sampler: Sampler, snr_shift: float) -> CogVideoXDDIMScheduler | CogVideoXDPMScheduler:
    cls = CogVideoXDPMScheduler if Sampler(sampler) is Sampler.DPM else CogVideoXDDIMScheduler
    return cls(**scheduler_kwargs(snr_shift))


class Diffusion:
    """Training noise and loss; `alphas_cumprod` is the scheduler's, so training and sampling agree."""

    def __init__(self, snr_shift: float) -> None:
        self.snr_shift = snr_shift
        self.scheduler = make_scheduler(Sampler.DDIM, snr_shift)
        self.alphas_cumprod = self.scheduler.alphas_cumprod.float()  # (1000,)
        self.num_timesteps = len(self.alphas_cumprod)

    def _alpha(self, t: torch.Tensor, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        a = self.alphas_cumprod.to(like.device)[t].view(-1, *([1] * (like.dim() - 1)))
        return a.sqrt(), (1.0 - a).sqrt()

    def add_noise(self, x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        s, sigma = self._alpha(t, x0)
        return s * x0 + sigma * noise

    def velocity(self, x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """v = sqrt(a) * noise - sqrt(1 - a) * x0 (the target of v-prediction)."""
        s, sigma = self._alpha(t, x0)
        return s * noise - sigma * x0

    def draw(self, x0: torch.Tensor, generator: torch.Generator | None = None
             ) -> tuple[torch.Tensor, torch.Tensor]:
        """The timesteps (B,) and noise (B, F, C, h, w) of a batch, drawn on the CPU from `generator`."""
        t = torch.randint(0, self.num_timesteps, (x0.shape[0],), generator=generator, device="cpu").to(x0.device)
        noise = torch.randn(x0.shape, generator=generator, device="cpu").to(x0.device, x0.dtype)
        return t, noise

    def loss(self, model: Denoiser, x0: torch.Tensor, text: torch.Tensor, given: torch.Tensor,
             generator: torch.Generator | None = None,
             drawn: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
        """Mean squared error to v over the generated frames only.

        x0: (B, F, C, h, w) clean clip; given: (F,) bool, True for the condition frames, which stay clean, share
        the sample's timestep and get no loss. Equal to the x0 loss weighted by 1 / (1 - a) (notes §8). `drawn`:
        this batch's (t, noise) when drawn before (a micro-batch of a step draws its slice of the step's draws).
        """
        t, noise = drawn if drawn is not None else self.draw(x0, generator)
        mask = given.to(x0.device).view(1, -1, 1, 1, 1)
        x_t = torch.where(mask, x0, self.add_noise(x0, noise, t))
        prediction = model(x_t, text, t, given)
        return masked_mse(prediction, self.velocity(x0, noise, t), ~mask)


def masked_mse(prediction: torch.Tensor, target: torch.Tensor, generated: torch.Tensor) -> torch.Tensor:
    """MSE over the frames where `generated` (broadcast over (B, F, C, h, w)) is True."""
    weight = generated.expand_as(prediction).float()
    return ((prediction.float() - target.float()) ** 2 * weight).sum() / weight.sum().clamp_min(1)


@torch.no_grad()
def sample(model: Denoiser, text: torch.Tensor, shape: tuple[int, ...], *, given: torch.Tensor,
           condition: torch.Tensor | None = None, steps: int = 25, cfg: float = 5.0,
           sampler: Sampler = Sampler.DDIM, snr_shift: float = 1.0,
           generator: torch.Generator | None = None) -> torch.Tensor:
    """Denoise a clip of `shape` (B, F, C, h, w) from noise.

    given: (F,) bool; where True the frames are `condition` (clean) at every step and in the result, bit for bit.
    The unconditional branch has all-zero prompt embeddings (notes §4.4); both branches see the condition.
    cfg is constant over the steps (the original's DynamicCFG step-index quirk is not reproduced, notes §8); with
    all-zero `text` (every prompt empty) it has no effect and the unconditional pass is skipped.
    """
    scheduler = make_scheduler(sampler, snr_shift)
    scheduler.set_timesteps(steps)
    device = text.device
    mask = given.to(device).view(1, -1, 1, 1, 1)
    if mask.any() and condition is None:
        raise ValueError("this task gives some layers: pass their clean frames as `condition`")
    condition = torch.zeros(shape, device=device, dtype=text.dtype) if condition is None else condition
    x = torch.randn(shape, generator=generator, device="cpu").to(device, text.dtype) * scheduler.init_noise_sigma
    unconditional = torch.zeros_like(text)
    # With every prompt empty the conditional branch is the unconditional one (both all-zero embeddings), so
    # guidance changes nothing: one pass a step instead of two (decomposition, whose blend has no prompt).
    guided = cfg != 1.0 and bool(text.any())
    previous_x0 = None
    timesteps = scheduler.timesteps
    for i, t in enumerate(timesteps):
        x_in = torch.where(mask, condition, x)
        both = torch.cat([x_in, x_in]) if guided else x_in
        prompts = torch.cat([unconditional, text]) if guided else text
        v = model(both, prompts, t.expand(both.shape[0]).to(device), given).to(x.dtype)  # float32 under autocast
        if guided:
            v_uncond, v_cond = v.chunk(2)
            v = v_uncond + cfg * (v_cond - v_uncond)
        if isinstance(scheduler, CogVideoXDPMScheduler):
            back = timesteps[i - 1] if i > 0 else None
            x, previous_x0 = scheduler.step(v, previous_x0, t, back, x, generator=generator, return_dict=False)
        else:
            x = scheduler.step(v, t, x, generator=generator, return_dict=False)[0]
    return torch.where(mask, condition, x)
