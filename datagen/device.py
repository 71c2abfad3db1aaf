"""The device a build's learned backends run on (`auto`, `cpu` or `cuda`), checked once at start-up."""

from __future__ import annotations

from manifests.errors import ConfigError


def torch_build() -> str:
    """`torch 2.x (CUDA 12.4 build)` or `torch 2.x (CPU-only build)`: what a missing GPU is explained with."""
    import torch

    build = f"CUDA {torch.version.cuda} build" if torch.version.cuda else "CPU-only build"
    return f"torch {torch.__version__} ({build})"


def resolve_device(setting: str) -> str:
    """`cpu` or `cuda`. Asking for `cuda` where torch sees no GPU is an error, never a silent CPU run."""
    if setting == "cpu":
        return "cpu"
    import torch

    if torch.cuda.is_available():
        return "cuda"
    if setting == "cuda":
        raise ConfigError(f"--device cuda: no CUDA GPU is visible here ({torch_build()}); "
                          "run on a machine with a GPU, or pass --device cpu")
    return "cpu"
