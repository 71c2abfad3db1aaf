"""Tiny random-initialised models written from configs, for tests that must never download real weights.

Each builder writes into a folder (or to a path) and returns the files it wrote as {name in a hub repo: local path},
ready for `HubServer.add_repo` (or, one file, `HubServer.add_url`); the folder itself also loads by path.

Same seed, same bytes: the builders seed torch themselves. torch.save is byte-stable for the same tensors saved
under the same file *name* (the zip archive's inner folder is the file's stem, so `a.pt` and `b.pt` differ), and the
ONNX export and transformers' safetensors are byte-stable too.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import torch

SPECIAL = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
# Words no sidecar of the `tiny_source` fixture uses, so a caption from the model is told apart from a sidecar one.
WORDS = ["sky", "tree", "house", "person", "car", "road", "water", "light", "shadow", "window", "door", "stone",
         "cloud", "field", "river"]
SAM2_HIERA_T = "configs/sam2.1/sam2.1_hiera_t.yaml"


def files_in(folder: Path) -> dict[str, Path]:
    """Every file under `folder`, by its path relative to it (with '/'): a saved model folder as a hub repo."""
    return {path.relative_to(folder).as_posix(): path for path in sorted(folder.rglob("*")) if path.is_file()}


def tiny_blip(folder: Path) -> dict[str, Path]:
    """A 1-layer BLIP (16-wide, 32 px images) and its processor with a locally written BERT vocab (54 kB)."""
    from transformers import (
        BertTokenizer,
        BlipConfig,
        BlipForConditionalGeneration,
        BlipImageProcessor,
        BlipProcessor,
    )

    folder.mkdir(parents=True, exist_ok=True)
    vocab = folder / "vocab.txt"
    vocab.write_text("\n".join(SPECIAL + WORDS) + "\n")
    tokenizer = BertTokenizer(vocab=str(vocab))
    text = {"vocab_size": len(SPECIAL) + len(WORDS), "hidden_size": 16, "intermediate_size": 32,
            "num_hidden_layers": 1, "num_attention_heads": 2, "max_position_embeddings": 64,
            "pad_token_id": 0, "bos_token_id": 2, "sep_token_id": 3, "eos_token_id": 3}  # [PAD], [CLS], [SEP]
    vision = {"hidden_size": 16, "intermediate_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2,
              "image_size": 32, "patch_size": 8}
    torch.manual_seed(0)
    model = BlipForConditionalGeneration(BlipConfig(text_config=text, vision_config=vision, projection_dim=16))
    model.save_pretrained(folder)
    BlipProcessor(BlipImageProcessor(size={"height": 32, "width": 32}), tokenizer).save_pretrained(folder)
    return files_in(folder)


def tiny_llava(folder: Path) -> dict[str, Path]:
    """A 1-layer LLaVA (CLIP vision tower + Llama) whose processor has a chat template: the chat-VLM path (48 kB)."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers
    from transformers import (
        CLIPImageProcessor,
        CLIPVisionConfig,
        LlamaConfig,
        LlavaConfig,
        LlavaForConditionalGeneration,
        LlavaProcessor,
        PreTrainedTokenizerFast,
    )

    folder.mkdir(parents=True, exist_ok=True)
    words = ["<pad>", "<unk>", "<s>", "</s>", "<image>", "user", "assistant", ":", ".", "describe", "the", "object",
             "scene", "image", "in", "one", "sentence", *WORDS]
    backend = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="<unk>"))
    backend.normalizer = normalizers.Lowercase()
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, bos_token="<s>", eos_token="</s>",
                                        pad_token="<pad>", unk_token="<unk>",
                                        extra_special_tokens={"image_token": "<image>"})
    template = ("{% for m in messages %}{{ m['role'] }}: {% for c in m['content'] %}{% if c['type'] == 'image' %}"
                "<image> {% else %}{{ c['text'] }}{% endif %}{% endfor %} {% endfor %}"
                "{% if add_generation_prompt %}assistant:{% endif %}")
    image_processor = CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    processor = LlavaProcessor(image_processor=image_processor, tokenizer=tokenizer, patch_size=8,
                               vision_feature_select_strategy="default", chat_template=template,
                               num_additional_image_tokens=1)  # CLIP's class token, dropped by "default"
    vision = CLIPVisionConfig(hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
                              image_size=32, patch_size=8)
    text = LlamaConfig(vocab_size=len(words), hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                       num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=128, pad_token_id=0,
                       bos_token_id=2, eos_token_id=3)
    torch.manual_seed(0)
    LlavaForConditionalGeneration(LlavaConfig(vision_config=vision, text_config=text, image_token_id=4,
                                              vision_feature_layer=-1)).save_pretrained(folder)
    processor.save_pretrained(folder)
    return files_in(folder)


