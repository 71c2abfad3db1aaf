"""The device learned models run on (`auto`, `cpu`, `cuda`, `cuda:N`), checked once: asking for a GPU that torch
cannot see is an error, never a silent CPU run. torch is imported only when a GPU may be asked for."""

from __future__ import annotations

from enum import Enum

from manifests.errors import ConfigError


class Device(str, Enum):
    """What `--device` offers (the library also takes `cuda:N`; on the command line CUDA_VISIBLE_DEVICES picks one)."""

    AUTO = "auto"  # a GPU if torch sees one, else the CPU
    CPU = "cpu"
    CUDA = "cuda"  # a GPU, or a one-line error


DEVICES = tuple(device.value for device in Device)


def torch_build() -> str:
    """`torch 2.x (CUDA 12.4 build)` or `torch 2.x (CPU-only build)`: what a missing GPU is explained with."""
    import torch

    build = f"CUDA {torch.version.cuda} build" if torch.version.cuda else "CPU-only build"
    return f"torch {torch.__version__} ({build})"


def resolve_device(setting: str) -> str:
    """`cpu`, `cuda` or `cuda:N`: `auto` is a GPU if torch sees one, else the CPU."""
    if setting == "cpu":
        return "cpu"
    kind, _, index = setting.partition(":")
    if setting != "auto" and (kind != "cuda" or (index and not index.isdigit())):
        raise ConfigError(f"--device: one of auto, cpu, cuda or cuda:N, got {setting!r}")
    import torch

    if not torch.cuda.is_available():
        if setting == "auto":
            return "cpu"
        raise ConfigError(f"--device {setting}: no CUDA GPU is visible here ({torch_build()}); "
                          "run on a machine with a GPU, or pass --device cpu")
    if index and int(index) >= torch.cuda.device_count():
        raise ConfigError(f"--device {setting}: this machine has {torch.cuda.device_count()} GPU(s) (cuda:0 ...)")
    return "cuda" if setting == "auto" else setting
