"""CLIP with open_clip: which weights a build scores with (resolved once, in the driver), and the scores of a layered
sample: caption alignment per layer, frame consistency, and an embedding.

torch and open_clip are imported where a model is used, so resolving `--clip none` (or importing this module) stays
light.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from manifests.errors import ConfigError, LayerflowError, one_line
from manifests.layers import CAPTIONED_LAYERS, Layer
from manifests.metrics import on_grey
from manifests.models import (
    REGISTRY,
    Access,
    Group,
    ModelUnavailable,
    default_access,
    default_spec,
    ensure,
    file_sha256,
)

DEFAULT_CLIP = "openclip:ViT-B-32:laion2b_s34b_b79k"
SPEC_PREFIX = "openclip"
URL_CACHE = "~/.cache/clip"  # where open_clip's download_pretrained_from_url keeps files fetched by URL


class ClipUnavailable(LayerflowError):
    """CLIP weights or model could not be had; the message is one line saying why and what to do."""


@dataclass(frozen=True)
class ClipSpec:
    """Which CLIP model to score with, as written on the command line: `openclip:<arch>:<tag or file>`."""

    arch: str  # open_clip model name, e.g. "ViT-B-32"
    pretrained: str  # an open_clip pretrained tag, or a path to a local weights file

    @classmethod
    def parse(cls, spec: str) -> ClipSpec:
        import open_clip

        # maxsplit 2: a weights path may itself contain ':'
        parts = spec.split(":", 2)
        if len(parts) != 3 or parts[0] != SPEC_PREFIX or not parts[1] or not parts[2]:
            raise ConfigError(f"--clip {spec!r}: expected {SPEC_PREFIX}:<arch>:<pretrained tag or weights file>, "
                              f"e.g. {DEFAULT_CLIP}")
        parsed = cls(arch=parts[1], pretrained=parts[2])
        if parsed.arch not in open_clip.list_models():
            raise ConfigError(f"--clip {spec!r}: {parsed.arch!r} is not an open_clip model "
                              "(see open_clip.list_models())")
        if parsed.tag is None and not Path(parsed.pretrained).is_file():
            tags = ", ".join(open_clip.list_pretrained_tags_by_model(parsed.arch)) or "none"
            raise ConfigError(f"--clip {spec!r}: {parsed.pretrained!r} is neither a pretrained tag of {parsed.arch} "
                              f"(known: {tags}) nor an existing weights file")
        return parsed

    @property
    def tag(self) -> str | None:
        """The open_clip pretrained tag, or None when `pretrained` is a weights file (a tag wins, as in open_clip)."""
        import open_clip

        return self.pretrained if open_clip.get_pretrained_cfg(self.arch, self.pretrained) else None

    def __str__(self) -> str:
        return f"{SPEC_PREFIX}:{self.arch}:{self.pretrained}"


def resolve_weights(spec: ClipSpec, allow_download: bool) -> Path:
    """The local weights file for `spec`: the file itself, the cached download (HF hub cache / open_clip cache), or
    (allow_download) a fresh download. Raise ClipUnavailable with a one-line reason otherwise.

    Called once in the driver before a build, so workers only ever load a local file. Without `allow_download` no
    network call is made: the caches are looked up on disk where open_clip's own download would put the file.
    """
    import open_clip.pretrained
    from huggingface_hub import constants as hf_constants

    if spec.tag is None:
        return Path(spec.pretrained)
    cfg = open_clip.get_pretrained_cfg(spec.arch, spec.tag)
    cached = _cached_weights(cfg)
    if cached is not None:
        return cached
    if not allow_download:
        raise ClipUnavailable(
            f"CLIP weights {spec.arch}/{spec.tag} are not in the local cache (HF_HUB_CACHE="
            f"{hf_constants.HF_HUB_CACHE}); run once with network access and --clip {spec} to download "
            f"them, or pass --clip {SPEC_PREFIX}:{spec.arch}:/path/to/open_clip_pytorch_model.bin")
    try:
        return Path(open_clip.pretrained.download_pretrained(cfg))
    except Exception as exc:  # any failure here (network, hub, checksum) means the same thing: no weights
        raise ClipUnavailable(f"could not download CLIP weights {spec.arch}/{spec.tag} ({one_line(exc)}); pass "
                              f"--clip {SPEC_PREFIX}:{spec.arch}:/path/to/open_clip_pytorch_model.bin") from exc


def _cached_weights(cfg: dict) -> Path | None:
    """The file open_clip's `download_pretrained(cfg)` would return without downloading, or None; reads disk only."""
    import open_clip.pretrained
    from huggingface_hub import try_to_load_from_cache

    if cfg.get("file"):
        return Path(cfg["file"]) if Path(cfg["file"]).is_file() else None
    if cfg.get("hf_hub"):
        # "org/repo/" names the default file; the safetensors twins come first, as in open_clip's own download
        repo_id, filename = os.path.split(cfg["hf_hub"])
        filename = filename or open_clip.pretrained.HF_WEIGHTS_NAME
        for name in [*open_clip.pretrained._get_safe_alternatives(filename), filename]:
            found = try_to_load_from_cache(repo_id, name)
            if isinstance(found, str):  # the other answers are None and a "known missing" sentinel
                return Path(found)
    if cfg.get("url"):
        target = Path(URL_CACHE).expanduser() / os.path.basename(cfg["url"])
        if target.is_file():
            return target
    return None