class TinySaliency(torch.nn.Module):
    """Two convs and a sigmoid with u2net's outputs: (N, 1, H, W) first (`d0`), then a side output."""

    def __init__(self) -> None:
        super().__init__()
        self.features = torch.nn.Conv2d(3, 4, 3, padding=1)
        self.head = torch.nn.Conv2d(4, 1, 3, padding=1)
        self.side = torch.nn.Conv2d(4, 1, 1)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = torch.relu(self.features(x))
        return torch.sigmoid(self.head(h)), torch.sigmoid(self.side(h))


def export_saliency_onnx(path: Path, size: int = 320, dynamic_batch: bool = True, seed: int = 0) -> Path:
    """Write a TinySaliency taking rembg's (N, 3, size, size) `input.1` to `path`; same seed, same weights."""
    torch.manual_seed(seed)
    net = TinySaliency().eval()
    axes = {name: {0: "batch"} for name in ("input.1", "d0", "d1")} if dynamic_batch else None
    with warnings.catch_warnings():
        # The TorchScript exporter needs only `onnx`; the newer one needs onnxscript as well.
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.onnx.export(net, torch.zeros(1, 3, size, size), str(path), dynamo=False,
                          input_names=["input.1"], output_names=["d0", "d1"], dynamic_axes=axes)
    return path


def tiny_rembg_onnx(path: Path, size: int = 320, seed: int = 0) -> dict[str, Path]:
    """A rembg-shaped saliency network (dynamic batch, 1.6 kB) at `path`, to serve under rembg's file name
    (`u2net.onnx`, ... with `size` its preprocessing size: 320, or 1024 for isnet/bria/birefnet)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    return {path.name: export_saliency_onnx(path, size, seed=seed)}


def tiny_sam2_checkpoint(path: Path, config: str = SAM2_HIERA_T, seed: int = 0, half: bool = False
                         ) -> dict[str, Path]:
    """A SAM 2 checkpoint `{"model": state_dict}` of `config` with seeded random weights, as sam2's loader reads it.

    The network is the real one (hiera-t: 38.96 M values), so the file is 156 MB in float32 (156,035,443 bytes as
    `sam2.1_hiera_tiny.pt`; some kB less under a shorter name), or 78 MB with `half` (float16 tensors, which
    `load_state_dict` copies into the float32 model); about 2 s to build and write. No shape and no initial value
    depends on `++model.image_size`: the file loads with `build_sam2_video_predictor(config, ckpt_path=path,
    device="cpu")` at the default 1024 as well as with `hydra_overrides_extra=["++model.image_size=128"]` (what
    test_matting_sam2 shrinks it to). In float32 it holds exactly the network that `torch.manual_seed(seed)` then
    `build_sam2_video_predictor(config)` makes, at any image size (the initial values do not depend on it either).
    """
    from sam2.build_sam import build_sam2_video_predictor

    with torch.random.fork_rng(devices=[]):  # the caller's RNG is left as it was
        torch.manual_seed(seed)
        state = build_sam2_video_predictor(config, ckpt_path=None, device="cpu").state_dict()
    if half:
        state = {name: value.half() if value.is_floating_point() else value for name, value in state.items()}
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"model": state}, path)
    return {path.name: path}


def tiny_open_clip(folder: Path, safetensors: bool = False) -> dict[str, Path]:
    """The `tiny_clip` fixture's model (conftest's TINY_CLIP_ARCH, registered with open_clip here too) as an open_clip
    hub repo: `open_clip_config.json` and `open_clip_pytorch_model.bin`, plus `open_clip_model.safetensors` (which
    open_clip tries first) with `safetensors`. The weights file is written as `tiny.pt`, like the fixture's, so its
    bytes are the fixture's file's (6.6 MB)."""
    import open_clip
    from conftest import TINY_CLIP_ARCH, TINY_CLIP_CONFIG

    folder.mkdir(parents=True, exist_ok=True)
    arch = folder / f"{TINY_CLIP_ARCH}.json"  # open_clip names an architecture by its config file's stem
    arch.write_text(json.dumps(TINY_CLIP_CONFIG))
    open_clip.add_model_config(arch)
    torch.manual_seed(0)
    state = open_clip.create_model(TINY_CLIP_ARCH).state_dict()
    weights = folder / "tiny.pt"
    torch.save(state, weights)
    config = folder / "open_clip_config.json"
    config.write_text(json.dumps({"model_cfg": TINY_CLIP_CONFIG, "preprocess_cfg": {}}))
    files = {"open_clip_config.json": config, "open_clip_pytorch_model.bin": weights}
    if safetensors:
        from safetensors.torch import save_file

        files["open_clip_model.safetensors"] = folder / "open_clip_model.safetensors"
        save_file({name: value.contiguous() for name, value in state.items()}, files["open_clip_model.safetensors"])
    return files
