"""Per-layer captions. `sidecar` uses the captions shipped beside the sources; `none` leaves them null;
`hf:<model id or local path>` captions the layers' pixels with a transformers image-to-text model or chat VLM.

Learned captions are cached on disk by content (model, prompt, generation settings, pixels), so a retried or
resumed build never captions the same image twice.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any, ClassVar, Literal, Protocol

import numpy as np

from datagen.matting.base import file_sha256
from datagen.rows import SampleRow
from manifests.errors import ConfigError
from manifests.io import write_json_atomic
from manifests.layers import CAPTIONED_LAYERS, Layer, SampleKind
from manifests.metrics import on_grey
from manifests.storage import cache_root

BLENDED_TEMPLATE = "{foreground} in front of {background}"


class Captioner(Protocol):
    """Returns a caption (or None) for each of foreground, background and blended.

    `needs_pixels`: the caller passes the sample's decoded layers (`read_layers`) as `layers`; otherwise None.
    """

    name: str
    needs_pixels: bool

    def __call__(self, sample: SampleRow, layers: dict[Layer, np.ndarray] | None = None
                 ) -> dict[Layer, str | None]: ...


class NoCaptioner:
    name = "none"
    needs_pixels = False

    def __call__(self, sample: SampleRow, layers: dict[Layer, np.ndarray] | None = None) -> dict[Layer, str | None]:
        return {Layer.FOREGROUND: None, Layer.BACKGROUND: None, Layer.BLENDED: None}


class SidecarCaptioner:
    """Captions from `<name>.json` / `<name>.txt` sidecars or list-file columns of the two inputs.

    A plain caption of an input describes what it shows: used as the foreground caption when the
    input is the foreground, as the background caption when it is the background. The blended
    caption is the one given for a layered image, else composed from the other two.
    """

    name = "sidecar"
    needs_pixels = False

    def __call__(self, sample: SampleRow, layers: dict[Layer, np.ndarray] | None = None) -> dict[Layer, str | None]:
        fg, bg = sample.fg.item, sample.bg.item
        foreground = fg.caption_foreground or fg.caption
        if sample.kind is SampleKind.IMAGE_FROZEN and fg.input_id == bg.input_id:
            background, blended = fg.caption_background, fg.caption_blended
        else:
            background = bg.caption_background or bg.caption_blended or bg.caption
            blended = None
        if blended is None and foreground and background:
            blended = compose_blended(foreground, background)
        return {Layer.FOREGROUND: foreground, Layer.BACKGROUND: background, Layer.BLENDED: blended}


def compose_blended(foreground: str, background: str) -> str:
    """`a cat's face` + `A brick wall.` -> `a cat's face in front of a brick wall`."""
    fg = foreground.strip().rstrip(".")
    bg = background.strip().rstrip(".")
    first = bg.split(" ", 1)[0]
    if first[:1].isupper() and (len(first) == 1 or first[1:].islower()):  # "A wall" -> "a wall"; "NASA" stays
        bg = bg[0].lower() + bg[1:]
    return BLENDED_TEMPLATE.format(foreground=fg, background=bg)


# Learned captioners --------------------------------------------------------------------------------------------

# What a chat VLM is asked per layer (image-to-text models such as BLIP get no prompt: they caption unconditionally).
INSTRUCTIONS: dict[Layer, str] = {
    Layer.FOREGROUND: "Describe the object in one sentence.",
    Layer.BACKGROUND: "Describe the scene in one sentence.",
    Layer.BLENDED: "Describe the image in one sentence.",
}


def layer_images(layers: dict[Layer, np.ndarray]) -> dict[Layer, np.ndarray]:
    """The middle frame (H, W, 3) uint8 of each captioned layer; the foreground over neutral grey, as CLIP sees it."""
    middle = len(layers[Layer.BLENDED]) // 2
    foreground = on_grey(layers[Layer.FOREGROUND][middle : middle + 1], layers[Layer.ALPHA][middle : middle + 1])[0]
    return {Layer.FOREGROUND: foreground, Layer.BACKGROUND: layers[Layer.BACKGROUND][middle],
            Layer.BLENDED: layers[Layer.BLENDED][middle]}


def default_cache_folder() -> Path:
    """`captions/` in the project's cache (`$LAYERFLOW_CACHE_DIR`, else `~/.cache/layerflow-data`)."""
    return cache_root() / "captions"


def hub_offline() -> bool:
    """HF_HUB_OFFLINE as huggingface_hub reads it, but at call time (its constant is fixed at import)."""
    return os.environ.get("HF_HUB_OFFLINE", "").strip().upper() in ("1", "ON", "YES", "TRUE")


