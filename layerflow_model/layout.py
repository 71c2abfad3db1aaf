"""The layer layout: which sub-clip sits where along time, which prompt it reads, and what each task gives.

The model sees one clip made of equal-length sub-clips, RGBA `[foreground-on-grey, alpha, background,
blended]` or RGB `[foreground, background, blended]`. This file is the only place that knows that order;
everything else calls `pack`, `unpack`, `slots_of` and `condition_slots`.
"""

from __future__ import annotations

from enum import Enum
from typing import TYPE_CHECKING

import numpy as np

from manifests.layers import Layer

if TYPE_CHECKING:
    import torch

GREY = 0.5  # LayerFlow puts the foreground premultiplied onto mid-grey (notes §3.1)
ALPHA_EPS = 1e-3  # below this alpha the foreground colour is unknown and is left black


class Layout(str, Enum):
    RGBA = "rgba"
    RGB = "rgb"


class Slot(str, Enum):
    """A sub-clip of the model's clip. The foreground slot holds the foreground premultiplied onto grey."""

    FOREGROUND = "foreground"
    ALPHA = "alpha"  # the matte as a grey RGB video (0 -> -1, 1 -> +1)
    BACKGROUND = "background"
    BLENDED = "blended"


# The dataset layer each slot is made from (by `pack`) and gives back (by `unpack`).
LAYER_OF_SLOT: dict[Slot, Layer] = {
    Slot.FOREGROUND: Layer.FOREGROUND,
    Slot.ALPHA: Layer.ALPHA,
    Slot.BACKGROUND: Layer.BACKGROUND,
    Slot.BLENDED: Layer.BLENDED,
}


class Task(str, Enum):
    GENERATE = "generate"  # all layers from three prompts
    DECOMPOSE = "decompose"  # foreground, alpha and background from a blended video
    FG2BG = "fg2bg"  # background and blend for a given foreground (and its alpha)
    BG2FG = "bg2fg"  # foreground (and alpha) and blend for a given background


SLOTS: dict[Layout, tuple[Slot, ...]] = {
    Layout.RGBA: (Slot.FOREGROUND, Slot.ALPHA, Slot.BACKGROUND, Slot.BLENDED),
    Layout.RGB: (Slot.FOREGROUND, Slot.BACKGROUND, Slot.BLENDED),
}

# One prompt per captioned layer, prefixed with its index: "0, <foreground>", "1, <background>", "2, <blended>".
# The alpha sub-clip reads the foreground prompt (the original has no alpha prompt).
PROMPT_LAYERS: tuple[Layer, ...] = (Layer.FOREGROUND, Layer.BACKGROUND, Layer.BLENDED)
PROMPT_OF_SLOT: dict[Slot, int] = {Slot.FOREGROUND: 0, Slot.ALPHA: 0, Slot.BACKGROUND: 1, Slot.BLENDED: 2}

# What each task is given (clean, never noised, no loss). Prompts of given layers are still read, except the
# blended prompt in decomposition, which is always the empty (all-zero) prompt: the blend itself is the input.
GIVEN: dict[Task, tuple[Slot, ...]] = {
    Task.GENERATE: (),
    Task.DECOMPOSE: (Slot.BLENDED,),
    Task.FG2BG: (Slot.FOREGROUND, Slot.ALPHA),
    Task.BG2FG: (Slot.BACKGROUND,),
}
EMPTY_PROMPTS: dict[Task, tuple[int, ...]] = {Task.DECOMPOSE: (PROMPT_OF_SLOT[Slot.BLENDED],)}


def slots_of(layout: Layout) -> tuple[Slot, ...]:
    return SLOTS[Layout(layout)]


def condition_slots(layout: Layout, task: Task) -> tuple[Slot, ...]:
    """The slots a task is given, in layout order (the RGB layout has no alpha slot)."""
    return tuple(slot for slot in slots_of(layout) if slot in GIVEN[Task(task)])


def given_layers(layout: Layout, task: Task) -> tuple[Layer, ...]:
    """The dataset layers a task is given, in layout order (the RGB layout is never given an alpha)."""
    return tuple(LAYER_OF_SLOT[slot] for slot in condition_slots(layout, task))


def condition_mask(layout: Layout, task: Task, frames_per_slot: int) -> torch.Tensor:
    """(F,) bool over the frames (or latent frames) of the packed clip: True where the frame is given."""
    import torch  # here, not at the top: `config` reads this module, and the CLI reads `config` without torch

    given = condition_slots(layout, task)
    return torch.tensor([slot in given for slot in slots_of(layout) for _ in range(frames_per_slot)])