class ClipScorer:
    """One open_clip model, loaded once (per worker) from a local weights file."""

    def __init__(self, arch: str, weights: str | Path, device: str = "cpu", tag: str | None = None) -> None:
        """`tag`: the pretrained tag the file was downloaded for; a bare file does not carry the preprocessing
        (mean, std, resize) and activation its tag prescribes, so they are taken from the tag's config."""
        import open_clip

        cfg = open_clip.get_pretrained_cfg(arch, tag) if tag else {}
        self.model, _, self.preprocess = open_clip.create_model_and_transforms(
            arch, pretrained=str(weights), device=device, force_quick_gelu=cfg.get("quick_gelu", False),
            image_mean=cfg.get("mean"), image_std=cfg.get("std"), image_interpolation=cfg.get("interpolation"),
            image_resize_mode=cfg.get("resize_mode"))
        self.model.eval()
        self.tokenizer = open_clip.get_tokenizer(arch)
        self.device = device
        self.model_id = f"{arch}:{tag or Path(weights).name}"
        self.weights_sha256 = file_sha256(Path(weights))

    def embed_images(self, frames: np.ndarray) -> np.ndarray:
        """(N, H, W, 3) uint8 -> (N, D) float32, L2-normalised."""
        import torch
        from PIL import Image

        batch = torch.stack([self.preprocess(Image.fromarray(frame)) for frame in frames]).to(self.device)
        with torch.inference_mode():
            return self.model.encode_image(batch, normalize=True).float().cpu().numpy()

    def embed_texts(self, texts: list[str]) -> np.ndarray:
        """(N, D) float32, L2-normalised."""
        import torch

        tokens = self.tokenizer(texts).to(self.device)
        with torch.inference_mode():
            return self.model.encode_text(tokens, normalize=True).float().cpu().numpy()


@dataclass(frozen=True)
class ClipScores:
    """Cosine similarities in [-1, 1]; None where there is nothing to compare."""

    text_foreground: float | None  # foreground layer over neutral grey vs its caption
    text_background: float | None
    text_blended: float | None
    consistency_mean: float | None  # blended layer: first frame's embedding vs each later frame, mean ...
    consistency_min: float | None  # ... and min (None with 1 frame)
    embedding: list[float]  # mean of the blended frame embeddings, re-normalised (for near-duplicate search)


def evenly_spaced(num_frames: int, max_frames: int) -> np.ndarray:
    """Indices of up to `max_frames` frames spread over `num_frames`, first and last included."""
    return np.rint(np.linspace(0, num_frames - 1, min(num_frames, max_frames))).astype(np.int64)


def _unit(vector: np.ndarray) -> np.ndarray:
    return vector / np.linalg.norm(vector)


