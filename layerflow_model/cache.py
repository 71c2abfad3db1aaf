"""An on-disk cache of encoder outputs (VAE latents of a clip crop, T5 embeddings of a prompt) for the GPU
presets, where the frozen encoders cost more than the denoiser step they feed.

Keys are content descriptions (sample id, crop, layout, encoder); values are safetensors files named by the
key's hash. A cached clip is its VAE posterior (mean and standard deviation), drawn from afresh at every visit.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file


class EncoderCache:
    def __init__(self, folder: Path | str, namespace: str) -> None:
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.namespace = namespace  # what produced the values (encoder source and model config)
        self.hits = 0
        self.misses = 0

    def _path(self, key: str) -> Path:
        digest = hashlib.sha1(f"{self.namespace}\n{key}".encode()).hexdigest()
        return self.folder / digest[:2] / f"{digest}.safetensors"

    def has(self, key: str) -> bool:
        return self._path(key).exists()

    def get(self, key: str) -> torch.Tensor | None:
        path = self._path(key)
        if not path.exists():
            self.misses += 1
            return None
        self.hits += 1
        return load_file(path)["value"]

    def put(self, key: str, value: torch.Tensor) -> None:
        path = self._path(key)
        path.parent.mkdir(exist_ok=True)
        tmp = path.with_name(f".{path.name}.partial")
        save_file({"value": value.detach().contiguous().cpu()}, tmp)
        tmp.replace(path)  # atomic: data-parallel workers may write the same key

    def get_or_compute(self, keys: list[str], compute) -> torch.Tensor:
        """Stack the cached values of `keys`; the missing ones come from `compute(indices)` -> (len(indices), ...)."""
        found = [self.get(key) for key in keys]
        missing = [i for i, value in enumerate(found) if value is None]
        if missing:
            fresh = compute(missing)
            for j, i in enumerate(missing):
                found[i] = fresh[j].cpu()
                self.put(keys[i], fresh[j])
        return torch.stack(found)