def folder_sha256(folder: Path) -> str:
    """sha256 over every file's relative name and sha256 (weights, config, tokenizer and processor files alike)."""
    digest = hashlib.sha256()
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        relative = path.relative_to(folder)
        if any(part.startswith(".") for part in relative.parts):  # e.g. the .cache/ of `hf download --local-dir`
            continue
        digest.update(relative.as_posix().encode() + b"\0" + file_sha256(path).encode())
    return digest.hexdigest()


@dataclass(frozen=True)
class CaptionCache:
    """One small JSON file per captioned image, `<folder>/<key[:2]>/<key>.json`, written atomically."""

    folder: Path

    def path(self, key: str) -> Path:
        return self.folder / key[:2] / f"{key}.json"

    def get(self, key: str) -> dict | None:
        """The entry (`{"caption": str | None}`), or None on a miss; an unreadable file counts as a miss."""
        try:
            entry = json.loads(self.path(key).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None
        return entry if isinstance(entry, dict) and "caption" in entry else None

    def put(self, key: str, caption: str | None, model: str) -> None:
        write_json_atomic({"caption": caption, "model": model}, self.path(key))


@dataclass
class HfCaptioner:
    """Captions each layer's middle frame with a transformers image-to-text model (BLIP, ...) or a chat VLM.

    `model` is a Hugging Face model id or a folder written by `save_pretrained` (model and processor). A chat
    VLM (its processor has a chat template) gets `instructions[layer]` as the user turn; others get no prompt.
    The three images of a sample go through one greedy `generate` call. The processor loads at construction;
    the model loads on the first cache miss, so a fully cached (resumed) build never loads it.
    """

    needs_pixels: ClassVar[bool] = True

    model: str
    device: Literal["auto", "cpu", "cuda"] = "auto"  # auto: a GPU if torch sees one; cuda: a GPU or a ConfigError
    max_new_tokens: int = 40
    instructions: dict[Layer, str] = field(default_factory=lambda: dict(INSTRUCTIONS))
    cache_dir: str | None = None  # default: $LAYERFLOW_CACHE_DIR/captions, else ~/.cache/layerflow-data/captions
    name: str = field(init=False)  # `hf:<folder>` or `hf:<model id>@<commit>`: what the manifest records

    def __post_init__(self) -> None:
        from manifests.device import resolve_device

        if self.max_new_tokens < 1:
            raise ConfigError(f"captioner hf:{self.model}: max_new_tokens must be >= 1, got {self.max_new_tokens}")
        self.torch_device = resolve_device(self.device)
        self.source, self.revision, self.local_only = self._locate()
        self.name = f"hf:{self.source}" + (f"@{self.revision}" if self.revision else "")
        self.processor, self.is_chat = self._load_processor()
        self.prompts = {layer: self._prompt(layer) for layer in CAPTIONED_LAYERS}
        self.cache = CaptionCache(Path(self.cache_dir).expanduser() if self.cache_dir else default_cache_folder())

    def _locate(self) -> tuple[str, str | None, bool]:
        """(what to load: a folder or a hub id, the hub commit or None, local_files_only); ConfigError if absent."""
        folder = Path(self.model).expanduser()
        if folder.is_dir():
            if not (folder / "config.json").is_file():
                raise ConfigError(f"captioner hf:{self.model}: {folder} has no config.json; pass a folder written "
                                  "by the model's and processor's save_pretrained")
            return str(folder.resolve()), None, True
        if self.model.startswith(("/", ".", "~")) or self.model.count("/") > 1:
            raise ConfigError(f"captioner hf:{self.model}: no such folder; pass a folder written by save_pretrained "
                              "or a Hugging Face model id")
        from huggingface_hub import hf_hub_download

        offline = hub_offline()
        try:
            config_file = Path(hf_hub_download(self.model, "config.json", local_files_only=offline))
        except Exception as exc:  # not cached while offline, no such repo, no network: the model cannot be had
            where = "is not in the local Hugging Face cache and HF_HUB_OFFLINE is set"
            if not offline:
                where = f"could not be fetched ({type(exc).__name__})"
            raise ConfigError(f"captioner hf:{self.model}: no local folder of that name, and the model id {where}; "
                              f"run `hf download {self.model}` where there is internet (then copy HF_HOME here), "
                              "or pass a folder written by save_pretrained") from None
        return self.model, config_file.parent.name, offline  # the cache's snapshots/<commit>/config.json

    def _load_processor(self) -> tuple[Any, bool]:
        from transformers import AutoConfig, AutoModelForImageTextToText, AutoProcessor

        kwargs = {"revision": self.revision, "local_files_only": self.local_only}
        config = AutoConfig.from_pretrained(self.source, **kwargs)
        if type(config) not in AutoModelForImageTextToText._model_mapping:
            raise ConfigError(f"captioner hf:{self.model}: a {config.model_type!r} model is not an image-to-text "
                              "model (AutoModelForImageTextToText cannot load it); pick a captioning model or VLM")
        processor = AutoProcessor.from_pretrained(self.source, **kwargs)
        is_chat = bool(getattr(processor, "chat_template", None))
        if is_chat:
            processor.tokenizer.padding_side = "left"  # decoder-only: prompts must end where generation starts
        return processor, is_chat

    @cached_property
    def identity(self) -> str:
        """The model as the cache knows it: hub id and commit, or the hash of the folder's files."""
        if self.revision:
            return f"{self.source}@{self.revision}"
        return f"sha256:{folder_sha256(Path(self.source))}"

    @cached_property
    def network(self) -> Any:
        """The model, loaded once per worker (on the first cache miss)."""
        from transformers import AutoModelForImageTextToText

        network = AutoModelForImageTextToText.from_pretrained(self.source, revision=self.revision,
                                                              local_files_only=self.local_only)
        return network.to(self.torch_device).eval()

    def _prompt(self, layer: Layer) -> str | None:
        """A chat VLM's whole prompt for `layer` (its chat template around the instruction); None for the others."""
        if not self.is_chat:
            return None
        content = [{"type": "image"}, {"type": "text", "text": self.instructions[layer]}]
        messages = [{"role": "user", "content": content}]
        return self.processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)

    def generation(self) -> dict:
        """Greedy decoding: the same pixels always give the same caption."""
        return {"do_sample": False, "num_beams": 1, "max_new_tokens": self.max_new_tokens}

    def cache_key(self, prompt: str | None, image: np.ndarray) -> str:
        head = {"model": self.identity, "prompt": prompt, "generation": self.generation(),
                "shape": list(image.shape), "dtype": str(image.dtype)}
        digest = hashlib.sha256(json.dumps(head, sort_keys=True).encode())
        digest.update(np.ascontiguousarray(image).tobytes())
        return digest.hexdigest()

    def __call__(self, sample: SampleRow, layers: dict[Layer, np.ndarray] | None = None) -> dict[Layer, str | None]:
        if layers is None:
            raise ValueError(f"{self.name} captions pixels: pass the sample's layers")
        images = layer_images(layers)
        return dict(zip(CAPTIONED_LAYERS, self.caption([(layer, images[layer]) for layer in CAPTIONED_LAYERS])))

    def caption(self, items: list[tuple[Layer, np.ndarray]]) -> list[str | None]:
        """A caption (None: the model produced none) per (layer, (H, W, 3) uint8 image); misses in one batch."""
        prompts = [self.prompts[layer] for layer, _ in items]
        keys = [self.cache_key(prompt, image) for prompt, (_, image) in zip(prompts, items)]
        entries = [self.cache.get(key) for key in keys]
        misses = [i for i, entry in enumerate(entries) if entry is None]
        if misses:
            made = self.generate([items[i][1] for i in misses], [prompts[i] for i in misses])
            for i, caption in zip(misses, made):
                self.cache.put(keys[i], caption, self.identity)
                entries[i] = {"caption": caption}
        return [entry["caption"] for entry in entries]

    def generate(self, images: list[np.ndarray], prompts: list[str | None]) -> list[str | None]:
        import torch
        from PIL import Image

        pictures = [Image.fromarray(image) for image in images]  # PIL: no guessing of the channel axis
        if self.is_chat:
            inputs = self.processor(images=pictures, text=prompts, return_tensors="pt", padding=True)
        else:
            inputs = self.processor(images=pictures, return_tensors="pt")
        inputs = inputs.to(self.torch_device, dtype=self.network.dtype)  # dtype: floating inputs (pixels) only
        with torch.inference_mode():
            tokens = self.network.generate(**inputs, **self.generation())  # (N, prompt + new tokens)
        if self.is_chat:  # decoder-only VLMs return the prompt too
            tokens = tokens[:, inputs["input_ids"].shape[1] :]
        texts = self.processor.batch_decode(tokens, skip_special_tokens=True)
        return [text.strip() or None for text in texts]  # an empty caption is null, never made up


CAPTIONERS = {"sidecar": SidecarCaptioner, "none": NoCaptioner}
LEARNED = "hf:<model id or local path>"


def load_captioner(spec: str, device: str = "auto") -> Captioner:
    """The captioner for `spec`; `device` (auto | cpu | cuda, the build's `--device`) is for learned ones."""
    name, _, argument = spec.partition(":")
    if name == "hf" and argument.strip():
        return HfCaptioner(argument.strip(), device=device)
    if spec not in CAPTIONERS:
        raise ConfigError(f"captioner: unknown {spec!r}; available here: {', '.join(CAPTIONERS)}, {LEARNED}")
    return CAPTIONERS[spec]()


def uses_gpu(spec: str) -> bool:
    """Whether `spec` is a learned captioner (so its stage is scheduled as a GPU actor when the build has GPUs)."""
    name, _, argument = spec.partition(":")
    return name == "hf" and bool(argument.strip())
