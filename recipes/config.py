"""The settings of the recipes, as frozen dataclasses (light to import: `cli.py` takes its defaults from them)."""

from __future__ import annotations

from dataclasses import dataclass, field

from manifests.errors import ConfigError


@dataclass(frozen=True)
class ReproduceConfig:
    out: str
    base_steps: int = 3000
    motion_steps: int = 150
    content_steps: int = 250
    batch_size: int = 4
    base_lr: float = 1e-3
    lora_lr: float = 5e-4
    task_weights: dict[str, float] = field(default_factory=lambda: {
        "generate": 1.0, "decompose": 3.0, "fg2bg": 1.0, "bg2fg": 1.0})
    sample_steps: int = 25
    cfg: float = 3.0
    seed: int = 0
    no_ray: bool = False  # build without Ray (same stages, one process)

    def __post_init__(self) -> None:
        for name in ("base_steps", "motion_steps", "content_steps", "batch_size", "sample_steps"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name}: must be >= 1, got {getattr(self, name)}")
