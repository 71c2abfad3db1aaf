"""Per-layer captions. `sidecar` uses the captions shipped beside the sources; `none` leaves them null;
`hf:<model id or local path>` captions the layers' pixels with a transformers image-to-text model or chat VLM.

Learned captions are cached on disk by content (model, prompt, generation settings, pixels), so a retried or
resumed build never captions the same image twice. A degenerate generation ("a", "a a a a", see `degenerate`) is
retried once with another prompt, then left null; every null caption carries its reason (`Captions.missing`).
"""

from __future__ import annotations

import hashlib
import json
import re
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any, ClassVar, Literal, Protocol

import numpy as np

from datagen.rows import SampleRow
from manifests.errors import ConfigError
from manifests.io import write_json_atomic
from manifests.layers import CAPTIONED_LAYERS, Layer, SampleKind
from manifests.metrics import on_grey
from manifests.models import Access, Group, default_access, default_spec, ensure, file_sha256, files_digest, locate
from manifests.storage import cache_root

BLENDED_TEMPLATE = "{foreground} in front of {background}"


class Captions(dict[Layer, str | None]):
    """A caption (or None) per captioned layer, as a plain dict; `missing[layer]` says why a null one is null."""

    def __init__(self, captions: Mapping[Layer, str | None], missing: Mapping[Layer, str] | None = None) -> None:
        super().__init__(captions)
        self.missing: dict[Layer, str] = dict(missing or {})


class Captioner(Protocol):
    """Returns a caption (or None, with the reason in `Captions.missing`) for each of foreground, background and
    blended.

    `needs_pixels`: the caller passes the sample's decoded layers (`read_layers`) as `layers`; otherwise None.
    """

    name: str
    needs_pixels: bool

    def __call__(self, sample: SampleRow, layers: dict[Layer, np.ndarray] | None = None) -> Captions: ...


class NoCaptioner:
    name = "none"
    needs_pixels = False

    def __call__(self, sample: SampleRow, layers: dict[Layer, np.ndarray] | None = None) -> Captions:
        return Captions(dict.fromkeys(CAPTIONED_LAYERS), dict.fromkeys(CAPTIONED_LAYERS,
                                                                       "captioning is off (--captioner none)"))


class SidecarCaptioner:
    """Captions from `<name>.json` / `<name>.txt` sidecars or list-file columns of the two inputs.

    A plain caption of an input describes what it shows: used as the foreground caption when the
    input is the foreground, as the background caption when it is the background. The blended
    caption is the one given for a layered image, else composed from the other two.
    """

    name = "sidecar"
    needs_pixels = False

    def __call__(self, sample: SampleRow, layers: dict[Layer, np.ndarray] | None = None) -> Captions:
        fg, bg = sample.fg.item, sample.bg.item
        foreground = fg.caption_foreground or fg.caption
        if sample.kind is SampleKind.IMAGE_FROZEN and fg.input_id == bg.input_id:
            background, blended = fg.caption_background, fg.caption_blended
        else:
            background = bg.caption_background or bg.caption_blended or bg.caption
            blended = None
        if blended is None and foreground and background:
            blended = compose_blended(foreground, background)
        captions = {Layer.FOREGROUND: foreground, Layer.BACKGROUND: background, Layer.BLENDED: blended}
        return Captions(captions, {layer: "no sidecar caption" for layer, text in captions.items() if not text})


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
# The one retry after a degenerate caption: a chat VLM gets a differently worded instruction; an image-to-text
# model a caption start to continue (passed as its text; cut from the caption if it repeats it).
RETRY_INSTRUCTIONS: dict[Layer, str] = {
    Layer.FOREGROUND: "What is the main object? Answer with a short phrase.",
    Layer.BACKGROUND: "Where was this picture taken? Answer with a short phrase.",
    Layer.BLENDED: "What does this picture show? Answer with a short phrase.",
}
RETRY_PREFIX = "a photograph of"


def layer_images(layers: dict[Layer, np.ndarray]) -> dict[Layer, np.ndarray]:
    """The middle frame (H, W, 3) uint8 of each captioned layer; the foreground over neutral grey, as CLIP sees it."""
    middle = len(layers[Layer.BLENDED]) // 2
    foreground = on_grey(layers[Layer.FOREGROUND][middle : middle + 1], layers[Layer.ALPHA][middle : middle + 1])[0]
    return {Layer.FOREGROUND: foreground, Layer.BACKGROUND: layers[Layer.BACKGROUND][middle],
            Layer.BLENDED: layers[Layer.BLENDED][middle]}


