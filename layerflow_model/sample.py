"""Sampling the four tasks from a checkpoint: generate, decompose, fg2bg, bg2fg (mirrors `train.py`)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image

from layerflow_model.components import Components, load_checkpoint
from layerflow_model.config import ConfigError, SampleSettings
from layerflow_model.data import fit
from layerflow_model.diffusion import autocast, sample
from layerflow_model.layout import (
    PROMPT_LAYERS,
    Layout,
    Task,
    condition_mask,
    condition_slots,
    given_layers,
    pack,
    prompts_for,
    unpack,
)
from layerflow_model.outputs import write_layers
from manifests.device import resolve_device
from manifests.layers import Layer

# Which layers the input of a task provides (in the RGBA layout; the RGB layout drops the alpha).
INPUT_LAYERS: dict[Task, tuple[Layer, ...]] = {task: given_layers(Layout.RGBA, task) for task in Task}


def split_prompts(text: str | list[str]) -> dict[Layer, str]:
    """"fg; bg; blended" (the original's CLI form) or a list -> captions by layer; missing ones are ''."""
    parts = [p.strip() for p in (text.split(";") if isinstance(text, str) else text)]
    if len(parts) > len(PROMPT_LAYERS):
        raise ConfigError(f"prompts: at most {len(PROMPT_LAYERS)} (foreground; background; blended), got {len(parts)}")
    return {layer: (parts[i] if i < len(parts) else "") for i, layer in enumerate(PROMPT_LAYERS)}


def read_input(path: Path, task: Task, frames: int, height: int, width: int) -> dict[Layer, np.ndarray]:
    """The given layers of a task from a file: an RGB video for decompose (the blend) and bg2fg (the
    background); for fg2bg a video with alpha (WebM VP9 / ProRes 4444) or a folder of RGBA PNGs."""
    from manifests.video_io import has_alpha, read_video  # PyAV, only needed here

    path = Path(path)
    if not path.exists():
        raise ConfigError(f"--input {path} does not exist")
    if task is Task.FG2BG:
        if path.is_dir():
            files = sorted(p for p in path.iterdir() if p.suffix.lower() == ".png")
            if not files:
                raise ConfigError(f"--input {path}: no PNG frames in the folder")
            rgba = np.stack([np.asarray(Image.open(p).convert("RGBA")) for p in files])
        elif has_alpha(path):
            rgba = read_video(path, "rgba")
        else:
            raise ConfigError(f"--input {path}: fg2bg needs a foreground with alpha (WebM VP9 alpha, ProRes 4444 "
                              "or a folder of RGBA PNGs)")
        clip = {Layer.FOREGROUND: rgba[..., :3], Layer.ALPHA: rgba[..., 3]}
    else:
        clip = {INPUT_LAYERS[task][0]: read_video(path, "rgb24")}
    first = next(iter(clip.values()))
    if len(first) < frames:
        raise ConfigError(f"--input {path}: has {len(first)} frames, the model needs {frames} per layer")
    return {layer: fit(x[:frames].astype(np.float32) / 255.0, height, width) for layer, x in clip.items()}


def run_task(parts: Components, task: Task, captions: dict[Layer, str], given: dict[Layer, np.ndarray] | None,
             settings: SampleSettings) -> dict[Layer, np.ndarray]:
    """One layered clip (float layers in [0, 1]) for `task`; the given layers come back as they went in."""
    config = parts.config
    task = Task(task)
    given = given or {}
    missing = [layer.value for layer in given_layers(config.layout, task) if layer not in given]
    if missing:
        raise ConfigError(f"task {task.value} needs the {', '.join(missing)} layer(s) as input")
    blank = {Layer.FOREGROUND: np.zeros((config.frames, config.height, config.width, 3), np.float32),
             Layer.ALPHA: np.zeros((config.frames, config.height, config.width), np.float32)}
    blank[Layer.BACKGROUND] = blank[Layer.FOREGROUND]
    blank[Layer.BLENDED] = blank[Layer.FOREGROUND]
    clip = pack({**blank, **given}, config.layout)[None]  # (1, S*T, 3, H, W)
    generator = torch.Generator().manual_seed(settings.seed)
    mask = condition_mask(config.layout, task, config.latent_frames)
    parts.model.eval()
    parts.model.set_motion(False)  # sampling never uses the motion adapter (notes §7)
    with torch.no_grad():
        condition = parts.encode_clip(clip, generator) if condition_slots(config.layout, task) else None
        text = parts.encode_prompts([prompts_for(captions, task)])
        with autocast(settings.precision, parts.device):
            latents = sample(parts.model, text, parts.latent_shape(1), given=mask, condition=condition,
                             steps=settings.steps, cfg=settings.cfg, sampler=settings.sampler,
                             snr_shift=config.snr_shift, generator=generator)
        pixels = parts.decode_clip(latents)[0]
    pixels = torch.where(condition_mask(config.layout, task, config.frames).view(-1, 1, 1, 1).to(pixels.device),
                         clip[0].to(pixels.device), pixels)  # the given layers exactly as they went in
    return unpack(pixels, config.layout)


def sample_to_folder(checkpoint: Path, task: Task, prompts: str | list[str], out: Path,
                     input_path: Path | None = None, settings: SampleSettings | None = None,
                     device: str = "auto", fps: float = 8.0) -> dict[str, str]:
    """Load a checkpoint, run one task and write its layers (see `outputs.write_layers`)."""
    settings = settings or SampleSettings()
    if task not in {t.value for t in Task}:
        raise ConfigError(f"--task: {task!r} is not one of {', '.join(t.value for t in Task)}")
    task = Task(task)
    parts, state = load_checkpoint(checkpoint, torch.device(resolve_device(device)))
    config = parts.config
    if INPUT_LAYERS[task] and input_path is None:
        wanted = " and ".join(layer.value for layer in INPUT_LAYERS[task])
        raise ConfigError(f"task {task.value} needs --input (the {wanted})")
    given = read_input(input_path, task, config.frames, config.height, config.width) if input_path else None
    captions = split_prompts(prompts)
    layers = run_task(parts, task, captions, given, settings)
    info = {"task": task.value, "checkpoint": state["path"], "step": state["step"],
            "prompts": prompts_for(captions, task), "input": str(input_path) if input_path else None,
            "steps": settings.steps, "cfg": settings.cfg, "sampler": settings.sampler.value, "seed": settings.seed,
            "model": config.to_dict()}
    return write_layers(out, layers, fps, info)
