"""The training loop: one stage (base, motion or content) of one run, read top to bottom.

Resuming is exact: a step's batch, timesteps, noise and prompt dropout come from RNGs seeded with (seed, step,
rank), and a checkpoint holds the weights, the optimizer and the EMA, so a resumed run repeats the steps an
uninterrupted run would have taken.
"""

from __future__ import annotations

import contextlib
import json
import math
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file
from tqdm import tqdm

from layerflow_model.components import (
    EMA_FILE,
    MODEL_FILE,
    OPTIMIZER_FILE,
    STATE_FILE,
    Components,
    build,
    checkpoint_dir,
    latest_checkpoint,
    load_checkpoint,
    read_config,
    save_checkpoint,
)
from layerflow_model.config import ConfigError, ModelConfig, TrainConfig
from layerflow_model.data import BatchPlan, ClipStore, StepSource, check_captions, read_rows, step_loader
from layerflow_model.diffusion import Diffusion, autocast
from layerflow_model.latents import draw_latents
from layerflow_model.layout import PROMPT_LAYERS, condition_mask
from layerflow_model.logs import LOSS_LOG, LOSS_PLOT, StepLog, write_loss_plot
from layerflow_model.precompute import precompute
from manifests.dataset import open_dataset
from manifests.device import resolve_device

# AdamW's (beta1, beta2). beta2 0.95, not torch's 0.999, as CogVideoX and GPT-style transformers train: the second
# moment then averages about 20 steps instead of 1000, so it keeps up as the gradient scale changes in training.
ADAM_BETAS = (0.9, 0.95)
# A step's RNG seed is seed * SEED_STRIDE + step * STEP_STRIDE + rank, primes chosen so that every (step, rank) of a
# run with fewer than STEP_STRIDE workers gets its own seed, and runs of different seeds do too for their first
# SEED_STRIDE // STEP_STRIDE (991) steps. Changing them changes every batch, noise and dropout draw of a seed, so a
# resumed older run would no longer repeat the steps it missed.
SEED_STRIDE = 1_000_003
STEP_STRIDE = 1009
# The shortest time (s) a rate is divided by: a run resumed at its last step takes no measurable time.
MIN_SECONDS = 1e-9


@dataclass(frozen=True)
class World:
    """This process's place in data-parallel training (rank 0 of 1 when training alone)."""

    rank: int = 0
    size: int = 1

    @property
    def main(self) -> bool:
        return self.rank == 0


@dataclass(frozen=True)
class TrainResult:
    checkpoint: Path
    steps: int
    seconds: float
    samples_per_second: float
    last_loss: float
    trained_parameters: int
    loss_log: Path | None = None  # OUT/loss.jsonl: a line per step (task, kind, loss, lr, grad norm)
    plot: Path | None = None  # OUT/loss.html: its curves


def learning_rate(config: TrainConfig, step: int) -> float:
    """Linear warm-up, then constant: a function of the step alone, so resumed runs agree."""
    return config.lr * min(1.0, (step + 1) / config.warmup) if config.warmup else config.lr


def prepare(config: TrainConfig, model_config: ModelConfig | None, device: torch.device) -> Components:
    """The model this stage starts from: the previous stage's checkpoint, or a fresh model for `base`."""
    if config.init:
        parts, _ = load_checkpoint(config.init, device, use_ema=True, pretrained=config.pretrained)
        return parts
    if model_config is None:
        raise ConfigError("the base stage needs a model preset (e.g. --preset toy)")
    return build(model_config, device, seed=config.seed)


def ema_decay(config: TrainConfig, step: int) -> float:
    """The EMA decay of `step` (0-based): `config.ema`, warmed up as min(ema, (1 + step) / (10 + step))."""
    return min(config.ema, (1 + step) / (10 + step)) if config.ema_warmup else config.ema


def prompt_drop(batch: int, config: ModelConfig, generator: torch.Generator) -> torch.Tensor:
    """(batch, 3) bool, the prompts to zero: each independently with `prompt_dropout`, and all three of a sample
    together with `joint_prompt_dropout` (the unconditional branch of classifier-free guidance)."""
    each = torch.rand(batch, len(PROMPT_LAYERS), generator=generator) < config.prompt_dropout
    every = torch.rand(batch, 1, generator=generator) < config.joint_prompt_dropout
    return each | every