def prompts_for(captions: dict[Layer, str], task: Task = Task.GENERATE) -> list[str]:
    """The per-layer prompts with their index prefix. A prompt the task leaves empty, or whose caption is empty, is
    '' (encoded as the all-zero "dropped" embedding), never the bare index ("0")."""
    empty = EMPTY_PROMPTS.get(Task(task), ())
    texts = [(captions.get(layer) or "").strip() for layer in PROMPT_LAYERS]
    return ["" if i in empty or not text else f"{i}, {text}" for i, text in enumerate(texts)]


def premultiply_on_grey(rgb: np.ndarray, alpha: np.ndarray) -> np.ndarray:
    """Straight RGB in [0, 1] (..., 3) and alpha (...) -> the foreground composited onto mid-grey."""
    a = alpha[..., None]
    return a * rgb + (1.0 - a) * GREY


def unpremultiply_from_grey(fg_on_grey: np.ndarray, alpha: np.ndarray, eps: float = ALPHA_EPS) -> np.ndarray:
    """Invert `premultiply_on_grey` where alpha > eps; pixels with no alpha get black."""
    a = alpha[..., None]
    rgb = (fg_on_grey - (1.0 - a) * GREY) / np.maximum(a, eps)
    return np.where(a > eps, np.clip(rgb, 0.0, 1.0), 0.0)


def pack(layers: dict[Layer, np.ndarray], layout: Layout) -> torch.Tensor:
    """Dataset layers -> the model clip.

    layers: `foreground`, `background`, `blended` as (T, H, W, 3) and `alpha` as (T, H, W), float in [0, 1].
    Returns (len(slots) * T, 3, H, W) float32 in [-1, 1].
    """
    import torch  # see condition_mask

    alpha = np.asarray(layers[Layer.ALPHA], dtype=np.float32)
    by_slot = {
        # Both layouts put the foreground on grey; only RGBA also carries the matte (notes §3.2).
        Slot.FOREGROUND: premultiply_on_grey(np.asarray(layers[Layer.FOREGROUND], dtype=np.float32), alpha),
        Slot.ALPHA: np.repeat(alpha[..., None], 3, axis=-1),
        Slot.BACKGROUND: np.asarray(layers[Layer.BACKGROUND], dtype=np.float32),
        Slot.BLENDED: np.asarray(layers[Layer.BLENDED], dtype=np.float32),
    }
    clip = np.concatenate([by_slot[slot] for slot in slots_of(layout)], axis=0)  # (S*T, H, W, 3)
    return torch.from_numpy(clip * 2.0 - 1.0).permute(0, 3, 1, 2).contiguous()  # (S*T, 3, H, W)


def split_slots(clip: torch.Tensor, layout: Layout) -> dict[Slot, torch.Tensor]:
    """(..., S*T, C, H, W) -> {slot: (..., T, C, H, W)}; works on pixel clips and latent clips alike."""
    slots = slots_of(layout)
    frames = clip.shape[-4]
    if frames % len(slots):
        raise ValueError(f"a {Layout(layout).value} clip needs a multiple of {len(slots)} frames, got {frames}")
    return dict(zip(slots, clip.split(frames // len(slots), dim=-4)))


def join_slots(parts: dict[Slot, torch.Tensor], layout: Layout) -> torch.Tensor:
    """The inverse of `split_slots`."""
    import torch  # see condition_mask

    return torch.cat([parts[slot] for slot in slots_of(layout)], dim=-4)


def unpack(clip: torch.Tensor, layout: Layout) -> dict[Layer, np.ndarray]:
    """The model clip (S*T, 3, H, W) in [-1, 1] -> dataset layers, float in [0, 1].

    RGBA: the foreground is un-premultiplied with the generated alpha (notes §3.3). RGB carries no matte, so
    its result has no `alpha` and its foreground stays on grey.
    """
    parts = {slot: ((x.float().clamp(-1, 1) + 1.0) / 2.0).permute(0, 2, 3, 1).cpu().numpy()
             for slot, x in split_slots(clip, layout).items()}  # (T, H, W, 3) in [0, 1]
    layers = {Layer.BACKGROUND: parts[Slot.BACKGROUND], Layer.BLENDED: parts[Slot.BLENDED]}
    if Slot.ALPHA in parts:
        alpha = parts[Slot.ALPHA].mean(axis=-1)
        layers[Layer.ALPHA] = alpha
        layers[Layer.FOREGROUND] = unpremultiply_from_grey(parts[Slot.FOREGROUND], alpha)
    else:
        layers[Layer.FOREGROUND] = parts[Slot.FOREGROUND]
    return layers