def clip_scores(scorer: ClipScorer, foreground: np.ndarray, alpha: np.ndarray, background: np.ndarray,
                blended: np.ndarray, captions: dict[str, str | None], max_frames: int = 8) -> ClipScores:
    """CLIP scores of one sample from its layers ((T,H,W,3) uint8 RGB, (T,H,W) uint8 alpha).

    captions keys: "foreground", "background", "blended"; a None/empty caption gives a None text score. A layer's
    image embedding is the re-normalised mean of its frame embeddings over up to `max_frames` evenly spaced frames;
    consistency uses the same blended frames. All images go through one batched forward pass, all captions another.
    """
    picks = evenly_spaced(len(blended), max_frames)
    images = {Layer.FOREGROUND: on_grey(foreground[picks], alpha[picks]), Layer.BACKGROUND: background[picks],
              Layer.BLENDED: blended[picks]}
    frame_embeddings = scorer.embed_images(np.concatenate([images[layer] for layer in CAPTIONED_LAYERS]))
    per_layer = dict(zip(CAPTIONED_LAYERS, frame_embeddings.reshape(len(CAPTIONED_LAYERS), len(picks), -1)))

    texts = {layer: captions.get(layer.value) for layer in CAPTIONED_LAYERS if captions.get(layer.value)}
    text_embeddings = dict(zip(texts, scorer.embed_texts(list(texts.values())))) if texts else {}
    text_scores = {layer: float(_unit(per_layer[layer].mean(axis=0)) @ text_embeddings[layer])
                   if layer in text_embeddings else None for layer in CAPTIONED_LAYERS}

    blended_frames = per_layer[Layer.BLENDED]  # (K, D)
    consistency = blended_frames[1:] @ blended_frames[0]  # (K - 1,)
    return ClipScores(
        text_foreground=text_scores[Layer.FOREGROUND],
        text_background=text_scores[Layer.BACKGROUND],
        text_blended=text_scores[Layer.BLENDED],
        consistency_mean=float(consistency.mean()) if len(consistency) else None,
        consistency_min=float(consistency.min()) if len(consistency) else None,
        embedding=[float(x) for x in _unit(blended_frames.mean(axis=0))],
    )


@dataclass(frozen=True)
class ClipChoice:
    """The CLIP model a build scores with, resolved once in the driver so workers only load a local file."""

    spec: str | None = None
    arch: str | None = None
    weights: str | None = None
    tag: str | None = None  # the pretrained tag, whose preprocessing settings apply to the weights file
    unavailable: str | None = None  # why there are no CLIP scores
    revision: str | None = None  # the hub commit of registry weights
    sha256: str | None = None  # of the weights file (registry weights; others are hashed by the scorer)


def resolve_clip(setting: str, access: Access | None = None, fetch_auto: bool = False, device: str = "cpu"
                 ) -> ClipChoice:
    """`--clip` -> a local weights file, or the reason CLIP scores will be null (a malformed spec is an error).

    `auto` is the registry's default for `device`: fetched when missing only with `fetch_auto` (a build of real
    sources; never the built-in demo), else only if cached. A named registry spec goes through the model registry
    (`access`: offline or not, and the pins); another open_clip tag through open_clip's own download."""
    if setting == "none":
        return ClipChoice(unavailable="CLIP scoring is off (--clip none)")
    access = access or default_access()
    text = default_spec(Group.CLIP, device) if setting == "auto" else setting
    if text in REGISTRY:
        # The registry's CLIP specs are open_clip model names with pretrained tags (a test checks them against
        # open_clip), so they need no parsing by open_clip: a build without CLIP weights never imports it (4 s).
        _, arch, tag = text.split(":", 2)
        cached_only = access.offline or (setting == "auto" and not fetch_auto)
        try:
            fetched = ensure(text, Access(offline=cached_only, pins=access.pins))
        except ModelUnavailable as exc:
            return ClipChoice(spec=text, unavailable=str(exc))
        return ClipChoice(spec=text, arch=arch, weights=str(fetched.path), tag=tag, revision=fetched.pin.revision,
                          sha256=fetched.pin.sha256)
    spec = ClipSpec.parse(text)
    try:
        weights = resolve_weights(spec, allow_download=setting != "auto" and not access.offline)
    except (ClipUnavailable, ModelUnavailable) as exc:
        return ClipChoice(spec=str(spec), unavailable=str(exc))
    return ClipChoice(spec=str(spec), arch=spec.arch, weights=str(weights), tag=spec.tag)
