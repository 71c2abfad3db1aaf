"""`layerflow-data train`: one stage of training, in this process or data-parallel on Ray Train workers."""

from __future__ import annotations

from layerflow_model.config import DEFAULT_PRESET, Stage, TrainConfig, preset
from layerflow_model.data import check_captions, read_rows
from layerflow_model.train import TrainResult, train
from manifests.dataset import open_dataset


def train_stage(config: TrainConfig, preset_name: str = DEFAULT_PRESET, resume: bool = False,
                ray_address: str | None = None) -> TrainResult:
    """The base stage starts a model from the preset `preset_name` (with `config.pretrained`), the others from
    `config.init`; with `config.workers` > 1 it trains data-parallel with Ray Train (`layerflow_model.ray_train`)."""
    model = preset(preset_name, pretrained=config.pretrained) if config.stage is Stage.BASE else None
    if config.workers > 1:
        from layerflow_model.ray_train import train_distributed  # Ray: only there, and only for several workers

        # The checks each worker makes, made once here first, so an unusable dataset is one line, not a Ray error.
        check_captions(read_rows(open_dataset(config.manifest), config.split), config.allow_empty_captions)

        return train_distributed(config, model, resume=resume, ray_address=ray_address)
    return train(config, model, resume=resume)
