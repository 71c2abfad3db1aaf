"""Data-parallel training with Ray Train: `--workers N` runs `train.train` on N workers (DDP, gloo on CPU,
nccl on GPU). The only module of `layerflow_model` that imports Ray.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

from layerflow_model.components import STATE_FILE, checkpoint_dir
from layerflow_model.config import ModelConfig, TrainConfig
from layerflow_model.logs import LOSS_LOG, LOSS_PLOT
from layerflow_model.train import TrainResult, World, train


def _worker(loop_config: dict) -> None:
    import ray.train
    import torch

    context = ray.train.get_context()
    torch.set_num_threads(loop_config["threads"])
    config = TrainConfig.from_dict(loop_config["train"])
    model = ModelConfig.from_dict(loop_config["model"]) if loop_config["model"] else None
    train(config, model, resume=loop_config["resume"], progress=loop_config["progress"],
          world=World(context.get_world_rank(), context.get_world_size()))


def train_distributed(config: TrainConfig, model: ModelConfig | None = None, *, resume: bool = False,
                      progress: bool = True, ray_address: str | None = None, threads_per_worker: int = 1
                      ) -> TrainResult:
    """Run `train` on `config.workers` Ray Train workers; each draws its slice of every global batch."""
    import ray
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    started = not ray.is_initialized()
    if started:
        ray.init(address=ray_address, include_dashboard=False, log_to_driver=progress)
    try:
        # The workers' GPUs, not the driver's: `auto` uses them when the cluster has one for every worker.
        gpus = ray.cluster_resources().get("GPU", 0)
        use_gpu = config.device.startswith("cuda") or (config.device == "auto" and gpus >= config.workers)
        with tempfile.TemporaryDirectory(prefix="layerflow-train-") as scratch:
            trainer = TorchTrainer(
                _worker,
                train_loop_config={"train": config.to_dict(), "model": model.to_dict() if model else None,
                                   "resume": resume, "progress": progress, "threads": threads_per_worker},
                scaling_config=ScalingConfig(num_workers=config.workers, use_gpu=use_gpu,
                                             resources_per_worker={"CPU": threads_per_worker}),
                run_config=RunConfig(name="layerflow-train", storage_path=scratch),
            )
            trainer.fit()
    finally:
        if started:
            ray.shutdown()
    # Rank 0 wrote the last checkpoint, with what the run measured, to the (shared) run folder.
    checkpoint = checkpoint_dir(Path(config.out), config.steps)
    state = json.loads((checkpoint / STATE_FILE).read_text())
    return TrainResult(checkpoint, state["steps_run"], state["seconds"], state["samples_per_second"], state["loss"],
                       state["trained_parameters"], Path(config.out) / LOSS_LOG, Path(config.out) / LOSS_PLOT)
