"""Step and sampling time of the `cogvideox-2b` preset (random weights, full depth) for the RGBA layout at
480x720 with 16 frames per layer (22,278 tokens): a content-LoRA training step with bf16 autocast and gradient
checkpointing (tokens/s and MFU), 50-step DDIM sampling with CFG, and the same forward in plain diffusers
(`CogVideoXTransformer3DModel` without our layer embedding and adapters) at the same token count as the baseline.

    python bench/model_step.py            # one CUDA GPU (H100 / H200)
    python bench/model_step.py --tiny     # the same code on a reduced model, CPU (a smoke test, not a figure)

Prints one JSON line. MFU counts model FLOPs only: forward 2*N*T + 4*L*T^2*d, and the LoRA step as forward
plus activation backward (2 x forward; frozen weights get no weight gradients); recomputation is not counted.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import replace
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from diffusers import CogVideoXTransformer3DModel  # noqa: E402

from layerflow_model.config import Stage, preset  # noqa: E402
from layerflow_model.diffusion import Diffusion, sample  # noqa: E402
from layerflow_model.layout import Task, condition_mask  # noqa: E402
from layerflow_model.model import LayerFlow, transformer_kwargs  # noqa: E402

PEAK_BF16_TFLOPS = {"H100": 989.0, "H200": 989.0}  # dense bf16, SXM


def timed(fn, repeats: int, device: torch.device) -> float:
    fn()  # warm-up
    if device.type == "cuda":
        torch.cuda.synchronize()
    began = time.perf_counter()
    for _ in range(repeats):
        fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return (time.perf_counter() - began) / repeats


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tiny", action="store_true", help="reduced model on CPU (smoke test)")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--sample-steps", type=int, default=50)
    args = parser.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() and not args.tiny else "cpu")
    config = preset("cogvideox-2b")
    if args.tiny:
        config = replace(config, depth=2, heads=2, head_dim=16, height=32, width=48, frames=8, text_tokens=8)
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    kwargs = transformer_kwargs(config)
    torch.manual_seed(0)
    model = LayerFlow(config, CogVideoXTransformer3DModel(text_embed_dim=4096, **kwargs), 4096)
    model.to(device, dtype)
    trained = model.freeze_for(Stage.CONTENT)
    for p in trained.values():
        p.data = p.data.float()  # adapters train in fp32 under bf16 autocast
    model.transformer.enable_gradient_checkpointing()
    optimizer = torch.optim.AdamW(list(trained.values()), lr=1e-4)
    diffusion = Diffusion(config.snr_shift)
    frames = 4 * config.latent_frames
    latents = torch.randn(1, frames, config.latent_channels, config.height // config.spatial_ratio,
                          config.width // config.spatial_ratio, device=device)
    text = torch.randn(1, config.text_length, 4096, device=device)
    given = condition_mask(config.layout, Task.GENERATE, config.latent_frames)

    def train_step() -> None:
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
            loss = diffusion.loss(model, latents, text.to(dtype), given)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    step_s = timed(train_step, args.repeats, device)
    model.eval()

    def forward(net, hidden, prompts) -> None:
        with torch.no_grad(), torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
            net(hidden, prompts, torch.tensor([500], device=device))

    ours_s = timed(lambda: forward(model, latents.to(dtype), text.to(dtype)), args.repeats, device)
    torch.manual_seed(0)
    plain = CogVideoXTransformer3DModel(text_embed_dim=4096, **kwargs).to(device, dtype).eval()
    plain_s = timed(lambda: forward(lambda h, p, t: plain(hidden_states=h, encoder_hidden_states=p, timestep=t),
                                    latents.to(dtype), text.to(dtype)), args.repeats, device)
    sample_s = timed(lambda: sample(model, text.to(dtype), tuple(latents.shape), given=given, steps=args.sample_steps,
                                    cfg=5.0, snr_shift=config.snr_shift), 1, device)

    tokens = config.tokens()
    params = sum(p.numel() for n, p in model.named_parameters())
    forward_flops = 2 * params * tokens + 4 * config.depth * tokens ** 2 * config.width_dim
    step_flops = 2 * forward_flops
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    peak = next((v for k, v in PEAK_BF16_TFLOPS.items() if k in name), None)
    print(json.dumps({
        "device": name, "preset": config.preset, "tiny": args.tiny, "layout": config.layout.value,
        "size": f"{config.height}x{config.width}", "frames_per_layer": config.frames, "tokens": tokens,
        "parameters": params, "trained_parameters": sum(p.numel() for p in trained.values()),
        "train_step_s": round(step_s, 4), "tokens_per_s": round(tokens / step_s, 1),
        "mfu": round(step_flops / step_s / (peak * 1e12), 4) if peak else None,
        "forward_s": round(ours_s, 4), "plain_diffusers_forward_s": round(plain_s, 4),
        "ratio_vs_plain_diffusers": round(ours_s / plain_s, 3),
        "sample_s": round(sample_s, 2), "sample_steps": args.sample_steps, "cfg": 5.0,
        "max_memory_gib": round(torch.cuda.max_memory_allocated(device) / 2**30, 1) if device.type == "cuda" else None,
    }, sort_keys=True))


if __name__ == "__main__":
    main()