def default_cache_folder() -> Path:
    """`captions/` in the project's cache (`$LAYERFLOW_CACHE_DIR`, else `~/.cache/layerflow-data`)."""
    return cache_root() / "captions"


def folder_sha256(folder: Path) -> str:
    """sha256 over every file's relative name and sha256 (weights, config, tokenizer and processor files alike), as
    the model registry digests a fetched model folder (`files_digest`); dot folders such as the .cache/ of
    `hf download --local-dir` are left out."""
    files = {path.relative_to(folder).as_posix(): {"sha256": file_sha256(path)} for path in folder.rglob("*")
             if path.is_file() and not any(part.startswith(".") for part in path.relative_to(folder).parts)}
    return files_digest(files)


@dataclass(frozen=True)
class CaptionCache:
    """One small JSON file per captioned image, `<folder>/<key[:2]>/<key>.json`, written atomically."""

    folder: Path

    def path(self, key: str) -> Path:
        return self.folder / key[:2] / f"{key}.json"

    def get(self, key: str) -> dict | None:
        """The entry (`{"caption": str | None, "reason": why it is None}`), or None on a miss; an unreadable file
        counts as a miss."""
        try:
            entry = json.loads(self.path(key).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None
        return entry if isinstance(entry, dict) and "caption" in entry and "reason" in entry else None

    def put(self, key: str, caption: str | None, reason: str | None, model: str) -> None:
        write_json_atomic({"caption": caption, "reason": reason, "model": model}, self.path(key))


@dataclass
class HfCaptioner:
    """Captions each layer's middle frame with a transformers image-to-text model (BLIP, ...) or a chat VLM.

    `model` is a Hugging Face model id or a folder written by `save_pretrained` (model and processor). A chat
    VLM (its processor has a chat template) gets `instructions[layer]` as the user turn; others get no prompt.
    The three images of a sample go through one greedy `generate` call (degenerate ones through one more, with the
    retry prompt). The processor loads at construction; the model loads on the first cache miss, so a fully cached
    (resumed) build never loads it.
    """

    needs_pixels: ClassVar[bool] = True

    model: str
    device: Literal["auto", "cpu", "cuda"] = "auto"  # auto: a GPU if torch sees one; cuda: a GPU or a ConfigError
    max_new_tokens: int = 40
    instructions: dict[Layer, str] = field(default_factory=lambda: dict(INSTRUCTIONS))
    cache_dir: str | None = None  # default: $LAYERFLOW_CACHE_DIR/captions, else ~/.cache/layerflow-data/captions
    access: Access = field(default_factory=default_access)  # may a hub model be fetched; the driver's pins
    name: str = field(init=False)  # `hf:<folder>` or `hf:<model id>@<commit>`: what the manifest records

    def __post_init__(self) -> None:
        from manifests.device import resolve_device

        if self.max_new_tokens < 1:
            raise ConfigError(f"captioner hf:{self.model}: max_new_tokens must be >= 1, got {self.max_new_tokens}")
        self.torch_device = resolve_device(self.device)
        self.weights_sha256: str | None = None  # of a fetched model folder's files (a local folder: `identity`)
        self.source, self.revision, self.local_only = self._locate()
        # `hf:<folder>`, or `hf:<model id>@<commit>` for a hub model (loaded from its snapshot folder)
        self.name = f"hf:{self.model}@{self.revision}" if self.revision else f"hf:{self.source}"
        self.processor, self.is_chat = self._load_processor()
        self.prompts = {layer: self._prompt(layer) for layer in CAPTIONED_LAYERS}
        self.cache = CaptionCache(Path(self.cache_dir).expanduser() if self.cache_dir else default_cache_folder())

    def _locate(self) -> tuple[str, str | None, bool]:
        """(the folder to load, the hub commit or None, local_files_only); a hub id goes through the model registry
        (`manifests.models.ensure`: cached, else fetched as `access` allows, else one line naming `models fetch`)."""
        folder = Path(self.model).expanduser()
        if folder.is_dir():
            if not (folder / "config.json").is_file():
                raise ConfigError(f"captioner hf:{self.model}: {folder} has no config.json; pass a folder written "
                                  "by the model's and processor's save_pretrained")
            return str(folder.resolve()), None, True
        if self.model.startswith(("/", ".", "~")) or self.model.count("/") != 1:
            raise ConfigError(f"captioner hf:{self.model}: no such folder; pass a folder written by save_pretrained "
                              "or a Hugging Face model id (org/name)")
        fetched = ensure(f"hf:{self.model}", self.access)
        self.weights_sha256 = fetched.pin.sha256
        return str(fetched.path), fetched.pin.revision, True  # the snapshot folder: nothing more is fetched

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
            return f"{self.model}@{self.revision}"
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
        return self.chat_prompt(self.instructions[layer]) if self.is_chat else None

    def chat_prompt(self, instruction: str) -> str:
        """The chat template around one image and `instruction`, ending where the answer starts."""
        messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": instruction}]}]
        return self.processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)

    def generation(self) -> dict:
        """Greedy decoding: the same pixels always give the same caption."""
        return {"do_sample": False, "num_beams": 1, "max_new_tokens": self.max_new_tokens}

    def cache_key(self, prompt: str | None, image: np.ndarray, retry: str | None = None) -> str:
        head = {"model": self.identity, "prompt": prompt, "retry": retry, "generation": self.generation(),
                "shape": list(image.shape), "dtype": str(image.dtype)}
        digest = hashlib.sha256(json.dumps(head, sort_keys=True).encode())
        digest.update(np.ascontiguousarray(image).tobytes())
        return digest.hexdigest()

    def __call__(self, sample: SampleRow, layers: dict[Layer, np.ndarray] | None = None) -> Captions:
        if layers is None:
            raise ValueError(f"{self.name} captions pixels: pass the sample's layers")
        images = layer_images(layers)
        made = dict(zip(CAPTIONED_LAYERS, self.caption([(layer, images[layer]) for layer in CAPTIONED_LAYERS])))
        return Captions({layer: text for layer, (text, _) in made.items()},
                        {layer: why for layer, (_, why) in made.items() if why})

    def caption(self, items: list[tuple[Layer, np.ndarray]]) -> list[tuple[str | None, str | None]]:
        """(caption, why it is None) per (layer, (H, W, 3) uint8 image).

        A degenerate generation (`degenerate`) is tried once more with the layer's retry prompt (`retry_prompt`);
        still degenerate, the caption is None and the reason says why. The cache misses go through one `generate`
        call and their retries through one more; the cache keeps the final caption and reason."""
        prompts = [self.prompts[layer] for layer, _ in items]
        retries = [retry_prompt(self, layer) for layer, _ in items]
        keys = [self.cache_key(prompt, image, retry) for prompt, retry, (_, image) in zip(prompts, retries, items)]
        entries = [self.cache.get(key) for key in keys]
        misses = [i for i, entry in enumerate(entries) if entry is None]
        if misses:
            first = dict(zip(misses, self.generate([items[i][1] for i in misses], [prompts[i] for i in misses])))
            again = [i for i in misses if degenerate(first[i])]
            second: dict[int, str | None] = {}
            if again:
                second = dict(zip(again, self.generate([items[i][1] for i in again], [retries[i] for i in again])))
            for i in misses:
                text = second.get(i, first[i])  # the retry's, if there was one
                why = degenerate(text)
                caption, reason = text, None
                if why:
                    caption = None
                    reason = f"degenerate ({shown(first[i])}: {degenerate(first[i])}; retry {shown(text)}: {why})"
                self.cache.put(keys[i], caption, reason, self.identity)
                entries[i] = {"caption": caption, "reason": reason}
        return [(entry["caption"], entry["reason"]) for entry in entries]

    def generate(self, images: list[np.ndarray], prompts: list[str | None]) -> list[str | None]:
        """One greedy batch. `prompts`: a chat VLM's whole prompts; for an image-to-text model, all None
        (unconditional) or all a caption start it continues (`RETRY_PREFIX`), cut from the caption if repeated."""
        import torch
        from PIL import Image

        pictures = [Image.fromarray(image) for image in images]  # PIL: no guessing of the channel axis
        if self.is_chat or prompts[0] is not None:
            inputs = self.processor(images=pictures, text=prompts, return_tensors="pt", padding=True)
        else:
            inputs = self.processor(images=pictures, return_tensors="pt")
        inputs = inputs.to(self.torch_device, dtype=self.network.dtype)  # dtype: floating inputs (pixels) only
        with torch.inference_mode():
            tokens = self.network.generate(**inputs, **self.generation())  # (N, prompt + new tokens)
        if self.is_chat:  # decoder-only VLMs return the prompt too
            tokens = tokens[:, inputs["input_ids"].shape[1] :]
        texts = [text.strip() for text in self.processor.batch_decode(tokens, skip_special_tokens=True)]
        if not self.is_chat:  # BLIP-style models return the caption start they were given as part of the caption
            texts = [text[len(start) :].strip() if start and text.lower().startswith(start.lower()) else text
                     for text, start in zip(texts, prompts)]
        return [text or None for text in texts]  # an empty caption is null, never made up


