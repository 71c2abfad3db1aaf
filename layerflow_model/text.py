"""Frozen T5 text encoders: prompts to fixed-length embeddings, from a CogVideoX folder or a tiny random T5."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import AutoTokenizer, PreTrainedTokenizerBase, T5Config, T5EncoderModel

from manifests.errors import LayerflowError


class ModelFolderError(LayerflowError, FileNotFoundError):
    """A model folder lacks a subfolder that a component is loaded from."""


def require_subfolder(path: str | Path, name: str) -> Path:
    """`path / name`, or a ModelFolderError naming the missing subfolder."""
    folder = Path(path) / name
    if not folder.is_dir():
        raise ModelFolderError(f"{path} has no {name}/ subfolder (expected a CogVideoX diffusers folder)")
    return folder


class ByteTokenizer:
    """UTF-8 bytes as token ids, so a tiny T5 needs no vocabulary file: 0 pad, 1 eos, byte b -> b + 3."""

    vocab_size = 259
    pad_id = 0
    eos_id = 1
    byte_offset = 3

    def __init__(self, max_length: int):
        if max_length < 1:
            raise ValueError(f"max_length must be at least 1 (room for eos), got {max_length}")
        self.max_length = max_length

    def __call__(self, texts: Sequence[str]) -> torch.LongTensor:
        """Ids of shape (N, max_length): bytes truncated to max_length - 1, then eos, then pad."""
        ids = torch.full((len(texts), self.max_length), self.pad_id, dtype=torch.long)
        for row, text in enumerate(texts):
            tokens = [b + self.byte_offset for b in text.encode("utf-8")[: self.max_length - 1]] + [self.eos_id]
            ids[row, : len(tokens)] = torch.tensor(tokens)
        return ids


@dataclass(frozen=True)
class TinyT5Config:
    """A T5 v1.1-style encoder small enough to train from scratch on CPU (the toy preset)."""

    d_model: int = 64
    num_layers: int = 2
    num_heads: int = 4
    d_ff: int = 128
    d_kv: int = 16
    seed: int = 0

    def to_t5_config(self) -> T5Config:
        return T5Config(
            vocab_size=ByteTokenizer.vocab_size,
            d_model=self.d_model,
            d_kv=self.d_kv,
            d_ff=self.d_ff,
            num_layers=self.num_layers,
            num_heads=self.num_heads,
            dropout_rate=0.0,
            feed_forward_proj="gated-gelu",
            pad_token_id=ByteTokenizer.pad_id,
            eos_token_id=ByteTokenizer.eos_id,
            decoder_start_token_id=ByteTokenizer.pad_id,
        )


class FolderTokenizer:
    """A transformers tokenizer called as CogVideoX does: pad to max_length, truncate, append </s>."""

    def __init__(self, tokenizer: PreTrainedTokenizerBase, max_length: int):
        self.tokenizer = tokenizer
        self.max_length = max_length

    def __call__(self, texts: Sequence[str]) -> torch.LongTensor:
        return self.tokenizer(
            list(texts),
            padding="max_length",
            max_length=self.max_length,
            truncation=True,
            add_special_tokens=True,
            return_tensors="pt",
        ).input_ids


class TextEncoder(torch.nn.Module):
    """A frozen T5 encoder mapping N strings to (N, max_length, dim) embeddings.

    Follows `CogVideoXPipeline._get_t5_prompt_embeds`: fixed-length padded ids and no attention mask, so
    padding tokens get embeddings too and every prompt is encoded independently of its batch.
    """

    def __init__(
        self, tokenize: Callable[[Sequence[str]], torch.LongTensor], model: T5EncoderModel, max_length: int, source: str
    ):
        super().__init__()
        self.tokenize = tokenize
        self.model = model.eval().requires_grad_(False)
        self.max_length = max_length
        self.dim: int = model.config.d_model
        self.source = source

    @classmethod
    def from_folder(
        cls, path: str | Path, max_length: int, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32
    ) -> TextEncoder:
        """Load `tokenizer/` and `text_encoder/` from a CogVideoX diffusers folder."""
        tokenizer = AutoTokenizer.from_pretrained(require_subfolder(path, "tokenizer"))
        model = T5EncoderModel.from_pretrained(require_subfolder(path, "text_encoder"), dtype=dtype).to(device)
        return cls(FolderTokenizer(tokenizer, max_length), model, max_length, source=str(path))

    @classmethod
    def tiny(cls, config: TinyT5Config, max_length: int) -> TextEncoder:
        """A randomly initialised tiny T5 over bytes; its weights belong in the model checkpoint."""
        # Seeded in a forked RNG so building the encoder leaves the caller's random stream untouched.
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(config.seed)
            model = T5EncoderModel(config.to_t5_config())
        source = f"tiny-t5:d{config.d_model}-l{config.num_layers} (random init, seed {config.seed})"
        return cls(ByteTokenizer(max_length), model, max_length, source=source)

    def train(self, mode: bool = True) -> TextEncoder:
        # Frozen: a parent's .train() must not switch on the encoder's dropout (real T5 v1.1 has 0.1).
        return super().train(False)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def encode(self, texts: Sequence[str]) -> torch.Tensor:
        """Embeddings (N, max_length, dim), float32 on the encoder's device."""
        if not texts:
            return torch.empty(0, self.max_length, self.dim, device=self.device)
        ids = self.tokenize(texts).to(self.device)  # (N, max_length)
        with torch.no_grad():
            return self.model(input_ids=ids).last_hidden_state.float()  # (N, max_length, dim)