def step_generator(seed: int, step: int, rank: int) -> torch.Generator:
    return torch.Generator().manual_seed(int(seed) * SEED_STRIDE + step * STEP_STRIDE + rank)


def train(config: TrainConfig, model_config: ModelConfig | None = None, *, resume: bool = False,
          progress: bool = True, world: World = World()) -> TrainResult:
    device = torch.device(resolve_device(config.device))
    out = Path(config.out)
    if out.exists() and latest_checkpoint(out) is not None and not resume:
        raise ConfigError(f"{out} already has checkpoints: pass --resume to continue that run, or pick a new --out")
    dataset = open_dataset(config.manifest)  # resolved once, for the rows and for the media
    rows = read_rows(dataset, config.split)
    captions = check_captions(rows, config.allow_empty_captions)  # before the model: an unusable dataset stops here
    if world.main:
        print(captions)
    parts = prepare(config, model_config, device)
    model = parts.model
    trained = model.freeze_for(config.stage)
    if config.gradient_checkpointing or parts.config.gradient_checkpointing:
        model.transformer.enable_gradient_checkpointing()
    params = list(trained.values())
    optimizer = torch.optim.AdamW(params, lr=config.lr, betas=ADAM_BETAS, weight_decay=config.weight_decay)
    ema = {n: p.detach().clone() for n, p in trained.items()} if config.ema else None

    start = 0
    previous = latest_checkpoint(out) if resume else None
    if previous is not None:
        start = _restore(previous, parts, optimizer, ema, config)

    diffusion = Diffusion(parts.config.snr_shift)
    micro = config.batch_size
    plan = BatchPlan(rows, parts.config, config.stage, micro * config.grad_accum, config.task_weights, config.seed,
                     config.mix, config.crop_stride)
    if world.main:
        print(plan.describe())
    text_cache = parts.text_cache(config.cache_dir) if config.cache_dir else None
    latent_cache = parts.latent_cache(config.cache_dir) if config.cache_dir else None
    if config.precompute:
        store = ClipStore(dataset, parts.config.height, parts.config.width)
        done = precompute(parts, plan, store, latent_cache, text_cache, micro, world.rank, world.size,
                          progress and world.main)
        store.close()
        if world.main:
            print(done.describe())
        parts.text.to("cpu")  # the steps read the cache: the frozen encoders give their GPU memory to training
        parts.latents.to("cpu")
        if world.size > 1:
            torch.distributed.barrier()  # every rank's share is in the cache before any step reads it
    source = StepSource(plan, dataset, world.rank, world.size, latent_cache)
    loader = step_loader(source, start, config.steps, config.loader_workers, config.prefetch)
    network = model
    if world.size > 1:
        network = torch.nn.parallel.DistributedDataParallel(model, device_ids=[device] if device.type == "cuda"
                                                            else None)

    log = StepLog(out, start) if world.main else None
    bar = tqdm(total=config.steps, initial=start, desc=f"train {config.stage.value}", unit="step",
               disable=not (progress and world.main), dynamic_ncols=True)
    began, seen, loss_value = time.perf_counter(), 0, math.nan
    model.train()
    for item in loader:
        # 1. The batch of this step (batch_size x grad_accum samples): one kind, one task, one motion-gate setting
        # for every rank. Every random draw of the step is made here for the whole batch, so accumulating
        # micro-batches trains on exactly what one batch of batch_size x grad_accum would.
        step, batch = item.step, item.batch
        generator = step_generator(config.seed, step, world.rank)
        model.set_motion(batch.motion)
        given = condition_mask(parts.config.layout, batch.task, parts.config.latent_frames)
        with torch.no_grad():
            posterior = item.posterior
            if posterior is None:
                posterior = parts.posterior(item.clips)  # (N, K, F, C, h, w)
                if latent_cache is not None:
                    for pick, value in zip(batch.picks, posterior):
                        latent_cache.put(pick.key(parts.config), value)
            x0 = draw_latents(posterior.to(device), generator)  # (N, F, C, h, w)
            drop = prompt_drop(len(batch.prompts), parts.config, generator)
            text = parts.encode_prompts(batch.prompts, drop, text_cache)  # (N, 3 * n, D)
            t, noise = diffusion.draw(x0, generator)
        # 2. v-prediction loss on the generated slots only, micro-batch by micro-batch (each 1 / grad_accum of it).
        lr = learning_rate(config, step)
        for group in optimizer.param_groups:
            group["lr"] = lr
        optimizer.zero_grad(set_to_none=True)
        loss = torch.zeros((), device=device)
        for i in range(config.grad_accum):
            part = slice(i * micro, (i + 1) * micro)
            last = i == config.grad_accum - 1
            sync = contextlib.nullcontext() if last or world.size == 1 else network.no_sync()  # all-reduce once
            with sync, autocast(config.precision, device):
                micro_loss = diffusion.loss(network, x0[part], text[part], given,
                                            drawn=(t[part], noise[part])) / config.grad_accum
            micro_loss.backward()
            loss += micro_loss.detach()
        # 3. Update: one optimizer step per step, whatever grad_accum.
        grad_norm = torch.nn.utils.clip_grad_norm_(params, config.grad_clip or math.inf)  # the norm before clipping
        optimizer.step()
        if ema is not None:
            with torch.no_grad():
                decay = ema_decay(config, step)
                for name, p in trained.items():
                    ema[name].lerp_(p.detach(), 1.0 - decay)
        # 4. Log and checkpoint.
        loss_value = float(loss)
        seen += len(batch.sample_ids) * world.size
        rate = seen / max(time.perf_counter() - began, MIN_SECONDS)
        bar.set_postfix(loss=f"{loss_value:.4f}", samples_s=f"{rate:.1f}", task=batch.task.value, refresh=False)
        bar.update(1)
        done = step + 1
        if log is not None:
            log.write({"step": done, "task": batch.task.value, "kind": batch.kind.value, "loss": loss_value, "lr": lr,
                       "grad_norm": float(grad_norm), "samples_per_second": rate})
        if world.main and (done % config.checkpoint_every == 0 or done == config.steps):
            state = {"step": done, "stage": config.stage.value, "loss": loss_value, "steps_run": done - start,
                     "seconds": time.perf_counter() - began, "samples_per_second": rate,
                     "trained_parameters": sum(p.numel() for p in params), "skipped_short_samples": plan.skipped}
            save_checkpoint(checkpoint_dir(out, done), parts, config, state, optimizer, ema)
            write_loss_plot({config.stage.value: log.path}, out / LOSS_PLOT)
    bar.close()
    if log is not None:
        log.close()
    source.store.close()
    model.set_motion(False)
    seconds = time.perf_counter() - began
    if world.size > 1:
        torch.distributed.barrier()  # rank 0 has written the last checkpoint when every rank returns
    return TrainResult(checkpoint_dir(out, config.steps), config.steps - start, seconds,
                       seen / max(seconds, MIN_SECONDS), loss_value, sum(p.numel() for p in params),
                       out / LOSS_LOG, out / LOSS_PLOT)


def _restore(checkpoint: Path, parts: Components, optimizer: torch.optim.Optimizer,
             ema: dict[str, torch.Tensor] | None, config: TrainConfig) -> int:
    """Load weights, optimizer and EMA of a checkpoint of this same run; returns its step."""
    _, saved_train = read_config(checkpoint)
    if saved_train and (saved_train.get("stage") != config.stage.value or saved_train.get("seed") != config.seed):
        raise ConfigError(f"{checkpoint} is from a different run (stage {saved_train.get('stage')}, seed "
                          f"{saved_train.get('seed')}); resume needs the same stage and seed")
    parts.model.load_saved_state(load_file(checkpoint / MODEL_FILE), checkpoint / MODEL_FILE)
    optimizer.load_state_dict(torch.load(checkpoint / OPTIMIZER_FILE, map_location="cpu", weights_only=True))
    if ema is not None:
        saved = load_file(checkpoint / EMA_FILE)
        for name in ema:
            ema[name].copy_(saved[name])
    return int(json.loads((checkpoint / STATE_FILE).read_text())["step"])