# Words that say nothing about a picture by themselves: a caption made only of these is no caption.
STOP_WORDS = frozenset({
    "a", "an", "the", "this", "that", "these", "those", "it", "its", "is", "are", "there", "here", "of", "in", "on",
    "at", "with", "and", "or", "to", "image", "picture", "photo", "photograph", "frame", "video", "none", "nothing",
    "unknown",
})
MAX_REPEATED_PHRASE = 4  # words; a phrase up to this long said 3 times in a row is a generation loop
SHOWN_CHARS = 40  # how much of a degenerate generation a reason quotes


def degenerate(text: str | None) -> str | None:
    """Why a generated caption cannot be used, or None if it can.

    Unusable: empty or whitespace; fewer than 2 letters or digits ("a", "."); only stop words ("a", "the image");
    one word making up more than half of 4 or more ("a a a a", "dog cat dog dog"); a phrase of up to 4 words
    said 3 times in a row ("the the the", "on the table on the table on the table"). Short real captions pass:
    "a red car", "two dogs on grass".
    """
    if text is None or not text.strip():
        return "empty"
    words = re.findall(r"\w+", text.lower())
    if sum(len(word) for word in words) < 2:
        return "fewer than 2 letters"
    if all(word in STOP_WORDS for word in words):
        return "only stop words"
    if len(words) >= 4 and Counter(words).most_common(1)[0][1] * 2 > len(words):
        return "one word repeated"
    for n in range(1, MAX_REPEATED_PHRASE + 1):
        for i in range(len(words) - 3 * n + 1):
            if words[i : i + n] == words[i + n : i + 2 * n] == words[i + 2 * n : i + 3 * n]:
                return "a phrase repeated"
    return None


def shown(text: str | None) -> str:
    """A generation as a reason quotes it: repr'd, cut to SHOWN_CHARS."""
    text = text or ""
    return repr(text if len(text) <= SHOWN_CHARS else text[:SHOWN_CHARS] + "...")


def retry_prompt(captioner: HfCaptioner, layer: Layer) -> str:
    """What the one retry of `layer` asks: a chat VLM's prompt around `RETRY_INSTRUCTIONS[layer]`, else the caption
    start `RETRY_PREFIX` (given to e.g. BLIP as its text)."""
    return captioner.chat_prompt(RETRY_INSTRUCTIONS[layer]) if captioner.is_chat else RETRY_PREFIX


CAPTIONERS = {"sidecar": SidecarCaptioner, "none": NoCaptioner}
LEARNED = "hf:<model id or local path>"
AUTO = "auto"  # the registry's default captioner for the device (fetched on first use), else `sidecar`


def load_captioner(spec: str, device: str = "auto", access: Access | None = None) -> Captioner:
    """The captioner for `spec`; `device` (auto | cpu | cuda, the build's `--device`) is for learned ones, `access`
    (a build's: offline or not, the driver's pins and `auto` choice) for the weights."""
    spec = auto_captioner(access) if spec == AUTO else spec
    name, _, argument = spec.partition(":")
    if name == "hf" and argument.strip():
        return HfCaptioner(argument.strip(), device=device, access=access or default_access())
    if spec not in CAPTIONERS:
        raise ConfigError(f"captioner: unknown {spec!r}; available here: {AUTO}, {', '.join(CAPTIONERS)}, {LEARNED}")
    return CAPTIONERS[spec]()


def auto_captioner(access: Access | None) -> str:
    """What `auto` runs: the driver's choice, else the CPU default if its weights are here, else `sidecar`."""
    chosen = access.auto(Group.CAPTIONING) if access else None
    if chosen is not None:
        return chosen or "sidecar"
    default = default_spec(Group.CAPTIONING, "cpu")
    return default if locate(default) else "sidecar"


def uses_gpu(spec: str, access: Access | None = None) -> bool:
    """Whether `spec` is a learned captioner (so its stage is scheduled as a GPU actor when the build has GPUs)."""
    name, _, argument = (auto_captioner(access) if spec == AUTO else spec).partition(":")
    return name == "hf" and bool(argument.strip())
